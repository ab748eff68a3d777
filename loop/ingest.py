"""Ingest edit tasks (source image, instruction, edit type) from JSONL, Parquet or datasets.

Every image passes the image gate (`store.images.decode_image`); a bad row is reported with its
line number and reason and leaves nothing behind; re-ingesting the same input adds nothing.
"""

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session, sessionmaker

from store.db import insert_ignore, with_db_retry
from store.images import ImageError, ImageLimits, canonical_png
from store.keys import SOURCE_PREFIX
from store.models import Task
from store.objects import ObjectStore, content_key, put_content
from store.taxonomy import parse_edit_type

MAX_INSTRUCTION_CHARS = 2000


@dataclass(frozen=True)
class Columns:
    """Which fields of a row hold the image, the instruction and the edit type."""

    image: str = "image"
    instruction: str = "instruction"
    edit_type: str = "edit_type"


@dataclass(frozen=True)
class RawRow:
    """One row as read from the input, before any check; `problem` is set when it is unreadable."""

    line: int
    record: dict[str, Any]
    base_dir: Path | None = None
    problem: str | None = None


@dataclass(frozen=True)
class RowProblem:
    line: int
    reason: str
    detail: str


class RowError(ValueError):
    """A row that cannot be ingested, with a short reason (the summary groups by it)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class PreparedTask:
    """A checked row: the normalised PNG, its content key and the task's fields."""

    line: int
    png: bytes
    source_key: str
    instruction: str
    instruction_sha256: str
    edit_type: str
    width: int
    height: int
    meta: dict[str, Any]


@dataclass
class IngestReport:
    ingested: int = 0
    duplicate: int = 0
    problems: list[RowProblem] = field(default_factory=list)

    @property
    def rejected(self) -> Counter[str]:
        return Counter(problem.reason for problem in self.problems)


def read_rows(path: Path) -> tuple[Iterator[RawRow], int | None]:
    """The rows of a JSONL file, a folder with `instructions.jsonl`, Parquet, or a datasets folder.

    Returns the rows and their count when it is known up front (for the progress bar).
    """
    path = Path(path)
    if path.is_dir():
        if (path / "instructions.jsonl").is_file():
            return read_rows(path / "instructions.jsonl")
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            return _read_dataset_folder(path)
        raise ValueError(
            f"{path} is a folder without instructions.jsonl and is not a saved datasets folder"
        )
    if not path.is_file():
        raise ValueError(f"{path}: no such file or folder")
    if path.suffix == ".jsonl":
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        return _read_jsonl_lines(lines, path.parent), sum(1 for line in lines if line.strip())
    if path.suffix == ".parquet":
        return _read_parquet(path)
    raise ValueError(f"{path}: expected .jsonl, .parquet, or a folder")


def _read_jsonl_lines(lines: list[str], base_dir: Path) -> Iterator[RawRow]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield RawRow(number, {}, base_dir, problem=f"malformed JSON ({exc.msg})")
            continue
        if not isinstance(record, dict):
            yield RawRow(number, {}, base_dir, problem="malformed JSON (a row must be an object)")
            continue
        yield RawRow(number, record, base_dir)


def _read_parquet(path: Path) -> tuple[Iterator[RawRow], int]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)

    def rows() -> Iterator[RawRow]:
        number = 0
        for batch in parquet.iter_batches(batch_size=64):
            for record in batch.to_pylist():
                number += 1
                yield RawRow(number, record, path.parent)

    return rows(), parquet.metadata.num_rows


def _read_dataset_folder(path: Path) -> tuple[Iterator[RawRow], int]:
    from datasets import Image as ImageFeature
    from datasets import load_from_disk

    dataset = load_from_disk(str(path))
    if not hasattr(dataset, "features"):  # a DatasetDict: the user must pick a split
        splits = ", ".join(dataset)
        raise ValueError(f"{path} holds several splits ({splits}); give one split's folder")
    # Undecoded images come back as {"bytes", "path"} so that our own gate decodes them.
    for name, feature in dataset.features.items():
        if isinstance(feature, ImageFeature):
            dataset = dataset.cast_column(name, ImageFeature(decode=False))

    def rows() -> Iterator[RawRow]:
        for number, record in enumerate(dataset, start=1):
            yield RawRow(number, dict(record), path)

    return rows(), len(dataset)


