"""`editloop export` on the command line: options, bad input, a missing image, a kill midway."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result
from sqlalchemy import select
from typer.testing import CliRunner

from loop.cli.app import app
from loop.settings import get_settings
from store.models import Attempt, Export
from tests.loop.export.conftest import ExportEnv, judged_attempts, manifest_verifies

EDITLOOP = str(Path(sys.executable).parent / "editloop")


@pytest.fixture
def cli_env(env: ExportEnv) -> Iterator[dict[str, str]]:
    """The environment that points `editloop` at the seeded database and store."""
    variables = {
        "EDITLOOP_STORE__DATABASE_URL": env.url,
        "EDITLOOP_STORE__LOCAL_ROOT": str(env.store_root),
        "EDITLOOP_DATA_DIR": str(Path(env.url.removeprefix("sqlite:///")).parent / "data"),
    }
    get_settings.cache_clear()
    yield variables
    get_settings.cache_clear()


def run(cli_env: dict[str, str], *args: str) -> Result:
    get_settings.cache_clear()
    return CliRunner(env=cli_env).invoke(app, ["export", *args])


def exports(env: ExportEnv) -> list[Export]:
    with env.factory() as session:
        return list(session.scalars(select(Export).order_by(Export.id)))


def test_filters_and_options(env: ExportEnv, cli_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run(cli_env, str(out), "--format", "jsonl", "--run", "alpha", "--verdict",
                 "reflection", "--verdict", "Success", "--edit-type", "adjust", "--edit-type",
                 "remove", "--val-fraction", "0", "--checkpoint", "base")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert (
        rows and {r["run"] for r in rows} == {"alpha"} and {r["checkpoint"] for r in rows} == {None}
    )
    assert {r["edit_type"] for r in rows} <= {"alter", "remove"}
    assert {r["verdict"] for r in rows} == {"Reflection", "Success"}
    manifest = manifest_verifies(out)
    assert manifest["filter"]["runs"] == ["alpha"] and manifest["filter"]["edit_types"] == [
        "alter", "remove"
    ]  # fmt: skip
    assert "exported" in result.stdout and str(out) in result.stdout
    # The held-out set is in only when named.
    attempts = judged_attempts(env.factory)
    (heldout,) = [a["attempt_id"] for a in attempts if a["origin"] == "heldout"]
    named = tmp_path / "named"
    result = run(cli_env, str(named), "--format", "jsonl", "--origin", "heldout",
                 "--val-fraction", "0")  # fmt: skip
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in (named / "train.jsonl").read_text().splitlines()]
    assert row["attempt_id"] == heldout
    result = run(cli_env, str(named), "--format", "jsonl", "--checkpoint", "ckpt-a",
                 "--licence", "unknown", "--val-fraction", "0")  # fmt: skip
    rows = [json.loads(line) for line in (named / "train.jsonl").read_text().splitlines()]
    assert rows and all(r["checkpoint"] == "ckpt-a" and "" in r["source_licences"] for r in rows)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--origin", "nowhere"], 1, "the filter selects no edits"),
        (["--run", "gamma"], 1, "no run named 'gamma'; recent ones: beta, alpha"),
        (["--checkpoint", "ckpt-z"], 1, "no checkpoint named 'ckpt-z'"),
        (["--verdict", "great"], 2, "--verdict 'great': expected one of Success, Reflection"),
        (["--edit-type", "recolor"], 2, "unknown edit type 'recolor'"),
        (["--kind", "reflections", "--hindsight"], 2, "use it with --kind edits"),
        (["--min-overall", "6"], 2, "less than or equal to 5"),
    ],
)
def test_bad_input_is_refused_with_one_line_and_writes_nothing(
    env: ExportEnv, cli_env: dict[str, str], tmp_path: Path, args: list[str], code: int,
    message: str,
) -> None:  # fmt: skip
    out = tmp_path / "out"
    result = run(cli_env, str(out), *args)
    assert result.exit_code == code, result.output
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.output
    assert not out.exists() and exports(env) == []


def test_an_out_that_is_not_an_earlier_export_needs_overwrite(
    env: ExportEnv, cli_env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.pdf").write_bytes(b"%PDF")
    refused = run(cli_env, str(out))
    assert refused.exit_code == 1
    assert refused.stderr.startswith("error: ") and "--overwrite" in refused.stderr
    assert (out / "thesis.pdf").exists() and exports(env) == []
    assert run(cli_env, str(out), "--overwrite").exit_code == 0
    assert not (out / "thesis.pdf").exists() and manifest_verifies(out)["kind"] == "edits"
    # Never a folder that holds the database, the object store or the working folder.
    holder = tmp_path  # holds db.sqlite and objects/
    refused = run(cli_env, str(holder), "--overwrite")
    assert refused.exit_code == 1 and "which an export would delete" in refused.stderr
    assert (holder / "db.sqlite").exists() and (holder / "objects").is_dir()


def test_a_missing_image_is_reported_skipped_and_counted(
    env: ExportEnv, cli_env: dict[str, str], tmp_path: Path
) -> None:
    with env.factory() as session:
        lost = session.get_one(Attempt, env.seeded.hindsight_of[0])
    env.store.delete(lost.output_key)  # type: ignore[arg-type]
    out = tmp_path / "out"
    result = run(cli_env, str(out), "--hindsight", "--workers", "3")
    assert result.exit_code == 0, result.output
    # Its direct and its hindsight triple both need the lost image.
    for prefix in ("e", "h"):
        assert f"skipped {prefix}{lost.id:010d} (attempt {lost.id}): edited_image " in result.stderr
    manifest = manifest_verifies(out)
    assert manifest["skipped"] == 2 and manifest["rows"] == 16
    card = (out / "README.md").read_text()
    assert "2 selected rows were left out" in card and f"attempt {lost.id}: edited_image" in card
    (export,) = exports(env)
    assert (export.status, export.counts["skipped"], export.row_count) == ("finished", 2, 16)


def test_sigkill_midway_leaves_nothing_that_looks_finished_and_a_rerun_completes(
    env: ExportEnv, cli_env: dict[str, str], tmp_path: Path
) -> None:
    # The last selected edit's image becomes a FIFO: reading it blocks, so the export is
    # certainly midway (earlier shards written) when it is killed.
    last = max(a["attempt_id"] for a in judged_attempts(env.factory) if a["verdict"] == "Success")
    with env.factory() as session:
        key = session.get_one(Attempt, last).output_key
    assert env.store_root is not None and key is not None
    path = env.store_root / key
    image = path.read_bytes()
    path.unlink()
    os.mkfifo(path)
    out = tmp_path / "out"
    command = [EDITLOOP, "export", str(out), "--shard-mb", "0.004", "--workers", "1",
               "--val-fraction", "0"]  # fmt: skip
    environment = {k: v for k, v in os.environ.items() if not k.startswith("EDITLOOP_")}
    process = subprocess.Popen(
        command, env=environment | cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        staged: list[Path] = []
        while time.monotonic() < deadline and len(staged) < 2:
            staged = [p for p in out.glob(".editloop-staging-*/data/*") if p.is_file()]
            assert process.poll() is None, process.communicate()
            time.sleep(0.05)
        assert len(staged) >= 2, "the export never got midway"
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
    assert not (out / "manifest.json").exists()
    (killed,) = exports(env)
    assert killed.status == "staging"  # never finished
    path.unlink()
    path.write_bytes(image)
    rerun = subprocess.run(command, env=environment | cli_env, capture_output=True, text=True,
                           timeout=300)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    manifest = manifest_verifies(out)
    assert manifest["rows"] == 13 and not list(out.glob(".editloop-staging-*"))
    assert [(e.id, e.status) for e in exports(env)] == [
        (killed.id, "failed"),
        (killed.id + 1, "finished"),
    ]
