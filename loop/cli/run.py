"""Commands that run the loop: `run` (the round controller) and `worker` (one per GPU)."""

import os
import socket
from datetime import UTC, datetime

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from loop.cli.errors import USAGE, UserError
from loop.schema import ensure_schema
from loop.services import open_database
from loop.settings import get_settings
from loop.status import round_metrics_of
from store.models import Run

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
    rounds: int | None = typer.Option(None, min=1, help="Rounds to run (new run: 2)."),
    samples_per_task: int | None = typer.Option(
        None, min=1, help="Independent samples per task and round (new run: 1)."
    ),
    tasks: int | None = typer.Option(None, min=1, help="Tasks drawn (seeded) per round (new: 8)."),
    name: str = typer.Option(
        "", help="Run name: an existing run's name resumes it (default: a new, dated name)."
    ),
    new: bool = typer.Option(
        False,
        "--new",
        help="Start a new run under --name (with the defaults of any option not given).",
    ),
    max_reflections: int | None = typer.Option(
        None, min=0, help="Tries after the first per sample (default: judge.max_reflections)."
    ),
    train_every: int | None = typer.Option(
        None,
        min=0,
        help="Queue a training job each time the accepted pool grew by this (new run: 0, never).",
    ),
    seed: int | None = typer.Option(None, help="Seed of task draws and edit noise (new: 0)."),
    task_order: str | None = typer.Option(
        None,
        help="How rounds draw tasks: random (a new sample each round), fresh (no task twice "
        "before every task once), unsolved (tasks without an accepted sample first); new: random.",
    ),
    pipeline_depth: int | None = typer.Option(
        None,
        min=0,
        help="Overlap rounds with training: 0 opens each round once the run's training jobs "
        "ended (sequential); 1 lets round N+1 edit while round N's job trains, switching batches "
        "not yet started to each checkpoint promoted meanwhile (at most 1 checkpoint stale); "
        "N allows N. Unset (new run): rounds never wait for training.",
    ),
) -> None:
    """Run rounds of edit → judge → reflect; each round's metrics are stored and printed. A run
    stopped (Ctrl-C, a crash, an admin) resumes with `editloop run --name NAME`."""
    # Imported here: the models and Celery take seconds to import, and only running needs them.
    from loop.controller import TASK_ORDERS, RunConfig, RunStopped, run_loop
    from loop.runtime import build_worker_context
    from workers.app import check_broker, configure_celery
    from workers.context import set_worker_context
    from workers.dispatch import CeleryDispatcher

    settings = get_settings()
    ensure_schema(settings)
    factory = open_database(settings)
    given = {
        "rounds": rounds, "samples_per_task": samples_per_task, "tasks_per_round": tasks,
        "max_reflections": max_reflections, "train_min_new_samples": train_every, "seed": seed,
        "task_order": task_order, "pipeline_depth": pipeline_depth,
    }  # fmt: skip
    if name and not new and not any(v is not None for v in given.values()):
        with factory() as session:
            if session.scalar(select(Run.id).where(Run.name == name)) is None:
                raise UserError(
                    f"no run named {name!r} to resume: start it with --new, or give its "
                    "settings (e.g. --rounds 3); `editloop status` counts the runs",
                    code=USAGE,
                )
    if task_order is not None and task_order not in TASK_ORDERS:
        raise UserError(f"--task-order {task_order!r}: one of {', '.join(TASK_ORDERS)}", code=USAGE)
    config = RunConfig(
        name=name or datetime.now(UTC).strftime("run-%Y%m%d-%H%M%S"),
        batch_size=settings.worker.edit_batch_size,
        dispatch_timeout_s=settings.worker.dispatch_timeout_s,
        max_dispatches=settings.worker.max_dispatches,
        max_in_flight=settings.worker.max_in_flight,
        heartbeat_timeout_s=settings.worker.heartbeat_timeout_s,
        heldout_origin=settings.training.eval_origin,
        **{"max_reflections": settings.judge.max_reflections}
        | {k: v for k, v in given.items() if v is not None},
    )
    console.print(f"run {config.name} ({'in-process' if settings.worker.eager else 'workers'})")
    try:
        celery = configure_celery(settings.worker)
        if settings.worker.eager:
            set_worker_context(build_worker_context(settings))
        else:
            check_broker(celery, retries=settings.store.retries, backoff_s=settings.store.backoff_s)
        run_id = run_loop(
            factory=factory,
            dispatcher=CeleryDispatcher(),
            config=config,
            on_round=_print_round,
            retries=settings.store.retries,
        )
        with factory() as session:
            _print_rounds(round_metrics_of(session, run_id))
    except RunStopped:
        console.print(
            f"run {config.name} was stopped; resume with: editloop run --name {config.name}"
        )
    except KeyboardInterrupt:
        console.print(f"interrupted; resume with: editloop run --name {config.name}")
        raise typer.Exit(code=130) from None
    except RuntimeError as exc:
        # The controller's refusals ("no tasks to edit: ingest some ...") and the store's,
        # database's and broker's outages all say what to do.
        raise UserError(str(exc)) from None


