"""Ingest edit tasks (source image, instruction, edit type) read by `loop.sources`.

Every image passes the image gate (`store.images.decode_image`); a bad row is reported with its
line number and reason and leaves nothing behind, and the rest of the ingest goes on;
re-ingesting the same input adds nothing. Image paths stay inside the dataset's folder (or the
folders the user allowed), only regular files are read, and their size is checked before reading.
Every task records the datasets it arrived from, with the licence the user gave (`task_source`).
"""

import hashlib
import json
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session, sessionmaker

from loop.sources import Columns, RawRow
from store.db import insert_ignore, with_db_retry
from store.images import ImageError, ImageLimits, canonical_png
from store.keys import SOURCE_PREFIX
from store.models import Task, TaskSource
from store.objects import ObjectStore, content_key, put_content
from store.taxonomy import parse_edit_type

MAX_INSTRUCTION_CHARS = 2000


@dataclass(frozen=True)
class RowProblem:
    line: int
    reason: str
    detail: str
    turn: int | None = None

    @property
    def where(self) -> str:
        return f"line {self.line}" + (f" (turn {self.turn})" if self.turn else "")


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
    sources_added: int = 0  # known tasks that now also record this dataset
    problems: list[RowProblem] = field(default_factory=list)

    @property
    def rejected(self) -> Counter[str]:
        return Counter(problem.reason for problem in self.problems)


def prepare_row(
    raw: RawRow,
    *,
    columns: Columns,
    limits: ImageLimits,
    allowed_roots: tuple[Path, ...] = (),
) -> PreparedTask:
    """Check one row and normalise its image; raises `RowError` and writes nothing.

    Relative image paths are read from the row's `base_dir`; a path that resolves outside it and
    outside every folder of `allowed_roots` is refused."""
    if raw.problem:
        raise RowError("malformed_row", raw.problem)
    record = raw.record
    instruction = record.get(columns.instruction)
    if not isinstance(instruction, str) or not instruction.strip():
        raise RowError("empty_instruction", f"field {columns.instruction!r} is missing or empty")
    check_text(instruction, columns.instruction)
    instruction = " ".join(instruction.split())
    if len(instruction) > MAX_INSTRUCTION_CHARS:
        detail = f"{len(instruction)} > {MAX_INSTRUCTION_CHARS} characters"
        raise RowError("instruction_too_long", detail)
    raw_type = record.get(columns.edit_type) or "other"
    if not isinstance(raw_type, str):
        raise RowError("unknown_edit_type", f"{raw_type!r} is not a string")
    check_text(raw_type, columns.edit_type)
    try:
        edit_type = parse_edit_type(raw_type)
    except ValueError as exc:
        raise RowError("unknown_edit_type", str(exc)) from None
    known = {columns.image, columns.instruction, columns.edit_type}
    meta = {key: _jsonable(value) for key, value in record.items() if key not in known}
    check_text(meta, "metadata")
    roots = (raw.base_dir, *allowed_roots) if raw.base_dir is not None else allowed_roots
    data, name = _image_bytes(record.get(columns.image), raw.base_dir, roots, columns, limits)
    try:
        image, png = canonical_png(data, limits)
    except ImageError as exc:
        raise RowError(f"image_{exc.reason}", f"{name}: {exc.detail}") from None
    if raw.turn is not None:
        meta["turn"] = raw.turn
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


