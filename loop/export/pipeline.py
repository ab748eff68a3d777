"""One export from start to end: check the target, count, record, stream, write, verify, publish.

Records are read in pages, images fetched from the store by `workers` threads a bounded window
ahead and written in order, so memory stays flat whatever the pool's size. The `export` row is
written first (status `staging`) and marked `finished` only after the manifest is published; a
failure marks it `failed`, and a killed export leaves it `staging`, never `finished`.
"""

import contextlib
import hashlib
import importlib
import itertools
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from loop.export.card import HISTOGRAM_PATH, dataset_card
from loop.export.columns import IMAGE_COLUMNS, ExportFormat, ExportKind, columns_for
from loop.export.publish import PublishError, Target, check_staged, manifest_bytes
from loop.export.selection import ExportRecord, ExportRow, count_records, iter_records, rows_of
from loop.export.splits import SPLITS, split_of
from loop.export.stats import ExportStats, SkippedRow
from loop.export.writers.base import DatasetWriter, WrittenFile, written_file
from loop.training.pool import PoolFilter
from store.models import Export, utcnow
from store.objects import ObjectNotFound, ObjectStore

STAGING, FINISHED, FAILED = "staging", "finished", "failed"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CARD_NAME = "README.md"
_WRITERS = {
    ExportFormat.HF: ("loop.export.writers.hf", "HfParquetWriter"),
    ExportFormat.WEBDATASET: ("loop.export.writers.webdataset", "WebDatasetWriter"),
    ExportFormat.JSONL: ("loop.export.writers.jsonl", "JsonlWriter"),
}


class NothingSelected(ValueError):
    """The filter selects no row (or every selected row had to be skipped)."""


@dataclass(frozen=True)
class ExportOptions:
    """What to export and how; `pool_filter.hindsight` adds hindsight triples to edits."""

    kind: ExportKind
    export_format: ExportFormat
    pool_filter: PoolFilter = field(default_factory=lambda: PoolFilter(hindsight=False))
    val_fraction: float = 0.1
    seed: int = 0
    workers: int = 4
    shard_mb: float = 256.0
    overwrite: bool = False
    page_size: int = 500

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction={self.val_fraction}: must be in [0, 1)")
        if self.workers < 1:
            raise ValueError(f"workers={self.workers}: must be >= 1")
        if self.shard_mb <= 0:
            raise ValueError(f"shard_mb={self.shard_mb}: must be > 0")

    def record(self) -> dict[str, Any]:
        """The filter and the options that shape the files (the manifest, card and row keep it)."""
        return {
            **self.pool_filter.to_dict(),
            "kind": self.kind.value,
            "format": self.export_format.value,
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "shard_mb": self.shard_mb,
        }


class ExportProgress(Protocol):
    """What an export reports while it runs (the command line draws a progress bar)."""

    def start(self, total: int) -> None:
        """`total` judged attempts were selected."""

    def advance(self, records: int) -> None:
        """`records` more attempts were read."""

    def skipped(self, row: SkippedRow) -> None:
        """A row was left out (an image missing from the store)."""


class _Silent:
    def start(self, total: int) -> None: ...
    def advance(self, records: int) -> None: ...
    def skipped(self, row: SkippedRow) -> None: ...


@dataclass(frozen=True)
class ExportResult:
    export_id: int
    location: str
    rows: int
    skipped: int
    checksum: str  # SHA-256 of the manifest
    counts: dict[str, Any]


def as_png(data: bytes) -> bytes:
    """The image as PNG bytes (stored images already are; anything else is re-encoded)."""
    if data.startswith(PNG_SIGNATURE):
        return data
    from store.images import decode_image, encode_png

    return encode_png(decode_image(data))


@dataclass(frozen=True)
class RowImages:
    """The PNG bytes of a row's images and their SHA-256, by image column."""

    data: dict[str, bytes]
    sha256: dict[str, str]


def fetch_images(store: ObjectStore, row: ExportRow) -> RowImages | str:
    """The row's images as PNG with their SHA-256 (hashed here, in the fetching thread), or why
    they cannot be had."""
    data = {}
    for column, key in row.image_keys.items():
        try:
            data[column] = as_png(store.get(key))
        except ObjectNotFound:
            return f"{column} {key} is missing from the store"
    return RowImages(data, {column: hashlib.sha256(d).hexdigest() for column, d in data.items()})


def _batched(items: Iterable[ExportRow], size: int) -> Iterator[list[ExportRow]]:
    iterator = iter(items)
    while part := list(itertools.islice(iterator, size)):
        yield part


def fetched(
    store: ObjectStore, rows: Iterable[ExportRow], workers: int, chunk: int = 16
) -> Iterator[tuple[ExportRow, RowImages | str]]:
    """`rows` with their images, in order, fetched by `workers` threads (`chunk` rows a task) a
    bounded window ahead."""

    def fetch_chunk(part: list[ExportRow]) -> list[RowImages | str]:
        return [fetch_images(store, row) for row in part]

    window: deque[tuple[list[ExportRow], Future[list[RowImages | str]]]] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="export-fetch") as pool:
        for part in _batched(rows, chunk):
            window.append((part, pool.submit(fetch_chunk, part)))
            if len(window) >= 2 * workers:
                part, future = window.popleft()
                yield from zip(part, future.result(), strict=True)
        while window:
            part, future = window.popleft()
            yield from zip(part, future.result(), strict=True)


