"""`editloop export`: curate what the loop produced into a dataset others can load.

The export's libraries (pyarrow, datasets, matplotlib, huggingface_hub) are imported inside the
command, through `loop.export.pipeline`'s writers, never at start-up.
"""

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from sqlalchemy import select
from sqlalchemy.orm import Session

from loop.cli.errors import USAGE, UserError
from loop.export.card import UNKNOWN_LICENCE
from loop.export.columns import ExportFormat, ExportKind
from loop.schema import ensure_schema
from loop.services import open_database, open_store
from loop.settings import get_settings
from store.models import Checkpoint, Run
from store.taxonomy import Verdict, parse_edit_type

console = Console()
BASE_CHECKPOINT = "base"
MAX_LOCATION = 256  # the `export.object_key` column


def _ids_by_name(
    session: Session, model: type[Run] | type[Checkpoint], column: Any, names: list[str], what: str
) -> dict[str, int]:
    """The ids of the rows of `model` whose `column` is one of `names`; UserError naming any
    that does not exist."""
    rows = session.execute(select(column, model.id).where(column.in_(names)))
    found = {name: row_id for name, row_id in rows}
    missing = sorted(set(names) - set(found))
    if missing:
        known = list(session.scalars(select(column).order_by(model.id.desc()).limit(5)))
        raise UserError(
            f"no {what} named {', '.join(map(repr, missing))}; recent ones: "
            f"{', '.join(known) or 'none'}"
        )
    return found


def _verdicts(values: list[str], kind: ExportKind) -> tuple[str, ...]:
    by_name = {v.value.lower(): v.value for v in Verdict}
    chosen = []
    for value in values:
        if value.lower() not in by_name:
            raise UserError(
                f"--verdict {value!r}: expected one of {', '.join(v.value for v in Verdict)}",
                code=USAGE,
            )
        chosen.append(by_name[value.lower()])
    if not chosen and kind == ExportKind.REFLECTIONS:
        return tuple(v.value for v in Verdict)
    return tuple(sorted(set(chosen)))


