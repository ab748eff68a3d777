"""The `editloop` command: the composition root that reads the settings and wires the parts."""

import json
import os
import socket
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from loop import edit_command, judge_command, train_command
from loop.bench_command import DEMO, bench_app, pretrained_dir, run_and_report
from loop.controller import RunConfig, run_loop
from loop.gc import collect_garbage
from loop.ingest import Columns, IngestReport, ingest_rows, read_rows
from loop.runtime import build_worker_context
from loop.schema import SchemaOutdated, ensure_schema
from loop.self_improve import SelfImproveConfig
from loop.services import open_database, open_store
from loop.settings import get_settings, masked_settings
from loop.status import StatusReport, collect_status, round_metrics_of
from migrations import downgrade, upgrade
from store.db import DatabaseUnavailable
from store.objects import StoreUnavailable
from workers.app import configure_celery
from workers.context import set_worker_context
from workers.dispatch import CeleryDispatcher

app = typer.Typer(
    help="editloop: improve an instruction-based image editor by using it "
    "(edit → judge → reflect → fine-tune).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Manage the metadata database schema (Alembic).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(bench_app, name="bench")
app.command("edit")(edit_command.edit)
app.command("judge")(judge_command.judge)
app.command("train")(train_command.train)
app.command("trainer")(train_command.trainer)
console = Console()


@app.callback()
def main(
    config: Path | None = typer.Option(
        None, "--config", help="TOML or YAML settings file (same as EDITLOOP_CONFIG)."
    ),
) -> None:
    """Settings come from EDITLOOP_* variables and an optional config file; defaults = embedded."""
    if config is not None:
        os.environ["EDITLOOP_CONFIG"] = str(config)
        get_settings.cache_clear()


def fail(message: str) -> typer.Exit:
    """Print a user-facing error and return the exit to raise."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=1)


@app.command("config")
def show_config() -> None:
    """Print the effective settings as JSON, secrets masked."""
    print(json.dumps(masked_settings(get_settings()), indent=2))


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Migrate the database up to REVISION (default: the latest)."""
    upgrade(get_settings().store.database_url, revision)
    console.print(f"database at {revision}")


@db_app.command("downgrade")
def db_downgrade(revision: str = typer.Argument(..., help="Target revision, e.g. base.")) -> None:
    """Migrate the database down to REVISION (`base` removes every table)."""
    downgrade(get_settings().store.database_url, revision)
    console.print(f"database at {revision}")


@app.command("ingest")
def ingest(
    path: Path = typer.Argument(
        ...,
        help="A JSONL file (rows point to images relative to it), a folder with "
        "instructions.jsonl, a Parquet file, or a saved Hugging Face datasets folder.",
    ),
    origin: str = typer.Option("", help="Name of the source dataset (default: the path's name)."),
    image_column: str = typer.Option("image", help="Field holding the image path or bytes."),
    instruction_column: str = typer.Option("instruction", help="Field holding the instruction."),
    type_column: str = typer.Option("edit_type", help="Field holding the ImgEdit edit type."),
) -> None:
    """Load edit tasks; bad rows are reported and skipped, re-ingesting adds nothing."""
    report = _ingest(
        path, origin or path.name, Columns(image_column, instruction_column, type_column)
    )
    _print_ingest_report(report)


def _ingest(path: Path, origin: str, columns: Columns) -> IngestReport:
    settings = get_settings()
    try:
        rows, total = read_rows(path)
    except ValueError as exc:
        raise fail(str(exc)) from None
    try:
        ensure_schema(settings)
        session_factory = open_database(settings)
        store = open_store(settings)
        with tqdm(total=total, unit="row", desc="ingest", disable=None) as bar:
            return ingest_rows(
                rows,
                session_factory=session_factory,
                store=store,
                limits=settings.store.image_limits(),
                origin=origin,
                columns=columns,
                on_row=bar.update,
                retries=settings.store.retries,
            )
    except (DatabaseUnavailable, StoreUnavailable, SchemaOutdated) as exc:
        raise fail(str(exc)) from None


def _print_ingest_report(report: IngestReport) -> None:
    for problem in report.problems[:50]:
        console.print(
            f"line {problem.line}: {problem.reason}: {problem.detail}",
            highlight=False,
            soft_wrap=True,
        )
    if len(report.problems) > 50:
        console.print(f"... and {len(report.problems) - 50} more rejected rows")
    table = Table(title="ingest summary")
    table.add_column("outcome")
    table.add_column("rows", justify="right")
    table.add_row("ingested", str(report.ingested))
    table.add_row("duplicate", str(report.duplicate))
    for reason, n in sorted(report.rejected.items()):
        table.add_row(f"rejected: {reason}", str(n))
    console.print(table)


@app.command("status")
def status() -> None:
    """Counts of tasks, runs, rounds, attempts by status, accepted samples and checkpoints."""
    settings = get_settings()
    try:
        ensure_schema(settings)
        with open_database(settings)() as session:
            report = collect_status(session)
    except (DatabaseUnavailable, SchemaOutdated) as exc:
        raise fail(str(exc)) from None
    _print_status(report)


def _print_status(report: StatusReport) -> None:
    table = Table(title="editloop status")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("tasks", str(report.tasks))
    table.add_row("runs", str(report.runs))
    table.add_row("rounds", str(report.rounds))
    for name, n in sorted(report.attempts_by_status.items()):
        table.add_row(f"attempts: {name}", str(n))
    table.add_row("accepted samples", str(report.samples))
    for name, n in sorted(report.checkpoints_by_status.items()):
        table.add_row(f"checkpoints: {name}", str(n))
    console.print(table)


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


@app.command("run")
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
    try:
        ensure_schema(settings)
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
    except (DatabaseUnavailable, StoreUnavailable, SchemaOutdated, RuntimeError) as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        console.print(f"stopped; resume with: editloop run --name {config.name}")
        raise typer.Exit(code=130) from None


@app.command("worker")
def worker(
    queues: str = typer.Option("edit,judge", help="Comma-separated queues to consume."),
    device: str = typer.Option("", help="Torch device for editor and judge, e.g. cuda:0."),
    pool: str = typer.Option("solo", help="Celery pool: solo (one per GPU) or threads."),
    concurrency: int = typer.Option(1, min=1, help="Tasks at once (threads pool only)."),
    hostname: str = typer.Option("", help="Celery node name (default: editloop@<host>-<pid>)."),
    loglevel: str = typer.Option("INFO", help="Celery log level."),
) -> None:
    """Start one worker process (one per GPU) that edits and/or judges attempts from the broker."""
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
    try:
        ensure_schema(settings)
        set_worker_context(build_worker_context(settings))
    except (DatabaseUnavailable, StoreUnavailable, SchemaOutdated) as exc:
        raise fail(str(exc)) from None
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


@app.command("gc")
def gc(
    grace_minutes: float = typer.Option(
        60,
        min=0,
        help="Keep unreferenced objects younger than this (rows or uploads may be on their way).",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be deleted."),
) -> None:
    """Delete stored images that no task or attempt references, and staged checkpoint uploads
    (both left by crashes)."""
    settings = get_settings()
    try:
        ensure_schema(settings)
        garbage = collect_garbage(
            open_database(settings),
            open_store(settings),
            grace=timedelta(minutes=grace_minutes),
            dry_run=dry_run,
        )
    except (DatabaseUnavailable, StoreUnavailable, SchemaOutdated) as exc:
        raise fail(str(exc)) from None
    for key in garbage:
        console.print(key, highlight=False)
    console.print(f"{len(garbage)} unreferenced objects {'found' if dry_run else 'deleted'}")


@app.command("demo")
def demo(
    rounds: int = typer.Option(DEMO["rounds"], min=1, help="Loop rounds (each then fine-tunes)."),
) -> None:
    """Watch the loop improve an editor: the self-improvement benchmark's hindsight arm at a short
    setting (pre-train a small editor, then edit → judge → reflect → fine-tune → gate)."""
    settings = get_settings()
    out_dir = settings.data_dir / "demo"
    console.print(f"embedded mode: data under {out_dir.resolve()}")
    config = SelfImproveConfig(
        out_dir=out_dir, pretrained_dir=pretrained_dir(settings.data_dir), **DEMO
    )
    # The short setting is not held to the benchmark's targets (3 rounds, three arms).
    run_and_report(replace(config, rounds=rounds), targets=False)
    console.print(
        "the full experiment, with the rejection-only and control arms: editloop bench self-improve"
    )


if __name__ == "__main__":
    sys.exit(app())