def prepare_row(raw: RawRow, *, columns: Columns, limits: ImageLimits, origin: str) -> PreparedTask:
    """Check one row and normalise its image; raises `RowError` and writes nothing."""
    if raw.problem:
        raise RowError("malformed_row", raw.problem)
    record = raw.record
    instruction = record.get(columns.instruction)
    if not isinstance(instruction, str) or not instruction.strip():
        raise RowError("empty_instruction", f"field {columns.instruction!r} is missing or empty")
    instruction = " ".join(instruction.split())
    if len(instruction) > MAX_INSTRUCTION_CHARS:
        detail = f"{len(instruction)} > {MAX_INSTRUCTION_CHARS} characters"
        raise RowError("instruction_too_long", detail)
    raw_type = record.get(columns.edit_type) or "other"
    if not isinstance(raw_type, str):
        raise RowError("unknown_edit_type", f"{raw_type!r} is not a string")
    try:
        edit_type = parse_edit_type(raw_type)
    except ValueError as exc:
        raise RowError("unknown_edit_type", str(exc)) from None
    data = _image_bytes(record.get(columns.image), raw.base_dir, columns.image)
    try:
        image, png = canonical_png(data, limits)
    except ImageError as exc:
        raise RowError(f"image_{exc.reason}", exc.detail) from None

    known = {columns.image, columns.instruction, columns.edit_type}
    meta = {key: _jsonable(value) for key, value in record.items() if key not in known}
    return PreparedTask(
        line=raw.line,
        png=png,
        source_key=content_key(png, prefix=SOURCE_PREFIX, ext="png"),
        instruction=instruction,
        instruction_sha256=hashlib.sha256(instruction.encode()).hexdigest(),
        edit_type=edit_type.value,
        width=image.width,
        height=image.height,
        meta={"origin_line": raw.line, **meta},
    )


def _image_bytes(value: Any, base_dir: Path | None, column: str) -> bytes:
    if isinstance(value, dict):  # datasets' Image feature, undecoded: {"bytes": ..., "path": ...}
        value = value.get("bytes") or value.get("path")
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if not isinstance(value, str) or not value.strip():
        raise RowError("missing_image", f"field {column!r} is missing or empty")
    path = Path(value)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise RowError("missing_file", f"{path} does not exist") from None
    except OSError as exc:
        raise RowError("missing_file", f"{path}: {exc.strerror}") from None


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)[:200]
    return value


def ingest_rows(
    rows: Iterable[RawRow],
    *,
    session_factory: sessionmaker[Session],
    store: ObjectStore,
    limits: ImageLimits,
    origin: str,
    columns: Columns = Columns(),
    chunk_size: int = 64,
    on_row: Callable[[], None] = lambda: None,
    retries: int = 5,
) -> IngestReport:
    """Check, store and record every row; objects are written before the rows that point at them."""
    report = IngestReport()
    chunk: list[PreparedTask] = []
    for raw in rows:
        try:
            chunk.append(prepare_row(raw, columns=columns, limits=limits, origin=origin))
        except RowError as exc:
            report.problems.append(RowProblem(raw.line, exc.reason, exc.detail))
        if len(chunk) >= chunk_size:
            _write_chunk(chunk, session_factory, store, origin, report, retries)
            chunk = []
        on_row()
    if chunk:
        _write_chunk(chunk, session_factory, store, origin, report, retries)
    return report


def _write_chunk(
    chunk: list[PreparedTask],
    session_factory: sessionmaker[Session],
    store: ObjectStore,
    origin: str,
    report: IngestReport,
    retries: int,
) -> None:
    pairs = {(task.source_key, task.instruction_sha256) for task in chunk}

    def existing_pairs() -> set[tuple[str, str]]:
        with session_factory() as session:
            found = session.execute(
                select(Task.source_key, Task.instruction_sha256).where(
                    tuple_(Task.source_key, Task.instruction_sha256).in_(pairs)
                )
            )
            return {(key, digest) for key, digest in found}

    known = with_db_retry(existing_pairs, retries=retries, what="the duplicate check")
    fresh: dict[tuple[str, str], PreparedTask] = {}
    for task in chunk:
        pair = (task.source_key, task.instruction_sha256)
        if pair in known or pair in fresh:
            report.duplicate += 1
        else:
            fresh[pair] = task
    if not fresh:
        return
    for task in fresh.values():  # object first, row second
        put_content(store, task.png, prefix=SOURCE_PREFIX, ext="png", content_type="image/png")

    def insert() -> int:
        with session_factory() as session, session.begin():
            return insert_ignore(
                session,
                Task,
                [
                    {
                        "source_key": task.source_key,
                        "instruction": task.instruction,
                        "instruction_sha256": task.instruction_sha256,
                        "edit_type": task.edit_type,
                        "origin": origin,
                        "width": task.width,
                        "height": task.height,
                        "meta": task.meta,
                    }
                    for task in fresh.values()
                ],
                conflict_columns=["source_key", "instruction_sha256"],
            )

    inserted = with_db_retry(insert, retries=retries, what="the task insert")
    report.ingested += inserted
    # Rows another ingest inserted between our check and our insert are duplicates too.
    report.duplicate += len(fresh) - inserted
