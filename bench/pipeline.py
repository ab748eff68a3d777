"""Pipelined rounds on simulated GPUs: each GPU's busy fraction and rounds per hour, sequential
(`--pipeline-depth 0`) and pipelined (`--pipeline-depth 1`), side by side in one run.

Editor, judge and trainer are processes that hold a "GPU" (sleep) for times drawn from real
figures: an edit 4 s per image in batches of 8, a judgment 0.5 s per pair, a training job
10 minutes; all scaled down by `--scale` so that the run takes minutes. 4 edit workers (each
also judges) and 1 trainer run through the real controller, Redis and PostgreSQL (local object
folder): editloop's worker code with simulated models (tests/fixtures/simulated.py), the lease
protocol for jobs, a promoted checkpoint at the end of each. Every round queues one job.

Figures are over the steady state, from the end of the first round to the end of the last (the
first round has no training to overlap, and the last job nothing after it); the whole run,
trailing job included, is printed beside. Rounds per hour are in unscaled (real) time.

    .venv/bin/python bench/pipeline.py [--scale 0.05] [--rounds 4] [--tasks 512]
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from control_plane import postgres, prepare, write_tasks  # noqa: E402

from loop.controller import RunConfig, run_loop  # noqa: E402
from store.db import make_engine, make_session_factory  # noqa: E402
from store.models import Round, TrainJob, TrainJobStatus  # noqa: E402
from store.objects import LocalStore  # noqa: E402
from workers.app import configure_celery  # noqa: E402
from workers.dispatch import CeleryDispatcher  # noqa: E402
from workers.settings import WorkerSettings  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/10"
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Figures:
    """One mode's measurements (seconds are scaled, as measured)."""

    mode: str
    rounds: int
    window_s: float  # from the end of the first round to the end of the last
    total_s: float  # from the start to the end of the last training job
    edit_busy: list[float]  # per edit GPU, over the window
    trainer_busy: float
    edit_busy_total: list[float]  # per edit GPU, over the whole run
    trainer_busy_total: float

    def rounds_per_hour(self, scale: float) -> float:
        """Steady-state rounds per hour of real (unscaled) time."""
        return (self.rounds - 1) / (self.window_s / scale) * 3600

    def rounds_per_hour_total(self, scale: float) -> float:
        return self.rounds / (self.total_s / scale) * 3600


def busy_fraction(intervals: list[tuple[float, float]], start: float, end: float) -> float:
    """The share of [start, end] covered by `intervals` (one GPU's holds: they never overlap)."""
    held = sum(max(0.0, min(e, end) - max(s, start)) for s, e in intervals)
    return held / (end - start) if end > start else 0.0


def read_holds(folder: Path) -> dict[str, list[tuple[float, float]]]:
    """Every GPU's holds, from the JSONL logs the simulated processes append to."""
    holds: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for log in folder.glob("gpu-*.jsonl"):
        for line in log.read_text().splitlines():
            hold = json.loads(line)
            holds[hold["gpu"]].append((hold["start"], hold["end"]))
    return holds


