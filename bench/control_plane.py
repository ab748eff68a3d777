"""Control-plane cost of the loop: attempts/s and overhead per attempt with a no-op editor/judge.

Side by side in one run: eager in-process on SQLite + local folder, and Celery over Redis with
PostgreSQL + S3 (moto) and a real Celery worker (solo pool, in a thread of this process). The
editor returns its input and the judge answers at once, so everything measured is editloop's
own work: database rows, object writes, messages, polling. A GPU edit takes ~1 s; the target is
an overhead per attempt at least 20x smaller (< 50 ms).

    .venv/bin/python bench/loop.py [--tasks 200]
"""

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import psycopg
from celery.contrib.testing.worker import start_worker
from PIL import Image

from loop.controller import RunConfig, run_loop
from loop.ingest import ingest_rows
from loop.sources import read_rows
from migrations import upgrade
from policies.types import EditRequest, EditResult
from rewards.types import JudgeItem, ParseStatus, Scores
from store.db import make_engine, make_session_factory
from store.images import ImageLimits
from store.objects import LocalStore, ObjectStore, S3Store
from workers.app import configure_celery
from workers.context import ModelCache, WorkerContext, set_worker_context
from workers.dispatch import CeleryDispatcher
from workers.settings import WorkerSettings

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
GPU_EDIT_S = 1.0


class NoOpEditor:
    version = "noop"

    def edit(self, requests: Sequence[EditRequest]) -> list[EditResult]:
        return [EditResult(r.image, None, r.seed, self.version, 0.0) for r in requests]


class InstantJudge:
    def score(self, items: Sequence[JudgeItem]) -> list[Scores]:
        names = ("a", "b", "c")
        return [
            Scores(5, 5, 5, 5, names, ParseStatus.OK, "a: 5\nb: 5\nc: 5", 0.0, "instant")
            for _ in items
        ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def round_trip_ms(store: ObjectStore, n: int = 50) -> float:
    """Mean time of one small PUT + GET, the unit of the store's share of the overhead."""
    started = time.perf_counter()
    for i in range(n):
        store.put(f"probe/{i}", b"x" * 1024)
        store.get(f"probe/{i}")
    elapsed = time.perf_counter() - started
    for i in range(n):
        store.delete(f"probe/{i}")
    return elapsed / n * 1000


def write_tasks(folder: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        lines.append(f'{{"image": "{i}.png", "instruction": "task {i}", "edit_type": "alter"}}')
    (folder / "instructions.jsonl").write_text("\n".join(lines) + "\n")


def measure(url: str, store: ObjectStore, tasks: Path, n: int, broker: str | None) -> float:
    """Seconds for one round over `n` tasks (one attempt each) with the given transport."""
    upgrade(url)
    factory = make_session_factory(make_engine(url))
    rows, _ = read_rows(tasks)
    ingest_rows(rows, session_factory=factory, store=store, limits=ImageLimits(), origin="bench")
    models = ModelCache(
        load_editor=lambda old, checkpoint: NoOpEditor(), load_judges=lambda: (InstantJudge(), None)
    )
    set_worker_context(WorkerContext(session_factory=factory, store=store, models=models))
    config = RunConfig(
        name="bench",
        rounds=1,
        tasks_per_round=n,
        max_reflections=0,
        batch_size=8,
        poll_interval_s=0.02,
    )
    settings = WorkerSettings(eager=broker is None, broker_url=broker or "memory://")
    app = configure_celery(settings)
    started = time.perf_counter()
    if broker is None:
        run_loop(factory=factory, dispatcher=CeleryDispatcher(), config=config)
    else:
        app.control.purge()
        with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING"):
            started = time.perf_counter()
            run_loop(factory=factory, dispatcher=CeleryDispatcher(), config=config)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200, help="attempts per measurement")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="editloop-bench-loop-"))
    (work / "tasks").mkdir()
    write_tasks(work / "tasks", args.tasks)

    eager = measure(
        f"sqlite:///{work / 'db.sqlite'}",
        LocalStore(work / "objects"),
        work / "tasks",
        args.tasks,
        broker=None,
    )

    # moto in its own process, as MinIO would be: in this one it would compete for the GIL.
    port = free_port()
    moto = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    name = f"editloop_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        s3 = S3Store(endpoint=f"127.0.0.1:{port}", access_key="b", secret_key="b", bucket="bench")
        s3_round_trip_ms = round_trip_ms(s3)
        celery = measure(
            f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}",
            s3,
            work / "tasks",
            args.tasks,
            broker="redis://127.0.0.1:6379/9",
        )
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        moto.terminate()
        moto.wait()

    print(f"\n{args.tasks} attempts, no-op editor and judge, one run")
    print(f"one S3 PUT+GET round trip to moto: {s3_round_trip_ms:.1f} ms (MinIO: ~1 ms)")
    print(f"{'mode':<36}{'attempts/s':>12}{'ms/attempt':>12}{'GPU edit / overhead':>22}")
    for label, seconds in (
        ("eager, SQLite + local", eager),
        ("Celery/Redis, PostgreSQL + S3", celery),
    ):
        per_attempt = seconds / args.tasks
        print(
            f"{label:<36}{args.tasks / seconds:>12.1f}{per_attempt * 1000:>12.1f}"
            f"{GPU_EDIT_S / per_attempt:>21.0f}x"
        )


if __name__ == "__main__":
    main()
