"""The controller and the worker stages, eager (in-process), on SQLite + local folder.

The shapes world's exact judges and a scripted editor that does only the first operation of an
instruction make every outcome predictable: a single-operation task succeeds at depth 0; a
compound task is half done at depth 0 (Reflection: the rule reflector asks for the missing
operation), and the child, editing the parent's output, completes it (Success at depth 1).
"""

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from loop.controller import RunConfig, run_loop
from loop.gc import referenced_keys
from loop.ingest import ingest_rows
from loop.sources import read_rows
from migrations import upgrade
from store.db import make_engine, make_session_factory
from store.images import ImageLimits
from store.models import Attempt, AttemptStatus, Judgment, Round, Task, TrainJob
from store.objects import LocalStore
from store.taxonomy import Verdict
from tests.fixtures.loop import FirstOperationEditor, shapes_judges, write_shapes_tasks
from workers.app import configure_celery
from workers.context import ModelCache, WorkerContext, set_worker_context
from workers.dispatch import CeleryDispatcher
from workers.settings import WorkerSettings
from workers.stages import edit_attempts, judge_attempts


@pytest.fixture
def loop_env(
    tmp_path: Path,
) -> Iterator[tuple[sessionmaker[Session], LocalStore, FirstOperationEditor]]:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    factory = make_session_factory(make_engine(url))
    store = LocalStore(tmp_path / "objects")
    rows, _ = read_rows(write_shapes_tasks(tmp_path / "tasks", compound=4, single=2))
    report = ingest_rows(
        rows, session_factory=factory, store=store, limits=ImageLimits(), origin="shapes"
    )
    assert report.ingested == 6
    editor = FirstOperationEditor()
    context = WorkerContext(
        session_factory=factory,
        store=store,
        models=ModelCache(load_editor=lambda old, checkpoint: editor, load_judges=shapes_judges),
    )
    configure_celery(WorkerSettings(eager=True))
    set_worker_context(context)
    yield factory, store, editor
    set_worker_context(None)


def test_one_round_follows_reflections_to_success(loop_env) -> None:  # type: ignore[no-untyped-def]
    factory, store, editor = loop_env
    config = RunConfig(name="r", rounds=1, tasks_per_round=6, batch_size=4, poll_interval_s=0.01)
    seen: list[dict[str, float]] = []
    run_loop(
        factory=factory,
        dispatcher=CeleryDispatcher(),
        config=config,
        on_round=lambda n, m: seen.append(m),
    )
    with factory() as session:
        attempts = session.scalars(select(Attempt).order_by(Attempt.id)).all()
        assert all(a.status == AttemptStatus.JUDGED for a in attempts)
        by_depth = {(a.task_id, a.depth): a for a in attempts}
        compound = {t.id for t in session.scalars(select(Task).where(Task.edit_type == "hybrid"))}
        assert len(compound) == 4
        for (task_id, depth), attempt in by_depth.items():
            if task_id in compound:
                assert attempt.verdict == (Verdict.REFLECTION if depth == 0 else Verdict.SUCCESS)
            else:
                assert (depth, attempt.verdict) == (0, Verdict.SUCCESS)
        for attempt in attempts:
            if attempt.depth == 1:  # the child edits its parent's output with the new instruction
                parent = session.get_one(Attempt, attempt.parent_id)
                judgment = session.scalar(select(Judgment).where(Judgment.attempt_id == parent.id))
                assert attempt.input_key == parent.output_key
                assert attempt.instruction == judgment.revised_instruction != parent.instruction
        assert set(store.list()) == referenced_keys(session)
        metrics = session.scalar(select(Round.metrics))
    assert len(attempts) == 10 and seen == [metrics]
    assert metrics["verdict/Success/count"] == 6 and metrics["verdict/Reflection/count"] == 4
    assert metrics["chains/success_after_0"] == pytest.approx(2 / 6)
    assert metrics["chains/success_after_1"] == pytest.approx(4 / 6)
    assert metrics["by_type/hybrid/Reflection/rate"] == pytest.approx(4 / 8)
    assert max(editor.calls) == 4  # attempts went to the editor in batches


