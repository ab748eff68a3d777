"""Chaos soak: a whole deployment on this machine, killed and cut at random, then checked.

PostgreSQL (a throwaway database), a private Redis broker, an S3 endpoint (moto) behind a loopback
proxy that can refuse connections, `editloop worker` processes, the controller (`editloop run`)
and `editloop trainer` run the shapes world for several rounds with training between them, while
a seeded schedule SIGKILLs workers, the controller and the trainer (each is started again, the
controller resuming its run by name), restarts the broker (losing every queued message) and cuts
the store for seconds at a time. When the run has finished and every training job has ended,
everything is stopped, `editloop gc --grace-minutes 0` removes what crashed writers left behind,
and the invariant checker (`loop.invariants`) verifies the rows and objects.

    .venv/bin/python bench/chaos.py                  # the long soak (about 3 minutes here)
    .venv/bin/python bench/chaos.py --short          # the test suite's variant

Local addresses only; bounded in faults and time. Exits 1 on a violation or a timeout.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import psycopg
import torch
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from loop.benchmark.inputs import write_task_folder  # noqa: E402
from loop.controller import queue_train_job  # noqa: E402
from loop.invariants import check_invariants  # noqa: E402
from loop.runtime import load_editor  # noqa: E402
from loop.services import open_database, open_store  # noqa: E402
from loop.settings import Settings  # noqa: E402
from policies.pixel_config import PixelEditorConfig  # noqa: E402
from policies.pixel_editor import PixelEditorModel  # noqa: E402
from store.models import (  # noqa: E402
    Attempt,
    Round,
    RoundStatus,
    Run,
    RunStatus,
    TrainJob,
)
from tests.fixtures.services import MotoProcess, TcpProxy, free_port  # noqa: E402
from worlds.shapes.tasks import generate_compound_tasks, generate_single_op_tasks  # noqa: E402

EDITLOOP = str(Path(sys.executable).parent / "editloop")
FAULTS = ("kill-worker", "kill-controller", "kill-trainer", "restart-broker", "cut-store")
RUN_NAME = "chaos"
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class ChaosConfig:
    """One soak: the loop's size, the faults' number and pace, and the time bound."""

    seed: int = 0
    rounds: int = 6
    tasks: int = 48  # compound + single tasks edited per round
    workers: int = 3
    faults: int = 15  # faults injected at most (every kind at least once when this allows)
    pause_s: tuple[float, float] = (5.0, 12.0)  # between two faults, uniform
    outage_s: tuple[float, float] = (2.0, 5.0)  # how long the store is cut
    max_seconds: float = 1200.0


SHORT = ChaosConfig(rounds=3, tasks=16, workers=2, faults=5, pause_s=(2.0, 4.0),
                    outage_s=(2.0, 3.0), max_seconds=480.0)  # fmt: skip


class Deployment:
    """The processes of one soak, each startable, killable and startable again."""

    def __init__(self, folder: Path, config: ChaosConfig) -> None:
        self.folder = folder
        self.config = config
        self.redis_port = free_port()
        self.redis: subprocess.Popen[bytes] | None = None
        self.moto = MotoProcess()
        self.proxy: TcpProxy | None = None
        self.database = f"chaos_{os.getpid()}"
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.controller: subprocess.Popen[bytes] | None = None
        self.trainer: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}

    # ---- the services ----------------------------------------------------------------------

    def start_services(self) -> None:
        with psycopg.connect(
            "postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True
        ) as db:
            db.execute(f"DROP DATABASE IF EXISTS {self.database}")
            db.execute(f"CREATE DATABASE {self.database}")
        self.start_broker()
        self.moto.start()
        self.proxy = TcpProxy(self.moto.port)
        self.proxy.start()
        editor = self.folder / "pixel-editor"
        torch.manual_seed(self.config.seed)
        PixelEditorModel(
            PixelEditorConfig(block_out_channels=(16, 32, 32), embedding_dim=32)
        ).save_pretrained(editor)
        recipe = {"max_steps": 4, "micro_batch_size": 8, "resolution": 16, "num_workers": 0,
                  "save_every": 2, "progress_bar": False}  # fmt: skip
        environment = {k: v for k, v in os.environ.items() if not k.startswith("EDITLOOP_")}
        self.env = environment | {
            "EDITLOOP_DATA_DIR": str(self.folder / "data"),
            "EDITLOOP_STORE__DATABASE_URL": (
                f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.database}"
            ),
            "EDITLOOP_STORE__BACKEND": "s3",
            "EDITLOOP_STORE__S3_ENDPOINT": self.proxy.endpoint,
            "EDITLOOP_STORE__S3_ACCESS_KEY": "chaos",
            "EDITLOOP_STORE__S3_SECRET_KEY": "chaos",
            "EDITLOOP_STORE__S3_BUCKET": "chaos",
            "EDITLOOP_STORE__RETRIES": "8",
            "EDITLOOP_STORE__BACKOFF_S": "0.25",
            "EDITLOOP_EDITOR__MODEL": str(editor),
            "EDITLOOP_JUDGE__BACKEND": "shapes",
            "EDITLOOP_WORKER__EAGER": "false",
            "EDITLOOP_WORKER__BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "EDITLOOP_WORKER__EDIT_BATCH_SIZE": "4",
            "EDITLOOP_WORKER__JUDGE_BATCH_SIZE": "4",
            "EDITLOOP_WORKER__VISIBILITY_TIMEOUT_S": "5",
            "EDITLOOP_WORKER__DISPATCH_TIMEOUT_S": "20",
            "EDITLOOP_WORKER__MAX_DISPATCHES": "6",
            "EDITLOOP_TRAINING__LAUNCHER": "none",
            # An untrained editor is rarely right: train on every sample, so that jobs run.
            "EDITLOOP_TRAINING__UNFILTERED": "true",
            "EDITLOOP_TRAINING__RECIPE": json.dumps(recipe),
            "EDITLOOP_TRAINING__LEASE_S": "8",
            "EDITLOOP_TRAINING__RENEW_S": "2",
            "EDITLOOP_TRAINING__POLL_S": "1",
            "EDITLOOP_TRAINING__EVAL_TASKS": "4",
            "EDITLOOP_TRAINING__EVAL_MARGIN": "4.0",
            "OMP_NUM_THREADS": "1",
        }

    def start_broker(self) -> None:
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip

    def editloop(self, *args: str) -> None:
        """Run an editloop command to its end; raise with its output when it fails."""
        done = subprocess.run(
            [EDITLOOP, *args], env=self.env, capture_output=True, text=True, timeout=600
        )
        if done.returncode != 0:
            raise RuntimeError(f"editloop {' '.join(args)} failed:\n{done.stderr[-2000:]}")

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.folder / f"{name}.log").open("ab")
        return subprocess.Popen(
            [EDITLOOP, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def start_worker(self, index: int) -> None:
        self.workers[index] = self.spawn(f"worker-{index}", "worker", f"--hostname=w{index}@%h")

    def start_controller(self, *, new: bool) -> None:
        options = ["--new", "--rounds", str(self.config.rounds), "--tasks", str(self.config.tasks)]
        options = options if new else []
        self.controller = self.spawn("controller", "run", "--name", RUN_NAME, *options)

    def start_trainer(self) -> None:
        self.trainer = self.spawn("trainer", "trainer", "--owner", f"trainer-{time.time_ns()}")

    def stop(self) -> None:
        for process in [*self.workers.values(), self.controller, self.trainer]:
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in [*self.workers.values(), self.controller, self.trainer]:
            if process is not None:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)

    def tear_down(self) -> None:
        self.stop()
        if self.proxy is not None:
            self.proxy.stop()
        self.moto.stop()
        if self.redis is not None:
            self.redis.kill()
            self.redis.wait()
        with psycopg.connect(
            "postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True
        ) as db:
            db.execute(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")

    # ---- the faults ------------------------------------------------------------------------

    def inject(self, fault: str, rng: random.Random) -> None:
        if fault == "kill-worker":
            index = rng.choice(sorted(self.workers))
            os.killpg(self.workers[index].pid, signal.SIGKILL)
            self.workers[index].wait()
            self.start_worker(index)
        elif fault == "kill-controller":
            assert self.controller is not None
            os.killpg(self.controller.pid, signal.SIGKILL)
            self.controller.wait()
            self.start_controller(new=False)
        elif fault == "kill-trainer":
            assert self.trainer is not None
            os.killpg(self.trainer.pid, signal.SIGKILL)  # its launcher dies with it
            self.trainer.wait()
            self.start_trainer()
        elif fault == "restart-broker":
            assert self.redis is not None
            self.redis.kill()  # no persistence: every queued message is lost
            self.redis.wait()
            time.sleep(1.0)
            self.start_broker()
        elif fault == "cut-store":
            assert self.proxy is not None
            self.proxy.stop()
            time.sleep(rng.uniform(*self.config.outage_s))
            self.proxy.start()
        else:
            raise ValueError(f"fault={fault!r}: one of {FAULTS}")


def fault_schedule(config: ChaosConfig, rng: random.Random) -> list[str]:
    """`config.faults` faults, every kind once first (when the count allows), in a seeded order."""
    first = list(FAULTS[: config.faults])
    rest = [rng.choice(FAULTS) for _ in range(config.faults - len(first))]
    rng.shuffle(first)
    return first + rest


def write_tasks(folder: Path, config: ChaosConfig) -> tuple[Path, Path]:
    """The loop's tasks (compound and single) and the gate's held-out tasks."""
    half = max(1, config.tasks // 2)
    train = generate_compound_tasks(half, seed=config.seed + 10) + generate_single_op_tasks(
        half, seed=config.seed + 11
    )
    heldout = generate_compound_tasks(2, seed=config.seed + 20) + generate_single_op_tasks(
        2, seed=config.seed + 21
    )
    train_folder = write_task_folder(folder / "train", train)
    return train_folder, write_task_folder(folder / "heldout", heldout)


@dataclass(frozen=True)
class Progress:
    """Where the soak's run stands, read from the database."""

    run_finished: bool
    rounds: int
    attempts: int
    jobs: dict[str, int]

    @property
    def settled(self) -> bool:
        """The run finished and every training job ended."""
        return self.run_finished and not (self.jobs.get("queued", 0) + self.jobs.get("running", 0))

    def __str__(self) -> str:
        return f"rounds {self.rounds}, attempts {self.attempts}, jobs {self.jobs}"


