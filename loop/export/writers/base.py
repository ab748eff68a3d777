"""What every format's writer does: take rows split by split, then list the files it wrote."""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from loop.export.columns import Column


@dataclass(frozen=True)
class WrittenFile:
    """One file of an export: its path in the export, size, SHA-256 and the rows it holds."""

    path: str  # relative, '/'-separated
    size: int
    sha256: str
    rows: int | None = None  # None: not a data file (the card, a histogram, an image)


class DatasetWriter(Protocol):
    """Writes the rows of one export under a folder."""

    def write(self, split: str, values: dict[str, Any], images: dict[str, bytes]) -> None:
        """Add one row to `split`: its column values and the bytes of its image columns."""

    def close(self) -> list[WrittenFile]:
        """Finish every file; the data files written (sorted by path)."""


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in chunks."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def written_file(folder: Path, relative: str, rows: int | None = None) -> WrittenFile:
    """The manifest entry of `folder/relative`."""
    path = folder / relative
    return WrittenFile(relative, path.stat().st_size, file_sha256(path), rows)


class HashingFile:
    """A file opened for writing that hashes what goes through it, so that a data file's SHA-256
    is known when it is closed without reading it back (pyarrow and tarfile write through it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("wb", buffering=1 << 20)
        self._sha256 = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: Any) -> int:
        self._sha256.update(data)
        written = self._file.write(data)
        self.size += written
        return written

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._file.flush()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        if not self.closed:
            self._file.close()
            self.closed = True

    def entry(self, relative: str, rows: int | None) -> WrittenFile:
        """The manifest entry of the closed file."""
        assert self.closed, "close() first"
        return WrittenFile(relative, self.size, self._sha256.hexdigest(), rows)


def json_record(columns: tuple[Column, ...], values: dict[str, Any]) -> bytes:
    """One row as compact UTF-8 JSON, keys in column order (byte-stable for the same values)."""
    record = {column.name: values[column.name] for column in columns}
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