def test_resuming_a_finished_run_repeats_nothing(loop_env) -> None:  # type: ignore[no-untyped-def]
    factory, _, editor = loop_env
    config = RunConfig(name="again", rounds=1, tasks_per_round=6, poll_interval_s=0.01)
    run_loop(factory=factory, dispatcher=CeleryDispatcher(), config=config)
    calls = len(editor.calls)
    run_loop(factory=factory, dispatcher=CeleryDispatcher(), config=config)
    assert len(editor.calls) == calls
    with factory() as session:
        assert len(session.scalars(select(Attempt)).all()) == 10


class LossyDispatcher(CeleryDispatcher):
    """Drops the first `drop` sends, as a broker that lost messages would."""

    def __init__(self, drop: int) -> None:
        self.drop = drop

    def send_edit(self, attempt_ids: Sequence[int]) -> None:
        if self.drop > 0:
            self.drop -= 1
            return
        super().send_edit(attempt_ids)


def test_lost_messages_are_redispatched_after_the_deadline(loop_env) -> None:  # type: ignore[no-untyped-def]
    factory, store, _ = loop_env
    config = RunConfig(
        name="lossy",
        rounds=1,
        tasks_per_round=6,
        batch_size=2,
        dispatch_timeout_s=0.3,
        poll_interval_s=0.05,
    )
    run_loop(factory=factory, dispatcher=LossyDispatcher(drop=2), config=config)
    with factory() as session:
        attempts = session.scalars(select(Attempt)).all()
        assert len(attempts) == 10 and all(a.status == AttemptStatus.JUDGED for a in attempts)
        assert sorted(a.dispatch_count for a in attempts).count(2) == 4  # two lost batches of 2
        assert len(session.scalars(select(Judgment)).all()) == 10  # judged exactly once each
        assert set(store.list()) == referenced_keys(session)


def test_attempts_end_failed_after_the_dispatch_cap(loop_env) -> None:  # type: ignore[no-untyped-def]
    factory, _, _ = loop_env
    config = RunConfig(
        name="black-hole",
        rounds=1,
        tasks_per_round=2,
        dispatch_timeout_s=0.1,
        max_dispatches=2,
        poll_interval_s=0.02,
    )
    run_loop(factory=factory, dispatcher=LossyDispatcher(drop=10**6), config=config)
    with factory() as session:
        attempts = session.scalars(select(Attempt)).all()
    assert [a.status for a in attempts] == [AttemptStatus.FAILED] * 2
    assert all("no result after 2 dispatches" in (a.error or "") for a in attempts)


def test_stages_are_idempotent(loop_env) -> None:  # type: ignore[no-untyped-def]
    """A redelivered edit or judge batch (same ids again) changes nothing."""
    factory, store, editor = loop_env
    config = RunConfig(name="idem", rounds=1, tasks_per_round=6, poll_interval_s=0.01)
    run_loop(factory=factory, dispatcher=CeleryDispatcher(), config=config)
    with factory() as session:
        ids = list(session.scalars(select(Attempt.id)))
        before = [(a.status, a.output_key, a.verdict) for a in session.scalars(select(Attempt))]
    context_calls = len(editor.calls)
    from workers.context import get_worker_context

    assert edit_attempts(get_worker_context(), ids) == []
    assert judge_attempts(get_worker_context(), ids) == []
    assert len(editor.calls) == context_calls
    with factory() as session:
        after = [(a.status, a.output_key, a.verdict) for a in session.scalars(select(Attempt))]
        assert len(session.scalars(select(Judgment)).all()) == 10
    assert before == after
    assert len(list(store.list("edits/"))) == len({key for _, key, _ in after if key})


def test_training_is_queued_when_the_pool_grew_enough(loop_env) -> None:  # type: ignore[no-untyped-def]
    factory, _, _ = loop_env
    config = RunConfig(
        name="train", rounds=2, tasks_per_round=6, train_min_new_samples=6, poll_interval_s=0.01
    )
    run_loop(factory=factory, dispatcher=CeleryDispatcher(), config=config)
    with factory() as session:
        jobs = session.scalars(select(TrainJob).order_by(TrainJob.id)).all()
    # Each round accepts 6 samples: a job after round 0 (pool 6) and after round 1 (pool 12).
    assert [job.data_filter["pool_size"] for job in jobs] == [6, 12]
