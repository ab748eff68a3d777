"""Commands that run the loop: `run` (the round controller) and `worker` (one per GPU)."""

import os
import socket
from datetime import UTC, datetime

import typer
from rich.console import Console
from rich.table import Table

from loop.cli.errors import UserError
from loop.schema import ensure_schema
from loop.services import open_database
from loop.settings import get_settings
from loop.status import round_metrics_of

console = Console()
ROUND_METRICS = {
    "attempts": "attempts/total",
    "Success rate": "verdict/Success/rate",
    "Reflection rate": "verdict/Reflection/rate",
    "Failed rate": "verdict/Failed/rate",
    "chains succeeded": "chains/success_rate",
    "  at once": "chains/success_after_0",
    "  after 1 retry": "chains/success_after_1",
    "  after 2 retries": "chains/success_after_2",
    "mean overall score": "scores/overall/mean",
    "attempts/s": "throughput/attempts_per_s",
}


def _print_round(number: int, metrics: dict[str, float]) -> None:
    console.print(
        f"round {number}: {metrics['attempts/total']:g} attempts, "
        f"{metrics['chains/success_rate']:.0%} of chains succeeded, "
        f"{metrics['throughput/attempts_per_s']:.2f} attempts/s",
        highlight=False,
    )


def _print_rounds(rounds: list[dict[str, float]]) -> None:
    table = Table(title="round metrics")
    table.add_column("metric")
    for number in range(len(rounds)):
        table.add_column(f"round {number}", justify="right")
    for label, key in ROUND_METRICS.items():
        table.add_row(label, *(f"{metrics.get(key, 0.0):.3g}" for metrics in rounds))
    console.print(table)


def run(
    rounds: int = typer.Option(2, min=1, help="Rounds to run."),
    samples_per_task: int = typer.Option(1, min=1, help="Independent samples per task and round."),
    tasks: int = typer.Option(8, min=1, help="Tasks drawn (seeded) per round."),
    name: str = typer.Option(
        "", help="Run name; give an existing run's name to resume it (default: a new name)."
    ),
    max_reflections: int | None = typer.Option(
        None, min=0, help="Tries after the first per sample (default: judge.max_reflections)."
    ),
    train_every: int = typer.Option(
        0, min=0, help="Queue a training job each time the accepted pool grew by this (0: never)."
    ),
    seed: int = typer.Option(0, help="Seed of task draws and edit noise."),
) -> None:
    """Run rounds of edit → judge → reflect; each round's metrics are stored and printed."""
    # Imported here: the models and Celery take seconds to import, and only running needs them.
    from loop.controller import RunConfig, run_loop
    from loop.runtime import build_worker_context
    from workers.app import configure_celery
    from workers.context import set_worker_context
    from workers.dispatch import CeleryDispatcher

    settings = get_settings()
    config = RunConfig(
        name=name or datetime.now(UTC).strftime("run-%Y%m%d-%H%M%S"),
        rounds=rounds,
        samples_per_task=samples_per_task,
        tasks_per_round=tasks,
        max_reflections=(
            settings.judge.max_reflections if max_reflections is None else max_reflections
        ),
        batch_size=settings.worker.edit_batch_size,
        dispatch_timeout_s=settings.worker.dispatch_timeout_s,
        max_dispatches=settings.worker.max_dispatches,
        train_min_new_samples=train_every,
        heldout_origin=settings.training.eval_origin,
        seed=seed,
    )
    console.print(f"run {config.name} ({'in-process' if settings.worker.eager else 'workers'})")
    ensure_schema(settings)
    try:
        configure_celery(settings.worker)
        if settings.worker.eager:
            set_worker_context(build_worker_context(settings))
        factory = open_database(settings)
        run_id = run_loop(
            factory=factory,
            dispatcher=CeleryDispatcher(),
            config=config,
            on_round=_print_round,
            retries=settings.store.retries,
        )
        with factory() as session:
            _print_rounds(round_metrics_of(session, run_id))
    except KeyboardInterrupt:
        console.print(f"stopped; resume with: editloop run --name {config.name}")
        raise typer.Exit(code=130) from None
    except RuntimeError as exc:
        # The controller's refusals ("no tasks to edit: ingest some ...") and the store's and
        # database's outages all say what to do.
        raise UserError(str(exc)) from None


def worker(
    queues: str = typer.Option("edit,judge", help="Comma-separated queues to consume."),
    device: str = typer.Option("", help="Torch device for editor and judge, e.g. cuda:0."),
    pool: str = typer.Option("solo", help="Celery pool: solo (one per GPU) or threads."),
    concurrency: int = typer.Option(1, min=1, help="Tasks at once (threads pool only)."),
    hostname: str = typer.Option("", help="Celery node name (default: editloop@<host>-<pid>)."),
    loglevel: str = typer.Option("INFO", help="Celery log level."),
) -> None:
    """Start one worker process (one per GPU) that edits and/or judges attempts from the broker."""
    from loop.runtime import build_worker_context
    from workers.app import configure_celery
    from workers.context import set_worker_context

    settings = get_settings()
    if device:
        settings = settings.model_copy(
            update={
                "editor": settings.editor.model_copy(update={"device": device}),
                "judge": settings.judge.model_copy(update={"device": device}),
            }
        )
    settings = settings.model_copy(
        update={"worker": settings.worker.model_copy(update={"eager": False})}
    )
    ensure_schema(settings)
    set_worker_context(build_worker_context(settings))
    celery = configure_celery(settings.worker)
    celery.worker_main(
        [
            "worker",
            f"--queues={queues}",
            f"--pool={pool}",
            f"--concurrency={concurrency}",
            f"--hostname={hostname or f'editloop@{socket.gethostname()}-{os.getpid()}'}",
            f"--loglevel={loglevel}",
            "--without-gossip",
            "--without-mingle",
        ]
    )
