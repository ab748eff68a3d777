"""Reading edit tasks from the layouts datasets come in, as raw rows for `loop.ingest`.

Layouts (`--layout auto` picks by the file):

- `editloop`: a JSONL file (or a folder holding `instructions.jsonl`) whose rows point to images
  relative to it, `{"image": "img/001.png", "instruction": "remove the cup", "edit_type": ...}`;
  a Parquet file or a saved Hugging Face `datasets` folder with the same columns (the image as
  bytes, a path, or a `datasets.Image` feature); `Columns` renames the three fields.
- `imgedit`: ImgEdit's benchmark JSON, an object of `{"id": <image path>, "prompt": ...,
  "edit_type": ...}` records (ImgEdit's `adjust`/`compose` are alter/hybrid in editloop's taxonomy).
- `seed`: SEED-Data-Edit's Parquet: `source_image` with `instruction` (+ `target_image`), or a
  multi-turn row `instruction_1`/`edit_image_1` ... `instruction_N`/`edit_image_N`, split into one
  task per turn (turn k edits turn k-1's image; the dataset's own result stays in the metadata).

Readers only parse: every check of a row's content is `loop.ingest.prepare_row`'s.
"""

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LAYOUTS = ("auto", "editloop", "imgedit", "seed")
_SEED_TURN = re.compile(r"^instruction_(\d+)$")


@dataclass(frozen=True)
class Columns:
    """Which fields of a row hold the image, the instruction and the edit type."""

    image: str = "image"
    instruction: str = "instruction"
    edit_type: str = "edit_type"


@dataclass(frozen=True)
class RawRow:
    """One row as read from the input, before any check; `problem` is set when it is unreadable.

    `base_dir` is the folder relative image paths are read from; `turn` numbers the turns of a
    multi-turn row (each turn is a task of its own)."""

    line: int
    record: dict[str, Any]
    base_dir: Path | None = None
    problem: str | None = None
    turn: int | None = None


