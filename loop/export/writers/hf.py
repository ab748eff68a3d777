"""Hugging Face Parquet: `data/<split>-NNNNN-of-NNNNN.parquet` shards whose schema carries the
`datasets` features (images as `Image` features holding PNG bytes), so that
`load_dataset("parquet", data_dir=OUT)` and `load_dataset(OUT)` decode them."""

import os
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from loop.export.columns import BOOL, FLOAT, IMAGE, INT, STRING, STRINGS, Column
from loop.export.writers.base import HashingFile, WrittenFile

DATA_FOLDER = "data"
ROWS_PER_GROUP = 100  # small row groups: image rows are large, and the hub's viewer reads groups


def features(columns: tuple[Column, ...]) -> datasets.Features:
    """The `datasets` features of `columns`."""
    kinds = {
        IMAGE: datasets.Image(),
        STRING: datasets.Value("string"),
        INT: datasets.Value("int64"),
        FLOAT: datasets.Value("float64"),
        BOOL: datasets.Value("bool"),
        STRINGS: datasets.List(datasets.Value("string")),
    }
    return datasets.Features({column.name: kinds[column.dtype] for column in columns})


def writer_options(columns: tuple[Column, ...]) -> dict[str, Any]:
    """Parquet options per leaf column. PNG bytes neither compress nor repeat, and their min/max
    say nothing: no compression, dictionary or statistics for them (pyarrow's defaults triple
    the time, for nothing); snappy, dictionaries and statistics for the rest."""
    leaves = []
    for column in columns:
        if column.dtype == IMAGE:
            leaves.append(f"{column.name}.path")
        elif column.dtype == STRINGS:
            leaves.append(f"{column.name}.list.element")
        else:
            leaves.append(column.name)
    images = [f"{c.name}.bytes" for c in columns if c.dtype == IMAGE]
    return {
        "use_dictionary": leaves,
        "write_statistics": leaves,
        "compression": dict.fromkeys(leaves, "snappy") | dict.fromkeys(images, "none"),
    }


def data_files_pattern(split: str) -> str:
    """The glob of a split's shards, as the dataset card's `configs` names them."""
    return f"{DATA_FOLDER}/{split}-*.parquet"


class _Shards:
    """The shards of one split, written one after the other; rows buffered column by column."""

    def __init__(
        self, folder: Path, split: str, schema: pa.Schema, shard_bytes: int, options: dict[str, Any]
    ) -> None:
        self.folder, self.split, self.schema, self.shard_bytes = folder, split, schema, shard_bytes
        self.options = options
        self.done: list[tuple[HashingFile, int]] = []  # (closed temporary file, rows)
        self.writer: pq.ParquetWriter | None = None
        self.file: HashingFile | None = None
        self.rows = 0
        self.bytes = 0
        self.buffer: dict[str, list[Any]] = {name: [] for name in schema.names}
        self.buffered = 0

    def add(self, record: dict[str, Any], size: int) -> None:
        for name, column in self.buffer.items():
            column.append(record[name])
        self.buffered += 1
        self.rows += 1
        self.bytes += size
        if self.buffered >= ROWS_PER_GROUP:
            self._flush()
        if self.bytes >= self.shard_bytes:
            self._end_shard()

    def _flush(self) -> None:
        if not self.buffered:
            return
        if self.writer is None:
            path = self.folder / DATA_FOLDER / f".{self.split}-{len(self.done):05d}.tmp"
            self.file = HashingFile(path)
            self.writer = pq.ParquetWriter(self.file, self.schema, **self.options)
        self.writer.write_table(pa.Table.from_pydict(self.buffer, schema=self.schema))
        self.buffer = {name: [] for name in self.schema.names}
        self.buffered = 0

    def _end_shard(self) -> None:
        self._flush()
        if self.writer is not None and self.file is not None:
            self.writer.close()
            self.file.close()
            self.done.append((self.file, self.rows))
        self.writer, self.file, self.rows, self.bytes = None, None, 0, 0

    def close(self) -> list[WrittenFile]:
        self._end_shard()
        files = []
        for index, (file, rows) in enumerate(self.done):
            name = f"{DATA_FOLDER}/{self.split}-{index:05d}-of-{len(self.done):05d}.parquet"
            os.replace(file.path, self.folder / name)
            files.append(file.entry(name, rows))
        return files


class HfParquetWriter:
    """Parquet shards of about `shard_bytes` of images each, `ROWS_PER_GROUP` rows a row group."""

    def __init__(self, folder: Path, columns: tuple[Column, ...], *, shard_bytes: int) -> None:
        self.folder = folder
        self.columns = columns
        self.images = [c.name for c in columns if c.dtype == IMAGE]
        self.schema = features(columns).arrow_schema
        self.options = writer_options(columns)
        self.shard_bytes = shard_bytes
        self.splits: dict[str, _Shards] = {}
        (folder / DATA_FOLDER).mkdir(parents=True, exist_ok=True)

    def write(self, split: str, values: dict[str, Any], images: dict[str, bytes]) -> None:
        if split not in self.splits:
            self.splits[split] = _Shards(
                self.folder, split, self.schema, self.shard_bytes, self.options
            )
        record = values | {name: {"bytes": images[name], "path": None} for name in self.images}
        self.splits[split].add(record, sum(len(data) for data in images.values()))

    def close(self) -> list[WrittenFile]:
        files = [f for split in sorted(self.splits) for f in self.splits[split].close()]
        return sorted(files, key=lambda f: f.path)


def count_rows(path: Path) -> int:
    """Rows of a Parquet file, read from its footer."""
    return pq.read_metadata(path).num_rows
