"""The Celery configuration and the per-process model cache."""

from pathlib import Path

import pytest

from store.models import Checkpoint
from workers.app import configure_celery
from workers.context import ModelCache
from workers.settings import WorkerSettings


def test_celery_is_configured_for_at_least_once_delivery() -> None:
    app = configure_celery(WorkerSettings(eager=False, broker_url="redis://127.0.0.1:6379/3"))
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_serializer == "json" and list(conf.accept_content) == ["json"]
    assert conf.result_backend is None and conf.task_ignore_result
    assert conf.broker_transport_options["unacked_restore_interval"] == 1
    assert {q.name for q in conf.task_queues} == {"edit", "judge"}
    assert conf.task_routes["editloop.judge_batch"]["queue"] == "judge"
    assert "editloop.edit_batch" in app.tasks and not conf.task_always_eager


def test_each_configuration_gets_its_own_app() -> None:
    # An app caches its broker pool: a second broker URL must not reuse the first app.
    first = configure_celery(WorkerSettings(eager=True))
    second = configure_celery(WorkerSettings(eager=False, broker_url="amqp://g:g@127.0.0.1//"))
    assert first is not second and second.conf.broker_transport_options == {}


def test_filesystem_broker_needs_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="broker_folder"):
        configure_celery(WorkerSettings(eager=False, broker_url="filesystem://"))
    app = configure_celery(
        WorkerSettings(eager=False, broker_url="filesystem://", broker_folder=str(tmp_path))
    )
    assert app.conf.broker_transport_options["data_folder_in"] == str(tmp_path)


def test_model_cache_loads_lazily_and_swaps_in_place() -> None:
    calls: list[tuple[object, int | None]] = []

    def load_editor(old: object, checkpoint: Checkpoint | None) -> object:
        calls.append((old, checkpoint.id if checkpoint else None))
        return old or object()

    judge_loads: list[int] = []
    cache = ModelCache(
        load_editor=load_editor, load_judges=lambda: judge_loads.append(1) or ("s", None)
    )  # type: ignore[arg-type, return-value]
    assert calls == [] and judge_loads == []
    base = cache.editor(None)
    assert cache.editor(None) is base and len(calls) == 1  # cached
    v1 = Checkpoint(id=7, version="v1")
    assert cache.editor(v1) is base  # the loader switched the same editor in place
    assert calls[-1] == (base, 7)
    cache.editor(v1)
    assert len(calls) == 2
    cache.editor(None)
    assert calls[-1] == (base, None)
    cache.judges()
    cache.judges()
    assert judge_loads == [1]


def test_the_cache_swaps_judge_and_reflector_checkpoints() -> None:
    loads: list[tuple[int | None, int | None]] = []

    def load_at(judge: Checkpoint | None, reflector: Checkpoint | None) -> tuple[str, str]:
        loads.append((judge.id if judge else None, reflector.id if reflector else None))
        return f"scorer{len(loads)}", f"reflector{len(loads)}"

    cache = ModelCache(
        load_editor=lambda old, checkpoint: old,
        load_judges=lambda: loads.append((None, None)) or ("base", "base"),
        load_judges_at=load_at,
    )  # type: ignore[arg-type]
    judge, reflector = Checkpoint(id=3, version="j"), Checkpoint(id=4, version="r")
    assert cache.judges() == ("base", "base")
    assert cache.judges(judge) == ("scorer2", "reflector2") == cache.judges(judge)  # cached
    assert cache.judges(judge, reflector) == ("scorer3", "reflector3")
    assert cache.judges() == ("base", "base")  # back to the configured models
    assert loads == [(None, None), (3, None), (3, 4), (None, None)]
    # Judges without checkpoints (no `load_judges_at`) ignore them: loaded once.
    fixed = ModelCache(load_editor=lambda old, c: old, load_judges=lambda: ("s", None))  # type: ignore[arg-type]
    assert fixed.judges(judge, reflector) is fixed.judges()