def read_rows(
    path: Path,
    *,
    columns: Columns = Columns(),
    layout: str = "auto",
    image_root: Path | None = None,
) -> tuple[Iterator[RawRow], int | None]:
    """The rows of `path` in `layout`, with their count when it is known up front (progress bar).

    Rows come out with the fields `columns` names; `image_root` is the folder relative image
    paths are read from (default: the file's folder). ValueError says what is wrong with `path`.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: choose one of {', '.join(LAYOUTS)}")
    path = Path(path)
    if path.is_dir():
        if (path / "instructions.jsonl").is_file():
            return read_rows(
                path / "instructions.jsonl", columns=columns, layout=layout, image_root=image_root
            )
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            return _read_dataset_folder(path, columns)
        raise ValueError(
            f"{path} is a folder without instructions.jsonl and is not a saved datasets folder"
        )
    if not path.is_file():
        raise ValueError(f"{path}: no such file or folder")
    base = image_root or path.parent
    if path.suffix == ".jsonl" and layout in ("auto", "editloop"):
        return _read_jsonl(path, base)
    if path.suffix == ".json" and layout in ("auto", "imgedit"):
        return _read_imgedit_json(path, base, columns)
    if path.suffix == ".parquet" and layout in ("auto", "editloop", "seed"):
        return _read_parquet(path, base, columns, layout)
    raise ValueError(
        f"{path}: expected a .jsonl, .json (ImgEdit) or .parquet file, or a folder "
        f"(layout {layout})"
    )


def _read_jsonl(path: Path, base_dir: Path) -> tuple[Iterator[RawRow], int]:
    lines = path.read_bytes().split(b"\n")

    def rows() -> Iterator[RawRow]:
        for number, data in enumerate(lines, start=1):
            if not data.strip():
                continue
            try:
                line = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                problem = f"invalid UTF-8 at byte {exc.start} of the line"
                yield RawRow(number, {}, base_dir, problem=problem)
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield RawRow(number, {}, base_dir, problem=f"malformed JSON ({exc.msg})")
                continue
            if not isinstance(record, dict):
                problem = "malformed JSON (a row must be an object)"
                yield RawRow(number, {}, base_dir, problem=problem)
                continue
            yield RawRow(number, record, base_dir)

    return rows(), sum(1 for line in lines if line.strip())


def _read_imgedit_json(
    path: Path, base_dir: Path, columns: Columns
) -> tuple[Iterator[RawRow], int]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON file ({exc})") from None
    records = list(data.values()) if isinstance(data, dict) else data
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path}: expected ImgEdit's layout, an object of records")
    if records and not any("prompt" in r and "id" in r for r in records):
        raise ValueError(
            f"{path}: no record has ImgEdit's `id` and `prompt` fields; for editloop's own rows "
            "write JSONL (one object per line)"
        )

    def rows() -> Iterator[RawRow]:
        for number, record in enumerate(records, start=1):
            mapped = {k: v for k, v in record.items() if k not in ("id", "prompt", "edit_type")}
            mapped[columns.image] = record.get("id")
            mapped[columns.instruction] = record.get("prompt")
            mapped[columns.edit_type] = record.get("edit_type")
            yield RawRow(number, mapped, base_dir)

    return rows(), len(records)


def _read_parquet(
    path: Path, base_dir: Path, columns: Columns, layout: str
) -> tuple[Iterator[RawRow], int]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file it cannot read
        raise ValueError(f"{path}: not a Parquet file ({exc})") from None
    names = set(parquet.schema_arrow.names)
    turns = sorted(int(m.group(1)) for name in names if (m := _SEED_TURN.match(name)))
    seed = "source_image" in names and ("instruction" in names or turns)
    if layout == "seed" or (layout == "auto" and seed):
        if not seed:
            raise ValueError(
                f"{path}: SEED-Data-Edit's layout needs `source_image` and `instruction` (or "
                f"`instruction_1`, ...); its columns are {sorted(names)}"
            )
        return _seed_rows(parquet, base_dir, columns, turns), parquet.metadata.num_rows
    _require_columns(path, names, columns)

    def rows() -> Iterator[RawRow]:
        for number, record in enumerate(_records(parquet), start=1):
            yield RawRow(number, record, base_dir)

    return rows(), parquet.metadata.num_rows


def _records(parquet: Any) -> Iterator[dict[str, Any]]:
    for batch in parquet.iter_batches(batch_size=64):
        yield from batch.to_pylist()


def _seed_rows(
    parquet: Any, base_dir: Path, columns: Columns, turns: list[int]
) -> Iterator[RawRow]:
    for number, record in enumerate(_records(parquet), start=1):
        if not turns:
            mapped = {k: v for k, v in record.items() if k not in ("source_image", "instruction")}
            mapped[columns.image] = record.get("source_image")
            mapped[columns.instruction] = record.get("instruction")
            yield RawRow(number, mapped, base_dir)
            continue
        previous = record.get("source_image")
        for turn in turns:
            instruction = record.get(f"instruction_{turn}")
            result = record.get(f"edit_image_{turn}")
            if instruction is None and result is None:
                break  # this row has fewer turns than the widest row of the file
            mapped = {columns.image: previous, columns.instruction: instruction}
            mapped["target_image"] = result if isinstance(result, str) else None
            yield RawRow(number, mapped, base_dir, turn=turn)
            previous = result


def _read_dataset_folder(path: Path, columns: Columns) -> tuple[Iterator[RawRow], int]:
    from datasets import Image as ImageFeature
    from datasets import load_from_disk

    dataset = load_from_disk(str(path))
    if not hasattr(dataset, "features"):  # a DatasetDict: the user must pick a split
        splits = ", ".join(dataset)
        raise ValueError(f"{path} holds several splits ({splits}); give one split's folder")
    _require_columns(path, set(dataset.features), columns)
    # Undecoded images come back as {"bytes", "path"} so that our own gate decodes them.
    for name, feature in dataset.features.items():
        if isinstance(feature, ImageFeature):
            dataset = dataset.cast_column(name, ImageFeature(decode=False))

    def rows() -> Iterator[RawRow]:
        for number, record in enumerate(dataset, start=1):
            yield RawRow(number, dict(record), path)

    return rows(), len(dataset)


def _require_columns(path: Path, names: set[str], columns: Columns) -> None:
    """Refuse a table whose image or instruction column is missing, before reading any row."""
    for field, option in ((columns.image, "image"), (columns.instruction, "instruction")):
        if field not in names:
            raise ValueError(
                f"{path} has no column {field!r} (its columns: {', '.join(sorted(names))}); "
                f"name the {option} column with --{option}-column"
            )
