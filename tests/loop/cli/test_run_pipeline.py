"""`editloop run --pipeline-depth`: the option reaches the stored run config, a bad value is a
usage error, and `editloop workers` answers on an empty table (in-process, eager)."""

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from loop.cli.app import app
from loop.settings import get_settings
from policies.pixel_config import PixelEditorConfig
from policies.pixel_editor import PixelEditorModel
from tests.fixtures.loop import write_shapes_tasks
from workers.context import set_worker_context


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    torch.manual_seed(0)
    editor = tmp_path / "pixel-editor"
    PixelEditorModel(PixelEditorConfig(block_out_channels=(8, 16, 16), embedding_dim=16,
                                       sampling_steps=2)).save_pretrained(editor)  # fmt: skip
    for name in [n for n in os.environ if n.startswith("EDITLOOP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("EDITLOOP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EDITLOOP_EDITOR__MODEL", str(editor))
    monkeypatch.setenv("EDITLOOP_JUDGE__BACKEND", "shapes")
    get_settings.cache_clear()
    yield CliRunner()
    get_settings.cache_clear()
    set_worker_context(None)


def test_a_pipelined_run_stores_its_depth_and_finishes(cli: CliRunner, tmp_path: Path) -> None:
    tasks = write_shapes_tasks(tmp_path / "tasks", compound=1, single=1)
    assert cli.invoke(app, ["ingest", str(tasks)]).exit_code == 0
    ran = cli.invoke(app, ["run", "--new", "--name", "piped", "--rounds", "2", "--tasks", "2",
                           "--pipeline-depth", "1"])  # fmt: skip
    assert ran.exit_code == 0, ran.output
    with sqlite3.connect(tmp_path / "data" / "editloop.db") as db:
        (depth,) = db.execute("SELECT json_extract(config, '$.pipeline_depth') FROM run").fetchone()
        staleness = {s for (s,) in db.execute("SELECT staleness FROM attempt")}
    assert depth == 1 and staleness == {0}  # no job was queued: nothing to be stale about
    refused = cli.invoke(app, ["run", "--new", "--name", "x", "--pipeline-depth", "-1"])
    assert refused.exit_code == 2
    listed = cli.invoke(app, ["workers"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0 and "workers (0 live of 0)" in listed.output