@contextmanager
def processes(
    commands: list[tuple[str, list[str]]], env: dict[str, str], folder: Path
) -> Iterator[None]:
    """Start the named commands (their output in `folder`); ready once each printed "ready."."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("EDITLOOP_")}
    started = []
    for name, command in commands:
        log = folder / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, env=environment | env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                start_new_session=True,
            )  # fmt: skip
        started.append((process, log))
    try:
        deadline = time.monotonic() + 120
        for process, log in started:
            while b"ready." not in log.read_bytes():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{log.name} did not start:\n{log.read_text()[-2000:]}")
                time.sleep(0.05)
        yield
    finally:
        for process, _ in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process, _ in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def run_mode(depth: int, args: argparse.Namespace, work: Path) -> Figures:
    """One run of `args.rounds` rounds at pipeline depth `depth`; its figures."""
    folder = work / f"depth-{depth}"
    folder.mkdir()
    local_root = folder / "objects"
    simulated = [sys.executable, "-m", "tests.fixtures.simulated"]
    commands = [
        ("trainer", [*simulated, "trainer", "--name", "trainer@%h",
                     f"--train-s={args.train_s * args.scale}",
                     f"--gpu-log={folder / 'gpu-trainer.jsonl'}"]),
    ] + [
        (f"worker-{i}", [*simulated, "worker", "--name", f"gpu{i}@%h",
                         f"--edit-s={args.edit_s * args.scale}",
                         f"--judge-s={args.judge_s * args.scale}",
                         f"--gpu-log={folder / f'gpu-{i}.jsonl'}"])
        for i in range(args.workers)
    ]  # fmt: skip
    with postgres() as url:
        prepare(url, LocalStore(local_root), work / "tasks")
        factory = make_session_factory(make_engine(url))
        configure_celery(WorkerSettings(eager=False, broker_url=REDIS_URL)).control.purge()  # type: ignore[arg-type]
        env = {
            "EDITLOOP_DATA_DIR": str(folder / "data"),
            "EDITLOOP_STORE__DATABASE_URL": url,
            "EDITLOOP_STORE__LOCAL_ROOT": str(local_root),
            "EDITLOOP_WORKER__EAGER": "false",
            "EDITLOOP_WORKER__BROKER_URL": REDIS_URL,
            "EDITLOOP_WORKER__HEARTBEAT_S": "1",
        }
        config = RunConfig(
            name=f"pipeline-{depth}", rounds=args.rounds, tasks_per_round=args.tasks,
            max_reflections=0, batch_size=8, train_min_new_samples=1, pipeline_depth=depth,
            poll_interval_s=0.1, max_in_flight=2, heartbeat_timeout_s=10.0,
        )  # fmt: skip
        with processes(commands, env, folder):
            started = time.time()
            run_loop(factory=factory, dispatcher=CeleryDispatcher(), config=config)
            while True:  # the last round's job too, in both modes
                with factory() as session:
                    unfinished = session.scalar(
                        select(func.count())
                        .select_from(TrainJob)
                        .where(TrainJob.status != TrainJobStatus.FINISHED)
                    )
                if not unfinished:
                    break
                time.sleep(0.1)
            ended = time.time()
        with factory() as session:
            finished = [r.finished_at.timestamp() for r in
                        session.scalars(select(Round).order_by(Round.number))]  # fmt: skip
    holds = read_holds(folder)
    edit_gpus = sorted(name for name in holds if not name.startswith("trainer@"))
    (trainer,) = [name for name in holds if name.startswith("trainer@")]
    window = (finished[0], finished[-1])
    return Figures(
        mode="sequential" if depth == 0 else f"pipelined (depth {depth})",
        rounds=args.rounds,
        window_s=window[1] - window[0],
        total_s=ended - started,
        edit_busy=[busy_fraction(holds[g], *window) for g in edit_gpus],
        trainer_busy=busy_fraction(holds[trainer], *window),
        edit_busy_total=[busy_fraction(holds[g], started, ended) for g in edit_gpus],
        trainer_busy_total=busy_fraction(holds[trainer], started, ended),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.05, help="simulated time / real time")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=512, help="tasks per round (1 attempt each)")
    parser.add_argument("--workers", type=int, default=4, help="edit GPUs (each also judges)")
    parser.add_argument("--edit-s", type=float, default=4.0, help="real seconds per edited image")
    parser.add_argument("--judge-s", type=float, default=0.5, help="real seconds per judged pair")
    parser.add_argument("--train-s", type=float, default=600.0, help="real seconds per job")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="editloop-bench-pipeline-"))
    (work / "tasks").mkdir()
    write_tasks(work / "tasks", args.tasks)
    results = [run_mode(depth, args, work) for depth in (0, 1)]

    edit_round = args.tasks / 8 / args.workers * 8 * (args.edit_s + args.judge_s)
    print(
        f"\n{args.workers} edit GPUs + 1 trainer, {args.rounds} rounds of {args.tasks} tasks; "
        f"edit {args.edit_s:g} s/image in batches of 8, judge {args.judge_s:g} s/pair, "
        f"training {args.train_s:g} s/job (about {edit_round:.0f} s of editing a round), all "
        f"x{args.scale:g}"
    )
    print(f"{'mode':<24}{'rounds/h':>10}{'edit GPU busy (mean, min)':>28}{'trainer busy':>14}"
          f"{'  | whole run: rounds/h, edit busy, trainer busy':>48}")  # fmt: skip
    for r in results:
        print(
            f"{r.mode:<24}{r.rounds_per_hour(args.scale):>10.2f}"
            f"{sum(r.edit_busy) / len(r.edit_busy):>20.2f}, {min(r.edit_busy):.2f}"
            f"{r.trainer_busy:>14.2f}  | {r.rounds_per_hour_total(args.scale):.2f}, "
            f"{sum(r.edit_busy_total) / len(r.edit_busy_total):.2f}, {r.trainer_busy_total:.2f}"
        )
    sequential, pipelined = results
    print(
        f"pipelined / sequential rounds per hour: "
        f"{pipelined.rounds_per_hour(args.scale) / sequential.rounds_per_hour(args.scale):.2f}x "
        f"(target >= 1.7x); pipelined edit GPUs busy "
        f"{sum(pipelined.edit_busy) / len(pipelined.edit_busy):.2f} (target >= 0.9)"
    )


if __name__ == "__main__":
    main()
