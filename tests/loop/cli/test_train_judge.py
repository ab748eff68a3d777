"""`editloop train-judge`: a reflector fine-tuned on the seeded pool and published with its role;
a bad role or an empty pool ends in one line through the error contract."""

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from loop.cli.app import app
from loop.settings import get_settings
from migrations import upgrade
from store.db import make_engine, make_session_factory
from store.models import Checkpoint, CheckpointStatus
from store.objects import LocalStore
from tests.loop.export.seed import seed_export_data


@pytest.fixture()
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    data = tmp_path / "data"
    monkeypatch.setenv("EDITLOOP_DATA_DIR", str(data))
    monkeypatch.setenv("EDITLOOP_STORE__DATABASE_URL", f"sqlite:///{tmp_path / 'db.sqlite'}")
    # Small pixel bounds keep the tiny model's steps fast.
    monkeypatch.setenv("EDITLOOP_JUDGE__MIN_PIXELS", "784")
    monkeypatch.setenv("EDITLOOP_JUDGE__MAX_PIXELS", "3136")
    upgrade(f"sqlite:///{tmp_path / 'db.sqlite'}")
    get_settings.cache_clear()
    yield data
    get_settings.cache_clear()


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["train-judge", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result.exit_code, result.output


def test_trains_and_publishes_a_reflector_checkpoint(data_dir: Path, tiny_judge_dir: Path) -> None:
    factory = make_session_factory(make_engine(get_settings().store.database_url))
    seed_export_data(factory, LocalStore(data_dir / "objects"))
    code, out = run("--role", "reflector", "--lora", "--lora-rank", "4", "--steps", "2",
                    "--lr", "0.01", "--model", str(tiny_judge_dir))  # fmt: skip
    assert code == 0, out
    assert "reflector checkpoint reflector-" in out and "train_loss" in out
    with factory() as session:
        row = session.scalars(select(Checkpoint).where(Checkpoint.role == "reflector")).one()
    assert row.status == CheckpointStatus.READY and row.kind == "full"
    assert row.data_filter["method"] == "lora" and row.data_filter["confirmed_only"] is True
    trained = re.search(r"\(id (\d+), ready\): (\d+) training", out)
    assert trained is not None and (row.id, row.sample_count) == tuple(map(int, trained.groups()))
    assert LocalStore(data_dir / "objects").list(f"{row.object_prefix}/")


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--role", "editor"], 2, "error: --role 'editor': expected judge or reflector"),
        (["--role", "critic"], 2, "error: --role 'critic': expected judge or reflector"),
        (["--role", "judge"], 1, "error: no confirmed judge examples in the pool"),
    ],
)
def test_bad_input_is_one_line(data_dir: Path, args: list[str], code: int, says: str) -> None:
    exit_code, out = run(*args)
    # (Libraries may log before it, e.g. building the tiny model: the error is the last line.)
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert (exit_code, len(errors)) == (code, 1), out
    assert out.splitlines()[-1] == errors[0] and errors[0].startswith(says)
    assert "Traceback" not in out
