"""Commands on the data: `config`, `db upgrade|downgrade`, `ingest`, `status`, `gc`, `check`."""

import json
import re
from datetime import timedelta
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from loop.cli.errors import USAGE, UserError
from loop.gc import collect_garbage
from loop.ingest import IngestReport, ingest_rows
from loop.invariants import check_invariants
from loop.schema import ensure_schema, migrate
from loop.services import open_database, open_store
from loop.settings import get_settings, masked_settings
from loop.sources import LAYOUTS, Columns, read_rows
from loop.status import StatusReport, collect_status
from store.models import Checkpoint

db_app = typer.Typer(help="Manage the metadata database schema (Alembic).", no_args_is_help=True)
console = Console()
# An SPDX licence id or expression token: CC-BY-NC-4.0, Apache-2.0, LicenseRef-foo, GPL-2.0+.
SPDX_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+-]*")


def show_config() -> None:
    """Print the effective settings as JSON, secrets masked."""
    print(json.dumps(masked_settings(get_settings()), indent=2))


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Migrate the database up to REVISION (default: the latest)."""
    try:
        migrate(get_settings(), revision)
    except ValueError as exc:
        raise UserError(str(exc), code=USAGE) from None
    console.print(f"database at {revision}")


@db_app.command("downgrade")
def db_downgrade(revision: str = typer.Argument(..., help="Target revision, e.g. base.")) -> None:
    """Migrate the database down to REVISION (`base` removes every table)."""
    try:
        migrate(get_settings(), revision, down=True)
    except ValueError as exc:
        raise UserError(str(exc), code=USAGE) from None
    console.print(f"database at {revision}")


def ingest(
    path: Path = typer.Argument(
        ...,
        help="A JSONL file (rows point to images relative to it), a folder with "
        "instructions.jsonl, a Parquet file, a saved Hugging Face datasets folder, ImgEdit's "
        "benchmark JSON or SEED-Data-Edit's Parquet.",
    ),
    origin: str = typer.Option(
        "",
        "--dataset",
        "--origin",
        help="Name of the source dataset (default: the path's name); `heldout` marks the gate's "
        "held-out tasks.",
    ),
    licence: str = typer.Option(
        "",
        "--licence",
        "--license",
        help="The dataset's licence as an SPDX id (e.g. CC-BY-NC-4.0), recorded on every task; "
        "never guessed.",
    ),
    layout: str = typer.Option(
        "auto", help=f"Input layout: {', '.join(LAYOUTS)} (auto: by the file's kind and columns)."
    ),
    image_root: Path | None = typer.Option(
        None, help="Folder relative image paths are read from (default: the file's folder)."
    ),
    allow_outside: list[Path] = typer.Option(
        [],
        "--allow-outside",
        help="Also read images from this folder (repeatable); paths outside the dataset's folder "
        "are refused otherwise.",
    ),
    image_column: str = typer.Option("image", help="Field holding the image path or bytes."),
    instruction_column: str = typer.Option("instruction", help="Field holding the instruction."),
    type_column: str = typer.Option("edit_type", help="Field holding the ImgEdit edit type."),
) -> None:
    """Load edit tasks; bad rows are reported and skipped, re-ingesting adds nothing."""
    if layout not in LAYOUTS:
        raise UserError(f"--layout {layout!r}: choose one of {', '.join(LAYOUTS)}", code=USAGE)
    if licence and not SPDX_ID.fullmatch(licence):
        raise UserError(
            f"--licence {licence!r} is not an SPDX licence id (letters, digits, '.', '-', '+'), "
            "e.g. CC-BY-4.0",
            code=USAGE,
        )
    settings = get_settings()
    columns = Columns(image_column, instruction_column, type_column)
    try:
        rows, total = read_rows(path, columns=columns, layout=layout, image_root=image_root)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    ensure_schema(settings)
    session_factory = open_database(settings)
    store = open_store(settings)
    with tqdm(total=total, unit="row", desc="ingest", disable=None) as bar:
        report = ingest_rows(
            rows,
            session_factory=session_factory,
            store=store,
            limits=settings.store.image_limits(),
            origin=origin or path.name,
            licence=licence,
            columns=columns,
            allowed_roots=tuple(allow_outside),
            on_row=bar.update,
            retries=settings.store.retries,
        )
    _print_ingest_report(report)
    if report.problems and not (report.ingested or report.duplicate):
        raise UserError(
            f"every row was rejected ({len(report.problems)}): nothing was ingested; see the "
            "reasons above"
        )


def _print_ingest_report(report: IngestReport) -> None:
    for problem in report.problems[:50]:
        console.print(
            f"{problem.where}: {problem.reason}: {problem.detail}",
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
    if report.sources_added:
        table.add_row("known, now also from this dataset", str(report.sources_added))
    for reason, n in sorted(report.rejected.items()):
        table.add_row(f"rejected: {reason}", str(n))
    console.print(table)


def status() -> None:
    """Counts of tasks, runs, rounds, attempts by status, accepted samples and checkpoints."""
    settings = get_settings()
    ensure_schema(settings)
    with open_database(settings)() as session:
        report = collect_status(session)
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


def gc(
    grace_minutes: float = typer.Option(
        60,
        min=0,
        help="Keep unreferenced objects younger than this (rows or uploads may be on their way).",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be deleted."),
) -> None:
    """Delete stored images that no task or attempt references, and staged checkpoint and export
    uploads (all left by crashes)."""
    settings = get_settings()
    ensure_schema(settings)
    garbage = collect_garbage(
        open_database(settings),
        open_store(settings),
        grace=timedelta(minutes=grace_minutes),
        dry_run=dry_run,
    )
    for key in garbage:
        console.print(key, highlight=False)
    console.print(f"{len(garbage)} unreferenced objects {'found' if dry_run else 'deleted'}")


def check(
    grace_minutes: float = typer.Option(
        60, min=0, help="Unreferenced objects younger than this are not garbage yet."
    ),
    load_checkpoints: bool = typer.Option(
        False,
        "--load-checkpoints",
        help="Also load every promoted checkpoint into the editor (loads the model libraries).",
    ),
) -> None:
    """Check the invariants: attempts terminal once, one judgment each, images and checkpoint
    files intact, no stale garbage, training jobs ended, round metrics equal to their rows."""
    settings = get_settings()
    ensure_schema(settings)
    store = open_store(settings)
    loader = None
    if load_checkpoints:
        from loop.runtime import load_editor

        def loader(checkpoint: Checkpoint) -> object:
            return load_editor(settings, store, None, checkpoint)

    checks = check_invariants(
        open_database(settings),
        store,
        grace=timedelta(minutes=grace_minutes),
        load_checkpoint=loader,
    )
    table = Table(title="editloop invariants")
    for column in ("invariant", "checked", "violations"):
        table.add_column(column, justify="left" if column == "invariant" else "right")
    for result in checks:
        table.add_row(result.name, str(result.checked), str(len(result.violations)))
    console.print(table)
    broken = [result for result in checks if not result.ok]
    for result in broken:
        for violation in result.violations[:10]:
            console.print(f"{result.name}: {violation}", highlight=False, soft_wrap=True)
    if broken:
        raise UserError(f"{len(broken)} of {len(checks)} invariants are violated (listed above)")