def progress_of(factory: sessionmaker[Session]) -> Progress:
    with factory() as session:
        run = session.scalar(select(Run).where(Run.name == RUN_NAME))
        jobs = Counter(status.value for status in session.scalars(select(TrainJob.status)))
        return Progress(
            run_finished=run is not None and run.status == RunStatus.FINISHED,
            rounds=session.scalar(select(func.count()).select_from(Round)) or 0,
            attempts=session.scalar(select(func.count()).select_from(Attempt)) or 0,
            jobs=dict(sorted(jobs.items())),
        )


def queue_jobs(factory: sessionmaker[Session], trained: set[int]) -> None:
    """Queue a training job after each round that finished (once per round), as the
    benchmark does: the pool of an untrained editor grows too slowly for `--train-every`."""
    with factory() as session:
        rows = session.execute(
            select(Round.run_id, Round.number).where(Round.status == RoundStatus.FINISHED)
        ).all()
    for run_id, number in rows:
        if number not in trained:
            queue_train_job(factory, run_id, up_to_round=number)
            trained.add(number)


def soak(config: ChaosConfig, folder: Path) -> int:
    """Run one soak in `folder`; print what was injected and what was checked; 0 when clean."""
    rng = random.Random(config.seed)
    deployment = Deployment(folder, config)
    injected: Counter[str] = Counter()
    started = time.monotonic()
    try:
        deployment.start_services()
        train, heldout = write_tasks(folder, config)
        deployment.editloop("db", "upgrade")
        deployment.editloop("ingest", str(train), "--dataset", "shapes")
        deployment.editloop("ingest", str(heldout), "--dataset", "heldout")
        os.environ.update(deployment.env)  # this process reads the deployment's settings too
        settings = Settings()
        factory = open_database(settings)
        for index in range(config.workers):
            deployment.start_worker(index)
        deployment.start_trainer()
        deployment.start_controller(new=True)
        schedule = fault_schedule(config, rng)
        trained: set[int] = set()
        # The faults begin once the loop does (processes take a while to start here).
        while progress_of(factory).attempts == 0:
            if time.monotonic() - started > config.max_seconds / 2:
                print("the loop did not start", flush=True)
                return 1
            time.sleep(1.0)
        while True:
            if time.monotonic() - started > config.max_seconds:
                print(f"timed out after {config.max_seconds:.0f} s", flush=True)
                return 1
            controller = deployment.controller
            if controller is not None and controller.poll() not in (None, 0):
                # An outage longer than its retries ends it with an error: resume, as an
                # operator (or `restart: on-failure`) would.
                injected["controller restarted after an error"] += 1
                deployment.start_controller(new=False)
            queue_jobs(factory, trained)
            progress = progress_of(factory)
            if progress.settled and not schedule:
                break
            # Faults left when a fast run finishes still land (on its training jobs, or on an
            # idle deployment that must come back), so every kind is exercised on any machine.
            if schedule:
                time.sleep(rng.uniform(*config.pause_s))
                fault = schedule.pop(0)
                deployment.inject(fault, rng)
                injected[fault] += 1
                print(f"[{time.monotonic() - started:5.0f} s] {fault:<16} | {progress}", flush=True)
            else:
                time.sleep(1.0)
        deployment.stop()
        deployment.editloop("gc", "--grace-minutes", "0")
        store = open_store(settings)
        checks = check_invariants(
            factory,
            store,
            grace=timedelta(0),
            load_checkpoint=lambda row: load_editor(settings, store, None, row),
        )
        progress = progress_of(factory)
    finally:
        deployment.tear_down()
    seconds = time.monotonic() - started
    print(f"\nchaos soak, seed {config.seed}: {seconds:.0f} s, {progress}")
    print("faults injected: " + ", ".join(f"{k} {v}" for k, v in sorted(injected.items())))
    for check in checks:
        print(f"  {'ok  ' if check.ok else 'FAIL'} {check.name}: {check.checked} checked, "
              f"{len(check.violations)} violations")  # fmt: skip
        for violation in check.violations[:10]:
            print(f"       {violation}")
    violations = sum(len(check.violations) for check in checks)
    print(f"violations: {violations}")
    return 0 if violations == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="the test suite's short variant")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault schedule")
    parser.add_argument("--faults", type=int, default=None, help="faults to inject at most")
    parser.add_argument("--rounds", type=int, default=None, help="loop rounds")
    parser.add_argument("--out", type=Path, default=None, help="keep the soak's folder here")
    args = parser.parse_args()
    config = replace(SHORT if args.short else ChaosConfig(), seed=args.seed)
    if args.faults is not None:
        config = replace(config, faults=args.faults)
    if args.rounds is not None:
        config = replace(config, rounds=args.rounds)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        return soak(config, args.out)
    with tempfile.TemporaryDirectory(prefix="editloop-chaos-") as folder:
        return soak(config, Path(folder))


if __name__ == "__main__":
    sys.exit(main())