worker_app = typer.Typer(
    help="Start a worker (`editloop worker --device cuda:0`), or ping one (`editloop worker ping`)."
)


@worker_app.callback(invoke_without_command=True)
def worker(
    ctx: typer.Context,
    queues: str = typer.Option("edit,judge", help="Comma-separated queues to consume."),
    device: str = typer.Option(
        "",
        help="Torch device of the editor, e.g. cuda:0, and of the judge unless "
        "EDITLOOP_JUDGE__DEVICE names its own.",
    ),
    pool: str = typer.Option("solo", help="Celery pool: solo (one per GPU) or threads."),
    concurrency: int = typer.Option(1, min=1, help="Tasks at once (threads pool only)."),
    hostname: str = typer.Option("", help="Celery node name (default: editloop@<host>-<pid>)."),
    loglevel: str = typer.Option("INFO", help="Celery log level."),
) -> None:
    """Start one worker process (one per GPU) that edits and/or judges attempts from the broker.

    It keeps a row in the database that its heartbeat renews every EDITLOOP_WORKER__HEARTBEAT_S
    (`editloop workers` lists them); a worker silent for EDITLOOP_WORKER__HEARTBEAT_TIMEOUT_S has
    its batch sent again. Its watchdog exits the process when one task runs longer than
    EDITLOOP_WORKER__TIME_LIMIT_S."""
    from policies.devices import pin_cuda_device  # light: torch is imported only for cuda:N

    pin_cuda_device(device)
    if ctx.invoked_subcommand is not None:
        return
    from celery.utils.nodenames import host_format

    from loop.runtime import build_worker_context
    from workers.app import check_broker, configure_celery
    from workers.process import run_worker

    settings = get_settings()
    if device:
        from rewards.vlm import check_device

        try:
            check_device(device)
        except ValueError as exc:
            raise UserError(str(exc), code=USAGE) from None
        settings = settings.model_copy(
            update={
                "editor": settings.editor.model_copy(update={"device": device}),
                "judge": settings.judge.model_copy(
                    update={"device": settings.judge.device or device}
                ),
            }
        )
    settings = settings.model_copy(
        update={"worker": settings.worker.model_copy(update={"eager": False})}
    )
    ensure_schema(settings)
    # The node name as Celery expands it (%h: this host), also recorded on the attempts and as
    # the worker's row (its heartbeat).
    name = host_format(hostname or f"editloop@{socket.gethostname()}-{os.getpid()}")
    context = build_worker_context(settings, worker_name=name)
    celery = configure_celery(settings.worker)
    check_broker(celery, retries=settings.store.retries, backoff_s=settings.store.backoff_s)
    run_worker(
        celery,
        context,
        settings.worker,
        queues=queues,
        device=device or settings.editor.device,
        pool=pool,
        concurrency=concurrency,
        loglevel=loglevel,
    )


@worker_app.command("ping")
def ping(
    hostname: str = typer.Option(
        ...,
        help="The worker's node name, as given to `editloop worker --hostname` (%h: this host).",
    ),
    timeout: float = typer.Option(10.0, min=0.1, help="Seconds to wait for the answer."),
) -> None:
    """Exit 0 when the worker named HOSTNAME answers through the broker (a liveness probe)."""
    from celery.utils.nodenames import host_format

    from workers.app import configure_celery

    name = host_format(hostname)
    celery = configure_celery(get_settings().worker.model_copy(update={"eager": False}))
    replies = celery.control.ping(destination=[name], timeout=timeout)
    if not any(name in reply for reply in replies):
        raise UserError(f"worker {name} did not answer a ping within {timeout:g} s")
    typer.echo(f"{name}: pong")


def workers(
    as_json: bool = typer.Option(
        False, "--json", help="Print JSON (what the API answers) instead of a table."
    ),
) -> None:
    """The worker processes as their heartbeats report them: live or not, queues, device, the
    checkpoint loaded, busy or idle, tasks done, last beat (`editloop worker` starts one)."""
    from loop.admin.queries.workers import list_workers
    from loop.admin.records import dumps

    settings = get_settings()
    ensure_schema(settings)
    with open_database(settings)() as session:
        page = list_workers(session, heartbeat_timeout_s=settings.worker.heartbeat_timeout_s)
    if as_json:
        print(dumps(page))
        return
    table = Table(title=f"workers ({page.live} live of {page.total})")
    for column in ("name", "state", "queues", "device", "checkpoint", "tasks", "last beat"):
        table.add_column(column, justify="right" if column == "tasks" else "left")
    for row in page.items:
        table.add_row(
            row.name,
            row.state if not row.task else f"{row.state}: {row.task}",
            row.queues,
            row.device or "–",
            row.checkpoint or "–",
            str(row.tasks_done),
            f"{row.beat_age_s:.0f} s ago",
        )
    console.print(table)