def _counted(records: Iterable[ExportRecord], progress: ExportProgress) -> Iterator[ExportRecord]:
    for record in records:
        yield record
        progress.advance(1)


def make_writer(options: ExportOptions, folder: Path) -> DatasetWriter:
    """The writer of the export's format, writing under `folder` (its library imported here)."""
    module, name = _WRITERS[options.export_format]
    writer_class = getattr(importlib.import_module(module), name)
    columns = columns_for(options.kind)
    return writer_class(folder, columns, shard_bytes=int(options.shard_mb * 2**20))


def verify_rows(folder: Path, files: list[WrittenFile], export_format: ExportFormat) -> None:
    """PublishError unless every data file, read back, holds the rows the writer counted."""
    module = importlib.import_module(_WRITERS[export_format][0])
    for entry in files:
        if entry.rows is not None and module.count_rows(folder / entry.path) != entry.rows:
            raise PublishError(f"{entry.path}: holds other than the {entry.rows} rows written")


def _set_status(factory: sessionmaker[Session], export_ids: list[int], status: str) -> None:
    with factory() as session, session.begin():
        session.execute(
            update(Export)
            .where(Export.id.in_(export_ids), Export.status == STAGING)
            .values(status=status)
        )


def export_dataset(
    *,
    factory: sessionmaker[Session],
    store: ObjectStore,
    target: Target,
    options: ExportOptions,
    progress: ExportProgress | None = None,
) -> ExportResult:
    """Write the rows `options` select to `target`; returns what was recorded.

    Raises ExportRefused (target not replaceable) or NothingSelected before writing anything.
    """
    progress = progress or _Silent()
    kind, pool_filter = options.kind, options.pool_filter
    target.check(kind.value, overwrite=options.overwrite)
    with factory() as session:
        total = count_records(session, pool_filter, kind)
    if total == 0:
        raise NothingSelected(
            f"the filter selects no {kind.value} (no judged attempt matches it); loosen it, or "
            "check the names of runs, checkpoints, datasets and licences"
        )
    with factory() as session, session.begin():
        export = Export(
            kind=kind.value,
            status=STAGING,
            data_filter=options.record(),
            format=options.export_format.value,
            object_key=target.location,
            row_count=0,
            checksum="",
            counts={},
        )
        session.add(export)
        session.flush()
        export_id = export.id
    try:
        staging, crashed = target.begin(kind.value, export_id)
        if crashed:
            _set_status(factory, crashed, FAILED)
        writer = make_writer(options, staging)
        stats = ExportStats()
        progress.start(total)
        records = _counted(
            iter_records(factory, pool_filter, kind, page_size=options.page_size), progress
        )
        rows = rows_of(records, kind, hindsight=pool_filter.hindsight)
        for row, images in fetched(store, rows, options.workers):
            if isinstance(images, str):
                stats.skip(row.id, row.values["attempt_id"], images)
                progress.skipped(stats.skipped[-1])
                continue
            values = row.values | {
                f"{column.removesuffix('_image')}_sha256": images.sha256[column]
                for column in IMAGE_COLUMNS
            }
            split = split_of(row.task_id, seed=options.seed, val_fraction=options.val_fraction)
            writer.write(split, values, images.data)
            stats.add(split, values)
        files = writer.close()
        if stats.rows == 0:
            raise NothingSelected(
                f"every one of the {len(stats.skipped)} selected rows was skipped (images "
                "missing from the store); nothing to export"
            )
        files += _write_card(staging, options, stats)
        check_staged(staging, files)
        verify_rows(staging, files, options.export_format)
        manifest = manifest_bytes(
            kind=kind.value,
            export_format=options.export_format.value,
            files=files,
            splits={s: stats.splits[s] for s in SPLITS if stats.splits[s]},
            skipped=len(stats.skipped),
            export_filter=options.record(),
        )
        target.publish(files, manifest)
    except BaseException:
        target.abandon()
        # The database may be what failed: the row then stays `staging`, never `finished`.
        with contextlib.suppress(Exception):
            _set_status(factory, [export_id], FAILED)
        raise
    checksum = hashlib.sha256(manifest).hexdigest()
    counts = stats.counts() | {"files": len(files)}
    with factory() as session, session.begin():
        session.execute(
            update(Export)
            .where(Export.id == export_id)
            .values(
                status=FINISHED,
                row_count=stats.rows,
                checksum=checksum,
                counts=counts,
                finished_at=utcnow(),
            )
        )
    return ExportResult(
        export_id, target.location, stats.rows, len(stats.skipped), checksum, counts
    )


def _write_card(staging: Path, options: ExportOptions, stats: ExportStats) -> list[WrittenFile]:
    """The dataset card and its histogram image, written into `staging`."""
    from loop.export.histograms import histogram_png

    data_files = {}
    if options.export_format == ExportFormat.HF:
        from loop.export.writers.hf import data_files_pattern

        data_files = {s: data_files_pattern(s) for s in SPLITS if stats.splits[s]}
    histogram = staging / HISTOGRAM_PATH
    histogram.parent.mkdir(parents=True, exist_ok=True)
    histogram.write_bytes(histogram_png(stats))
    card = dataset_card(
        kind=options.kind,
        export_format=options.export_format,
        columns=columns_for(options.kind),
        stats=stats,
        export_filter=options.record(),
        data_files=data_files,
        histograms=True,
    )
    (staging / CARD_NAME).write_text(card, encoding="utf-8")
    return [written_file(staging, CARD_NAME), written_file(staging, HISTOGRAM_PATH)]
