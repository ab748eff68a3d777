"""Control-plane cost of the loop: attempts/s with an editor and a judge that take no time.

Side by side in one run, one round of `--tasks` attempts each:

- eager, in-process, SQLite + local folder (the embedded default);
- Celery over Redis with PostgreSQL and the **local store**, one worker process: editloop's own
  cost with a deployment's broker and database;
- the same with **S3 (moto)** instead of the local store, so that the S3 stand-in's latency is
  separated from editloop's (MinIO answers in about 1 ms a request; moto in tens).

The workers are real worker processes (`workers.process.run_worker`, heartbeats included) with
simulated models that hold no GPU (tests/fixtures/simulated.py); the controller runs here. The
target: >= 100 attempts/s through Redis + PostgreSQL on a 2-core machine. `--profile DIR` writes
cProfile stats of the controller and the worker of the Redis + PostgreSQL + local run and prints
where their time went.

    .venv/bin/python bench/control_plane.py [--tasks 400] [--profile /tmp/prof]
"""

import argparse
import cProfile
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loop.controller import RunConfig, run_loop  # noqa: E402
from loop.ingest import ingest_rows  # noqa: E402
from loop.sources import read_rows  # noqa: E402
from migrations import upgrade  # noqa: E402
from store.db import make_engine, make_session_factory  # noqa: E402
from store.images import ImageLimits  # noqa: E402
from store.objects import LocalStore, ObjectStore  # noqa: E402
from store.s3 import S3Store  # noqa: E402
from tests.fixtures.services import MotoProcess  # noqa: E402
from tests.fixtures.simulated import GpuLog, simulated_models  # noqa: E402
from workers.app import configure_celery  # noqa: E402
from workers.context import WorkerContext, set_worker_context  # noqa: E402
from workers.dispatch import CeleryDispatcher  # noqa: E402
from workers.settings import WorkerSettings  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/9"
GPU_EDIT_S = 1.0


@dataclass(frozen=True)
class Result:
    label: str
    attempts: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.attempts / self.seconds