def check_text(value: Any, name: str) -> None:
    """RowError for text no database stores alike: a NUL character or a lone surrogate (in a
    string, or in any string inside lists and objects)."""
    if isinstance(value, dict):
        for key, item in value.items():
            check_text(key, name)
            check_text(item, f"{name}.{key}")
    elif isinstance(value, list):
        for item in value:
            check_text(item, name)
    elif isinstance(value, str):
        if "\x00" in value:
            raise RowError("invalid_text", f"field {name!r} holds a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise RowError("invalid_text", f"field {name!r} is not valid Unicode") from None


def _image_bytes(
    value: Any,
    base_dir: Path | None,
    allowed_roots: tuple[Path, ...],
    columns: Columns,
    limits: ImageLimits,
) -> tuple[bytes, str]:
    """The image's bytes and a name for messages (its path, or the column)."""
    if isinstance(value, dict):  # datasets' Image feature, undecoded: {"bytes": ..., "path": ...}
        value = value.get("bytes") or value.get("path")
    if isinstance(value, bytes | bytearray):
        if len(value) > limits.max_bytes:
            detail = f"{len(value)} bytes > {limits.max_bytes} (store.max_image_mb)"
            raise RowError("image_too_large", f"field {columns.image!r}: {detail}")
        return bytes(value), f"field {columns.image!r}"
    if not isinstance(value, str) or not value.strip():
        raise RowError("missing_image", f"field {columns.image!r} is missing or empty")
    check_text(value, columns.image)
    return read_image_file(Path(value), base_dir, allowed_roots, limits), value


def read_image_file(
    path: Path, base_dir: Path | None, allowed_roots: tuple[Path, ...], limits: ImageLimits
) -> bytes:
    """Read an image file: inside an allowed folder, a regular file, at most `max_bytes`."""
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    # Resolved (links followed) before the check: `../` and links cannot leave the folder.
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root.resolve()) for root in allowed_roots):
        inside = allowed_roots[0] if allowed_roots else "the dataset's folder"
        raise RowError(
            "path_outside", f"{path} is outside {inside} (allow it with --allow-outside FOLDER)"
        )
    try:
        info = os.stat(resolved)
    except FileNotFoundError:
        raise RowError("missing_file", f"{path} does not exist") from None
    except OSError as exc:
        raise RowError("missing_file", f"{path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):  # a FIFO would block, /dev/zero would never end
        raise RowError("not_a_file", f"{path} is not a regular file")
    if info.st_size > limits.max_bytes:
        detail = f"{path}: {info.st_size} bytes > {limits.max_bytes} (store.max_image_mb)"
        raise RowError("image_too_large", detail)
    try:
        with resolved.open("rb") as file:
            data = file.read(limits.max_bytes + 1)
    except OSError as exc:
        raise RowError("missing_file", f"{path}: {exc.strerror}") from None
    if len(data) > limits.max_bytes:  # it grew since the check
        raise RowError("image_too_large", f"{path}: more than {limits.max_bytes} bytes")
    return data


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
    licence: str = "",
    columns: Columns = Columns(),
    allowed_roots: tuple[Path, ...] = (),
    chunk_size: int = 64,
    on_row: Callable[[], None] = lambda: None,
    retries: int = 5,
) -> IngestReport:
    """Check, store and record every row as a task of dataset `origin` (licence `licence`, an
    SPDX id or ""); objects are written before the rows that point at them."""
    report = IngestReport()
    chunk: list[PreparedTask] = []
    for raw in rows:
        try:
            prepared = prepare_row(raw, columns=columns, limits=limits, allowed_roots=allowed_roots)
        except RowError as exc:
            report.problems.append(RowProblem(raw.line, exc.reason, exc.detail, raw.turn))
        else:
            chunk.append(prepared)
        if len(chunk) >= chunk_size:
            _write_chunk(chunk, session_factory, store, origin, licence, report, retries)
            chunk = []
        on_row()
    if chunk:
        _write_chunk(chunk, session_factory, store, origin, licence, report, retries)
    return report


def _write_chunk(
    chunk: list[PreparedTask],
    session_factory: sessionmaker[Session],
    store: ObjectStore,
    origin: str,
    licence: str,
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
        if pair not in known and pair not in fresh:
            fresh[pair] = task
    for task in fresh.values():  # object first, row second
        put_content(store, task.png, prefix=SOURCE_PREFIX, ext="png", content_type="image/png")

    def insert() -> tuple[int, int]:
        with session_factory() as session, session.begin():
            inserted = insert_ignore(
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
            # Every task of the chunk, new or known, records this dataset once.
            ids = session.scalars(
                select(Task.id).where(tuple_(Task.source_key, Task.instruction_sha256).in_(pairs))
            ).all()
            sources = insert_ignore(
                session,
                TaskSource,
                [{"task_id": i, "dataset": origin, "licence": licence} for i in ids],
                conflict_columns=["task_id", "dataset"],
            )
            return inserted, sources

    inserted, sources = with_db_retry(insert, retries=retries, what="the task insert")
    report.ingested += inserted
    # Rows of this chunk that were known, repeated, or inserted meanwhile by another ingest.
    report.duplicate += len(chunk) - inserted
    report.sources_added += sources - inserted
