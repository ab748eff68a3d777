"""docker-compose.yml's own service commands, run as local processes: migrate → admin → worker →
controller → trainer against this machine's PostgreSQL and Redis and a moto S3, with the shapes
world's pixel editor and exact judges. One round and one training job complete; the admin's API
shows the round's metrics and /metrics the attempts; every process started is stopped."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from loop.benchmark.inputs import write_task_folder
from loop.controller import queue_train_job
from policies.pixel_config import PixelEditorConfig
from policies.pixel_editor import PixelEditorModel
from store.db import make_engine, make_session_factory
from store.models import Run
from tests.fixtures.services import free_port, make_s3_store
from tests.test_deployment import compose_config, env_file
from worlds.shapes.tasks import generate_compound_tasks, generate_single_op_tasks

pytestmark = [pytest.mark.services, pytest.mark.slow]
EDITLOOP = str(Path(sys.executable).parent / "editloop")
RECIPE = {"max_steps": 2, "micro_batch_size": 4, "resolution": 16, "num_workers": 0,
          "save_every": 0, "progress_bar": False}  # fmt: skip


def local_environment(service: dict[str, Any], local: dict[str, str]) -> dict[str, str]:
    """A service's environment with the deployment's hosts replaced by this machine's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDITLOOP_")}
    for key, value in service["environment"].items():
        env[key] = local.get(key, str(value))
    return env


def local_command(command: list[str], replacements: dict[str, str]) -> list[str]:
    return [EDITLOOP, *(replacements.get(part, part) for part in command)]


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def wait_for(condition, what: str, timeout: float = 300) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_compose_services_run_a_round_and_a_training_job(
    tmp_path: Path, postgres_url: str, moto_endpoint: str
) -> None:
    torch.manual_seed(0)
    editor = tmp_path / "models" / "editor"
    PixelEditorModel(
        PixelEditorConfig(block_out_channels=(16, 32, 32), embedding_dim=32)
    ).save_pretrained(editor)
    tasks = write_task_folder(
        tmp_path / "models" / "tasks",
        generate_compound_tasks(3, seed=1) + generate_single_op_tasks(3, seed=2),
    )
    heldout = write_task_folder(tmp_path / "heldout", generate_single_op_tasks(2, seed=3))
    store = make_s3_store(moto_endpoint)
    assert list(store.list()) == []  # the first call creates the bucket, as minio-init would
    env = env_file(
        tmp_path,
        EDITOR_MODEL=str(editor),
        JUDGE_MODEL=str(tmp_path / "unused-judge"),  # the shapes world judges exactly
        S3_ENDPOINT=moto_endpoint,
        S3_BUCKET=store.bucket,
        BROKER_URL=f"redis://127.0.0.1:6379/{11}",
        RUN_ROUNDS="1",
        RUN_TASKS="6",
        RUN_TRAIN_EVERY="1",
        INGEST_DATASET="shapes",
    )
    done = compose_config(env, profiles=("ingest",))
    assert done.returncode == 0 and not done.stderr, done.stderr
    services = json.loads(done.stdout)["services"]
    admin_port = free_port()
    local = {
        "EDITLOOP_STORE__DATABASE_URL": postgres_url,
        "EDITLOOP_STORE__S3_ACCESS_KEY": "testing",  # moto's
        "EDITLOOP_STORE__S3_SECRET_KEY": "testing",
    }
    extra = {
        "EDITLOOP_DATA_DIR": str(tmp_path / "data"),
        "EDITLOOP_JUDGE__BACKEND": "shapes",
        "EDITLOOP_JUDGE__MODEL": "",
        "EDITLOOP_TRAINING__LAUNCHER": "none",  # one CPU process instead of deepspeed on GPUs
        "EDITLOOP_TRAINING__UNFILTERED": "true",
        "EDITLOOP_TRAINING__RECIPE": json.dumps(RECIPE),
        "EDITLOOP_TRAINING__EVAL_TASKS": "2",
        "EDITLOOP_TRAINING__EVAL_MARGIN": "4.0",
        "EDITLOOP_TRAINING__POLL_S": "1",
        "OMP_NUM_THREADS": "1",
    }
    replacements = {
        "cuda:0": "cpu",
        "8080": str(admin_port),
        "/models/tasks": str(tasks),
    }

    def environment(name: str) -> dict[str, str]:
        return local_environment(services[name], local) | extra

    def run(name: str) -> None:
        command = local_command(services[name]["command"], replacements)
        done = subprocess.run(
            command, env=environment(name), capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"{name}: {command}\n{done.stderr[-2000:]}"

    started: list[subprocess.Popen[bytes]] = []

    def start(name: str) -> subprocess.Popen[bytes]:
        command = local_command(services[name]["command"], replacements)
        log = (tmp_path / f"{name}.log").open("wb")
        process = subprocess.Popen(
            command, env=environment(name), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        started.append(process)
        return process

    try:
        run("migrate")
        run("ingest")
        heldout_ingest = subprocess.run(
            [EDITLOOP, "ingest", str(heldout), "--dataset", "heldout"],
            env=environment("ingest"), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert heldout_ingest.returncode == 0, heldout_ingest.stderr
        admin = start("admin")
        base = f"http://127.0.0.1:{admin_port}"
        wait_for(lambda: _answers(f"{base}/readyz") or admin.poll() is not None, "the admin")
        assert admin.poll() is None, (tmp_path / "admin.log").read_text()[-2000:]
        start("worker-gpu0")
        start("trainer")
        controller = start("controller")
        assert controller.wait(timeout=300) == 0, (tmp_path / "controller.log").read_text()[-3000:]
        # An untrained editor is never right, so `--train-every` never fires: queue the job by
        # hand, as an operator would, on every sample (`training.unfiltered`).
        factory = make_session_factory(make_engine(postgres_url))
        with factory() as session:
            run_id = session.scalar(select(Run.id))
        queue_train_job(factory, run_id, up_to_round=0)

        def trained() -> bool:
            jobs = json.loads(get(f"{base}/api/v1/train-jobs"))["items"]
            return bool(jobs) and all(job["status"] == "finished" for job in jobs)

        wait_for(trained, "the training job", timeout=240)
        runs = json.loads(get(f"{base}/api/v1/runs"))["items"]
        assert [r["name"] for r in runs] == ["main"]  # RUN_NAME of .env.example
        detail = json.loads(get(f"{base}/api/v1/runs/{runs[0]['id']}"))
        (round_,) = detail["rounds"]
        assert round_["status"] == "finished" and round_["metrics"]["attempts/total"] >= 6
        families = {
            f.name: f for f in text_string_to_metric_families(get(f"{base}/metrics").decode())
        }
        judged = [
            s.value for s in families["editloop_attempts"].samples if s.labels["status"] == "judged"
        ]
        assert judged == [round_["metrics"]["attempts/total"]]
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    assert all(process.poll() is not None for process in started)


def _answers(url: str) -> bool:
    try:
        get(url)
    except OSError:
        return False
    return True