def write_tasks(folder: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        lines.append(f'{{"image": "{i}.png", "instruction": "task {i}", "edit_type": "alter"}}')
    (folder / "instructions.jsonl").write_text("\n".join(lines) + "\n")


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


def config(n: int, poll_s: float, max_in_flight: int) -> RunConfig:
    return RunConfig(name="bench", rounds=1, tasks_per_round=n, max_reflections=0, batch_size=8,
                     poll_interval_s=poll_s, max_in_flight=max_in_flight,
                     heartbeat_timeout_s=10.0)  # fmt: skip


def prepare(url: str, store: ObjectStore, tasks: Path) -> None:
    upgrade(url)
    rows, _ = read_rows(tasks)
    factory = make_session_factory(make_engine(url))
    ingest_rows(rows, session_factory=factory, store=store, limits=ImageLimits(), origin="bench")


def eager(work: Path, n: int, run: RunConfig) -> Result:
    """One round in-process: SQLite + local folder, Celery eager."""
    url, store = f"sqlite:///{work / 'db.sqlite'}", LocalStore(work / "objects")
    prepare(url, store, work / "tasks")
    factory = make_session_factory(make_engine(url))
    models = simulated_models(0.0, 0.0, GpuLog(None, "eager"))
    set_worker_context(WorkerContext(session_factory=factory, store=store, models=models))
    configure_celery(WorkerSettings(eager=True))
    started = time.perf_counter()
    run_loop(factory=factory, dispatcher=CeleryDispatcher(), config=run)
    return Result("eager, SQLite + local folder", n, time.perf_counter() - started)


@contextmanager
def postgres() -> Iterator[str]:
    name = f"editloop_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def worker_processes(
    env: dict[str, str], folder: Path, n: int, profile: Path | None
) -> Iterator[None]:
    """`n` worker processes with simulated models that take no time; ready when this yields."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("EDITLOOP_")}
    processes, logs = [], []
    for index in range(n):
        command = [sys.executable, "-m", "tests.fixtures.simulated", "worker",
                   "--name", f"bench{index}@%h"]  # fmt: skip
        if profile is not None and index == 0:
            command += ["--profile", str(profile)]
        logs.append(folder / f"worker-{index}-{uuid.uuid4().hex[:6]}.log")
        with logs[-1].open("wb") as out:
            processes.append(
                subprocess.Popen(
                    command,
                    env=environment | env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=Path(__file__).resolve().parents[1],
                    start_new_session=True,
                )  # fmt: skip
            )
    try:
        deadline = time.monotonic() + 120
        for process, log in zip(processes, logs, strict=True):
            while b"ready." not in log.read_bytes():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"a worker did not start:\n{log.read_text()[-2000:]}")
                time.sleep(0.05)
        yield
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)  # a warm shutdown: the profile is written
        for process in processes:
            process.wait(timeout=60)


def distributed(
    label: str, work: Path, run: RunConfig, store_env: dict[str, str], store: ObjectStore,
    *, workers: int = 1, profile: Path | None = None,
) -> Result:  # fmt: skip
    """One round through Redis + PostgreSQL with `workers` worker processes and the given store."""
    with postgres() as url:
        prepare(url, store, work / "tasks")
        factory = make_session_factory(make_engine(url))
        settings = WorkerSettings(eager=False, broker_url=REDIS_URL, heartbeat_s=1)  # type: ignore[arg-type]
        configure_celery(settings).control.purge()
        env = {
            "EDITLOOP_DATA_DIR": str(work / "data"),
            "EDITLOOP_STORE__DATABASE_URL": url,
            "EDITLOOP_WORKER__EAGER": "false",
            "EDITLOOP_WORKER__BROKER_URL": REDIS_URL,
            "EDITLOOP_WORKER__HEARTBEAT_S": "1",
            **store_env,
        }
        worker_profile = profile / "worker.prof" if profile else None
        with worker_processes(env, work, workers, worker_profile):
            controller = cProfile.Profile() if profile else None
            started = time.perf_counter()
            if controller is not None:
                controller.enable()
            run_loop(factory=factory, dispatcher=CeleryDispatcher(), config=run)
            seconds = time.perf_counter() - started
            if controller is not None:
                controller.disable()
                controller.dump_stats(profile / "controller.prof")  # type: ignore[operator]
    return Result(label, run.tasks_per_round, seconds)


def print_profile(path: Path, title: str, lines: int = 14) -> None:
    """The functions of ours, the database driver and the broker client with most time."""
    print(f"\n{title} (cumulative seconds, {path})")
    stats = pstats.Stats(str(path))
    rows = []
    for (file, line, name), (_, calls, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        if any(part in file for part in ("/loop/", "/workers/", "/store/")) or name in (
            "execute", "commit", "apply_async", "_write",
        ):  # fmt: skip
            rows.append((cumulative, calls, f"{Path(file).name}:{line} {name}"))
    for cumulative, calls, where in sorted(rows, reverse=True)[:lines]:
        print(f"  {cumulative:8.2f} s {calls:7d} calls  {where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=400, help="attempts per measurement")
    parser.add_argument("--poll", type=float, default=0.1, help="controller poll interval, s")
    parser.add_argument("--max-in-flight", type=int, default=4, help="batches per live worker")
    parser.add_argument("--profile", type=Path, default=None, help="folder for cProfile stats")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="editloop-bench-control-"))
    (work / "tasks").mkdir()
    write_tasks(work / "tasks", args.tasks)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    run = config(args.tasks, args.poll, args.max_in_flight)

    (work / "eager").mkdir()
    (work / "eager" / "tasks").symlink_to(work / "tasks")
    results = [eager(work / "eager", args.tasks, run)]
    local_root = work / "local-objects"
    local_env = {"EDITLOOP_STORE__LOCAL_ROOT": str(local_root)}
    for workers in (1, 2):
        results.append(
            distributed(
                f"Celery/Redis, PostgreSQL + local, {workers} worker{'s' * (workers > 1)}",
                work, run, local_env, LocalStore(local_root), workers=workers,
                profile=args.profile if workers == 1 else None,
            )
        )  # fmt: skip
    moto = MotoProcess()  # its own process, as MinIO would be: here it would compete for the GIL
    moto.start()
    try:
        s3 = S3Store(endpoint=moto.endpoint, access_key="b", secret_key="b", bucket="bench")
        s3_ms = round_trip_ms(s3)
        s3_env = {
            "EDITLOOP_STORE__BACKEND": "s3", "EDITLOOP_STORE__S3_ENDPOINT": moto.endpoint,
            "EDITLOOP_STORE__S3_ACCESS_KEY": "b", "EDITLOOP_STORE__S3_SECRET_KEY": "b",
            "EDITLOOP_STORE__S3_BUCKET": "bench",
        }  # fmt: skip
        results.append(
            distributed("Celery/Redis, PostgreSQL + S3 (moto), 1 worker", work, run, s3_env, s3)
        )
    finally:
        moto.stop()

    print(
        f"\n{args.tasks} attempts a run, editor and judge taking no time; the controller polls "
        f"every {args.poll:g} s, {args.max_in_flight} batches of 8 in flight per worker"
    )
    print(f"one S3 PUT+GET round trip to moto: {s3_ms:.1f} ms (MinIO: ~1 ms)")
    print(f"{'mode':<48}{'attempts/s':>12}{'ms/attempt':>12}{'1 s GPU edit / overhead':>26}")
    for result in results:
        per_attempt = result.seconds / result.attempts
        print(
            f"{result.label:<48}{result.per_s:>12.1f}{per_attempt * 1000:>12.1f}"
            f"{GPU_EDIT_S / per_attempt:>25.0f}x"
        )
    if args.profile:
        print_profile(args.profile / "controller.prof", "controller (Redis + PostgreSQL + local)")
        print_profile(args.profile / "worker.prof", "worker (Redis + PostgreSQL + local)")


if __name__ == "__main__":
    main()
