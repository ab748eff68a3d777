"""The `editloop` command: the composition root that reads the settings and wires the parts."""

import json
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from loop.ingest import Columns, IngestReport, ingest_rows, read_rows
from loop.schema import SchemaOutdated, ensure_schema
from loop.services import open_database, open_store
from loop.settings import get_settings, masked_settings
from loop.status import StatusReport, collect_status
from migrations import downgrade, upgrade
from store.db import DatabaseUnavailable
from store.objects import StoreUnavailable

app = typer.Typer(
    help="editloop: improve an instruction-based image editor by using it "
    "(edit → judge → reflect → fine-tune).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Manage the metadata database schema (Alembic).", no_args_is_help=True)
app.add_typer(db_app, name="db")
console = Console()
SAMPLES_DIR = Path(__file__).resolve().parent / "samples"


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


@app.command("demo")
def demo() -> None:
    """Run the embedded default end to end: ingest the bundled samples, then show the status."""
    settings = get_settings()
    console.print(f"embedded mode: data under {settings.data_dir.resolve()}")
    _print_ingest_report(_ingest(SAMPLES_DIR, "editloop-samples", Columns()))
    status()


if __name__ == "__main__":
    sys.exit(app())
