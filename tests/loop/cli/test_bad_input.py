"""Bad input through the real `editloop` entry point: every case ends with the exit code of the
error contract (2: usage or configuration, 1: failure), a one-line `error:` on stderr that names
the problem, no traceback, and the database and the store exactly as they were."""

import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.fixtures.services import MotoProcess

EDITLOOP = str(Path(sys.executable).parent / "editloop")
SAMPLES = Path(__file__).resolve().parents[3] / "loop" / "samples"
TABLES = ("task", "task_source", "run", "round", "attempt", "judgment", "checkpoint", "train_job")


@dataclass(frozen=True)
class Case:
    """One bad input: arguments, extra environment, the exit code and what stderr must say."""

    name: str
    args: list[str]
    code: int
    says: str
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Workspace:
    """A working folder with an embedded deployment holding the sample tasks."""

    root: Path
    files: Path
    env: dict[str, str]

    def snapshot(self) -> tuple[dict[str, int], list[str]]:
        """Rows per table and every stored object: what no bad input may change."""
        with sqlite3.connect(self.root / ".editloop" / "editloop.db") as db:
            rows = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
        objects = self.root / ".editloop" / "objects"
        return rows, sorted(str(p.relative_to(objects)) for p in objects.rglob("*") if p.is_file())


def editloop(
    workspace: Workspace, args: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [EDITLOOP, *args],
        cwd=workspace.root,
        env=workspace.env | env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("bad-input")
    files = root / "files"
    files.mkdir()
    (files / "config-typo.toml").write_text('[store]\ndatabse_url = "sqlite:///x.db"\n')
    (files / "broken.toml").write_text("[store\n")
    (files / "broken.yaml").write_text("store: [1, 2\n")
    (files / "settings.ini").write_text("")
    (files / "garbage.png").write_bytes(b"not an image")
    (files / "folder.png").mkdir()
    Image.new("RGB", (16, 16), "red").save(files / "red.png")
    (files / "all-bad.jsonl").write_text('{"image": "missing.png", "instruction": "x"}\n')
    (files / "empty-folder").mkdir()
    pq.write_table(pa.table({"img": [b"x"], "prompt": ["x"]}), files / "renamed.parquet")
    (files / "train.json").write_text('{"model": "m", "manifest": "x", "output_dir": "o"}')
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDITLOOP_")}
    workspace = Workspace(root, files, env | {"EDITLOOP_STORE__RETRIES": "1"})
    done = editloop(workspace, ["ingest", str(SAMPLES), "--dataset", "samples"], {})
    assert done.returncode == 0, done.stderr
    return workspace


def cases(files: Path, tiny_model: str) -> list[Case]:
    """The bad inputs (more than 30 kinds), each with what the error must name."""
    red, garbage = str(files / "red.png"), str(files / "garbage.png")
    out = str(files / "out.png")
    dead_pg = "postgresql+psycopg://postgres@127.0.0.1:1/x"
    return [
        # settings and config files
        Case("unknown-variable", ["status"], 2, "did you mean EDITLOOP_STORE__DATABASE_URL",
             {"EDITLOOP_STORE__DATABSE_URL": "sqlite:///x.db"}),
        Case("config-typo", ["--config", str(files / "config-typo.toml"), "status"], 2,
             "unknown setting store.databse_url"),
        Case("broken-toml", ["--config", str(files / "broken.toml"), "status"], 2,
             "broken.toml: the file cannot be parsed"),
        Case("broken-yaml", ["--config", str(files / "broken.yaml"), "status"], 2,
             "broken.yaml: the file cannot be parsed"),
        Case("missing-config", ["--config", str(files / "nope.toml"), "status"], 2,
             "nope.toml: no such file"),
        Case("config-suffix", ["--config", str(files / "settings.ini"), "status"], 2,
             "use a .toml or .yaml file"),
        Case("wrong-type", ["status"], 2, "setting store.retries",
             {"EDITLOOP_STORE__RETRIES": "many"}),
        Case("not-a-url", ["status"], 2, "is not a database URL",
             {"EDITLOOP_STORE__DATABASE_URL": "notaurl"}),
        Case("driverless-postgres", ["status"], 2, "use postgresql+psycopg://",
             {"EDITLOOP_STORE__DATABASE_URL": "postgresql://postgres@127.0.0.1/x"}),
        Case("s3-scheme", ["status"], 2, "without a scheme",
             {"EDITLOOP_STORE__S3_ENDPOINT": "http://minio:9000"}),
        Case("broker-url", ["status"], 2, "a broker URL starts with",
             {"EDITLOOP_WORKER__BROKER_URL": "localhost:6379"}),
        Case("data-dir", ["status"], 1, "/proc/editloop", {"EDITLOOP_DATA_DIR": "/proc/editloop"}),
        # the database
        Case("database-down", ["status"], 1, "database did not answer",
             {"EDITLOOP_STORE__DATABASE_URL": dead_pg, "EDITLOOP_STORE__BACKOFF_S": "0.05"}),
        Case("upgrade-down", ["db", "upgrade"], 1, "database did not answer",
             {"EDITLOOP_STORE__DATABASE_URL": dead_pg, "EDITLOOP_STORE__BACKOFF_S": "0.05"}),
        Case("unknown-revision", ["db", "upgrade", "zzz"], 2, "Can't locate revision"),
        # ingest
        Case("ingest-missing", ["ingest", str(files / "nope.jsonl")], 1, "no such file"),
        Case("ingest-all-rejected", ["ingest", str(files / "all-bad.jsonl")], 1,
             "every row was rejected"),
        Case("ingest-columns", ["ingest", str(files / "renamed.parquet")], 1, "--image-column"),
        Case("ingest-licence", ["ingest", str(SAMPLES), "--licence", "CC BY"], 2,
             "not an SPDX licence id"),
        Case("ingest-layout", ["ingest", str(SAMPLES), "--layout", "csv"], 2, "--layout"),
        Case("ingest-empty-folder", ["ingest", str(files / "empty-folder")], 1,
             "without instructions.jsonl"),
        # running
        Case("resume-unknown", ["run", "--name", "no-such-run"], 2, "--new"),
        Case("run-tasks-zero", ["run", "--tasks", "0"], 2, "--tasks"),
        Case("broker-down", ["run", "--new", "--name", "brokerless"], 1,
             "EDITLOOP_WORKER__BROKER_URL",
             {"EDITLOOP_WORKER__EAGER": "false", "EDITLOOP_WORKER__BROKER_URL":
              "redis://127.0.0.1:1/0", "EDITLOOP_STORE__BACKOFF_S": "0.05"}),
        Case("gc-grace", ["gc", "--grace-minutes", "-1"], 2, "--grace-minutes"),
        Case("bench-arm", ["bench", "self-improve", "--arms", "nope"], 2, "arms=['nope']"),
        Case("train-config", ["train", str(files / "train.json"), "--set", "zero_stage=1"], 1,
             "zero_stage=1 is not valid"),
        Case("train-override", ["train", str(files / "train.json"), "--set", "nonsense"], 1,
             "write it as key=value"),
        # one-off edits and judgments
        Case("edit-missing-image", ["edit", str(files / "nope.png"), "x", "-o", out], 2,
             "No such file"),
        Case("edit-undecodable", ["edit", garbage, "x", "-o", out], 2, "undecodable"),
        Case("edit-empty-instruction", ["edit", red, " ", "-o", out], 2, "instruction is empty"),
        Case("edit-not-png", ["edit", red, "x", "-o", str(files / "out.jpg")], 2, "*.png"),
        Case("edit-output-folder", ["edit", red, "x", "-o", str(files / "folder.png")], 2,
             "is a folder"),
        Case("edit-no-model", ["edit", red, "x", "-o", out], 2, "no model"),
        Case("edit-no-gpu", ["edit", red, "x", "--model", tiny_model, "--device", "cuda:0",
                             "-o", out], 1, "no CUDA GPU"),
        Case("judge-type", ["judge", red, red, "x", "--type", "teleport"], 1, "teleport"),
        Case("judge-missing", ["judge", str(files / "nope.png"), red, "x"], 1, "nope.png"),
        Case("judge-undecodable", ["judge", red, garbage, "x"], 1, "undecodable"),
        Case("unknown-command", ["frobnicate"], 2, "No such command"),
    ]  # fmt: skip


def test_every_bad_input_ends_in_one_clear_line_and_changes_nothing(
    workspace: Workspace, tiny_instruct_pix2pix: Path
) -> None:
    table = cases(workspace.files, str(tiny_instruct_pix2pix))
    assert len(table) >= 30
    before = workspace.snapshot()
    failures = []
    for case in table:
        result = editloop(workspace, case.args, case.env)
        problems = []
        if result.returncode != case.code:
            problems.append(f"exit {result.returncode}, expected {case.code}")
        if case.says not in result.stderr:
            problems.append(f"stderr does not say {case.says!r}")
        if "Traceback" in result.stdout + result.stderr:
            problems.append("printed a traceback")
        if result.returncode == 1 and not result.stderr.rstrip().splitlines()[-1:][0].startswith(
            "error: "
        ):
            problems.append("its last line is not `error: ...`")
        if workspace.snapshot() != before:
            problems.append("changed the database or the store")
        if problems:
            failures.append(f"{case.name}: {'; '.join(problems)}\n{result.stderr[-600:]}")
    assert not failures, "\n\n".join(failures)


def test_a_run_with_no_tasks_leaves_no_run_behind(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDITLOOP_")}
    result = subprocess.run(
        [EDITLOOP, "run", "--rounds", "1"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 1 and "no tasks to edit" in result.stderr
    with sqlite3.connect(tmp_path / ".editloop" / "editloop.db") as db:
        assert db.execute("SELECT count(*) FROM run").fetchone()[0] == 0


@pytest.mark.services
def test_wrong_s3_credentials_are_named_on_the_first_try(
    workspace: Workspace, tmp_path: Path
) -> None:
    server = MotoProcess(env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"})  # moto checks credentials
    server.start()
    try:
        result = editloop(
            workspace,
            ["ingest", str(SAMPLES), "--dataset", "other"],
            {
                "EDITLOOP_DATA_DIR": str(tmp_path / "fresh"),  # new tasks: their images are put
                "EDITLOOP_STORE__BACKEND": "s3",
                "EDITLOOP_STORE__S3_ENDPOINT": server.endpoint,
                "EDITLOOP_STORE__S3_ACCESS_KEY": "wrong",
                "EDITLOOP_STORE__RETRIES": "5",
                "EDITLOOP_STORE__BACKOFF_S": "2",
            },
        )
    finally:
        server.stop()
    assert result.returncode == 1
    assert (
        "InvalidAccessKeyId" in result.stderr and "EDITLOOP_STORE__S3_ACCESS_KEY" in result.stderr
    )
    assert "retry" not in result.stderr  # refused at once: a permanent answer is not retried


def test_debug_shows_the_traceback(workspace: Workspace) -> None:
    broken = {"EDITLOOP_STORE__DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/x",
              "EDITLOOP_STORE__BACKOFF_S": "0.05"}  # fmt: skip
    plain = editloop(workspace, ["status"], broken)
    debug = editloop(workspace, ["--debug", "status"], broken)
    assert plain.returncode == debug.returncode == 1
    assert "Traceback" not in plain.stderr and "Traceback" in debug.stderr
    assert plain.stderr.splitlines()[-1] == debug.stderr.splitlines()[-1]