def export(
    out: str = typer.Argument(
        ...,
        metavar="OUT",
        help="A folder (created if missing; an earlier export of the same kind in it is "
        "replaced), or store:NAME for exports/NAME/ in the configured object store.",
    ),
    kind: ExportKind = typer.Option(
        ExportKind.EDITS,
        "--kind",
        help="edits: (source, instruction, edited) triples for editors; reflections: the "
        "reflector's answers and their outcome, for judges and reflectors.",
    ),
    export_format: ExportFormat = typer.Option(
        ExportFormat.HF,
        "--format",
        help="hf: Parquet shards + dataset card (datasets.load_dataset); webdataset: tar shards; "
        "jsonl: one JSON line per row with PNG files beside it.",
    ),
    runs: list[str] = typer.Option([], "--run", help="Only this run, by name (repeatable)."),
    from_round: int = typer.Option(0, min=0, help="Only rounds numbered at least this."),
    up_to_round: int | None = typer.Option(None, min=0, help="Only rounds numbered at most this."),
    verdicts: list[str] = typer.Option(
        [],
        "--verdict",
        help="Only edits with this verdict (repeatable; a reviewer's override wins over the "
        "judge). Default: Success for edits, every verdict for reflections.",
    ),
    min_overall: float | None = typer.Option(None, min=1, max=5, help="Overall score at least."),
    min_following: float | None = typer.Option(None, min=1, max=5, help="First score at least."),
    min_quality: float | None = typer.Option(None, min=1, max=5, help="Second score at least."),
    min_preservation: float | None = typer.Option(None, min=1, max=5, help="Third score at least."),
    edit_types: list[str] = typer.Option(
        [], "--edit-type", help="Only this ImgEdit edit type (repeatable)."
    ),
    min_depth: int = typer.Option(0, min=0, help="Only attempts at least this deep."),
    max_depth: int | None = typer.Option(None, min=0, help="Only attempts at most this deep."),
    checkpoints: list[str] = typer.Option(
        [],
        "--checkpoint",
        help=f"Only edits made by this checkpoint version ({BASE_CHECKPOINT}: the base model; "
        "repeatable).",
    ),
    origins: list[str] = typer.Option(
        [],
        "--origin",
        "--dataset",
        help="Only tasks that arrived from this dataset (repeatable). The held-out set "
        "(EDITLOOP_TRAINING__EVAL_ORIGIN) is left out unless named here.",
    ),
    licences: list[str] = typer.Option(
        [],
        "--licence",
        "--license",
        help=f"Only tasks with a source under this licence (SPDX id; {UNKNOWN_LICENCE}: none "
        "given; repeatable).",
    ),
    hindsight: bool = typer.Option(
        False,
        "--hindsight",
        help="Edits: also the source + original instruction → final image of each successful "
        "reflection chain (marked hindsight).",
    ),
    val_fraction: float = typer.Option(
        0.1, min=0.0, max=0.99, help="Share of tasks in the validation split (by task hash)."
    ),
    seed: int = typer.Option(0, help="Seed of the train/validation split."),
    workers: int = typer.Option(4, min=1, max=64, help="Threads fetching images in parallel."),
    shard_mb: float = typer.Option(
        256.0, min=0.001, help="Shard size in MB (WebDataset: at most; Parquet: about)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace OUT even when it is not an earlier export of KIND."
    ),
    push_to_hub: str | None = typer.Option(
        None,
        "--push-to-hub",
        help="Then upload the export folder to this Hugging Face dataset repo (needs a token).",
    ),
    private: bool = typer.Option(False, "--private", help="With --push-to-hub: a private repo."),
) -> None:
    """Export curated edits or reflection records as a dataset, with provenance and licences.

    Rows are streamed from the database and the object store into a staging folder, verified,
    and published with a manifest written last; the export is recorded in the `export` table.
    """
    from loop.export.pipeline import ExportOptions, NothingSelected, export_dataset
    from loop.export.publish import (
        ExportRefused,
        LocalTarget,
        PublishError,
        StoreTarget,
        Target,
        store_target_name,
    )
    from loop.training.pool import PoolFilter

    if hindsight and kind == ExportKind.REFLECTIONS:
        raise UserError("--hindsight adds edit triples: use it with --kind edits", code=USAGE)
    try:
        store_name = store_target_name(out)
        types = tuple(sorted({parse_edit_type(t).value for t in edit_types}))
    except ValueError as exc:
        raise UserError(str(exc), code=USAGE) from None
    if push_to_hub and store_name is not None:
        raise UserError("--push-to-hub uploads a local folder: give OUT as a folder", code=USAGE)
    settings = get_settings()
    ensure_schema(settings)
    factory = open_database(settings)
    store = open_store(settings)
    with factory() as session:
        run_ids = _ids_by_name(session, Run, Run.name, runs, "run")
        versions = [c for c in checkpoints if c != BASE_CHECKPOINT]
        checkpoint_ids = _ids_by_name(
            session, Checkpoint, Checkpoint.version, versions, "checkpoint"
        )
    heldout = settings.training.eval_origin
    try:
        pool_filter = PoolFilter(
            run_ids=tuple(sorted(run_ids.values())),
            verdicts=_verdicts(verdicts, kind),
            from_round=from_round,
            up_to_round=up_to_round,
            min_overall=min_overall,
            min_following=min_following,
            min_quality=min_quality,
            min_preservation=min_preservation,
            edit_types=types,
            min_depth=min_depth,
            max_depth=max_depth,
            checkpoint_ids=(
                tuple(
                    sorted(checkpoint_ids.values())
                    + ([None] if BASE_CHECKPOINT in checkpoints else [])
                )
                if checkpoints
                else None
            ),
            origins=tuple(sorted(set(origins))),
            exclude_origins=() if heldout in origins else (heldout,),
            licences=tuple(sorted({"" if x == UNKNOWN_LICENCE else x for x in licences})),
            hindsight=hindsight,
            # The names, for the record (the ids above are this database's).
            extra={"runs": sorted(runs), "checkpoints": sorted(set(checkpoints))},
        )
        options = ExportOptions(
            kind=kind,
            export_format=export_format,
            pool_filter=pool_filter,
            val_fraction=val_fraction,
            seed=seed,
            workers=workers,
            shard_mb=shard_mb,
            overwrite=overwrite,
        )
    except ValueError as exc:
        raise UserError(str(exc), code=USAGE) from None
    # A local folder must not hold what replacing its contents would delete.
    database = settings.store.database_url
    sqlite_file = (
        [Path(database.removeprefix("sqlite:///"))] if database.startswith("sqlite:///") else []
    )
    protected = (
        Path.cwd(),
        settings.data_dir,
        *sqlite_file,
        *filter(None, [settings.store.local_root]),
    )
    target: Target = (
        StoreTarget(store, store_name) if store_name else LocalTarget(Path(out), protected)
    )
    if len(target.location) > MAX_LOCATION:
        raise UserError(
            f"{target.location}: longer than {MAX_LOCATION} characters; choose a shorter path"
        )
    progress = _Progress()
    try:
        result = export_dataset(
            factory=factory, store=store, target=target, options=options, progress=progress
        )
    except (ExportRefused, NothingSelected, PublishError) as exc:
        raise UserError(str(exc)) from None
    finally:
        progress.close()
    splits = ", ".join(f"{s} {n}" for s, n in result.counts["splits"].items())
    console.print(
        f"exported {result.rows} {kind.value} ({splits}) to {result.location} as {export_format}"
        f"; {result.skipped} skipped; export {result.export_id}, manifest sha256 "
        f"{result.checksum[:16]}",
        highlight=False,
        soft_wrap=True,
    )
    if push_to_hub:
        _push(Path(out), push_to_hub, private=private, export_id=result.export_id)


class _Progress:
    """A tqdm bar over the selected attempts; skipped rows printed above it."""

    def __init__(self) -> None:
        self.bar = None

    def start(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="attempt", desc="export", disable=None)

    def advance(self, records: int) -> None:
        if self.bar is not None:
            self.bar.update(records)

    def skipped(self, row) -> None:  # type: ignore[no-untyped-def]
        import sys

        from tqdm import tqdm

        tqdm.write(f"skipped {row.id} (attempt {row.attempt_id}): {row.reason}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _push(folder: Path, repo: str, *, private: bool, export_id: int) -> None:
    """Upload the finished export folder to a Hugging Face dataset repo."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo,
            repo_type="dataset",
            folder_path=folder,
            commit_message=f"editloop export {export_id}",
        )
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise UserError(
            f"pushing to {repo} failed: {exc}; the export itself is finished in {folder} (log in "
            "with `hf auth login` or set HF_TOKEN, then push again)"
        ) from None
    console.print(f"pushed to https://huggingface.co/datasets/{repo}", highlight=False)
