"""JSONL: `<split>.jsonl`, one JSON object per row, whose image columns are paths of PNG files
beside it (`images/ab/<sha256>.png`, content-addressed: an image used twice is written once)."""

import hashlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from loop.export.columns import IMAGE_COLUMNS, Column
from loop.export.writers.base import HashingFile, WrittenFile, json_record

IMAGE_FOLDER = "images"


class JsonlWriter:
    """`<split>.jsonl` written in order; image files written by a few threads meanwhile (a file
    each: creating them, not the bytes, is what costs)."""

    def __init__(self, folder: Path, columns: tuple[Column, ...], *, shard_bytes: int) -> None:
        self.folder = folder
        self.columns = columns
        self.handles: dict[str, HashingFile] = {}
        self.rows: dict[str, int] = {}
        self.images: dict[str, WrittenFile] = {}  # the manifest lists every file anyway
        self.folders: set[Path] = set()
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="export-images")
        self.pending: deque[Future[None]] = deque()

    def _put_image(self, relative: str, data: bytes, digest: str) -> None:
        path = self.folder / relative
        if path.parent not in self.folders:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.folders.add(path.parent)
        self.images[relative] = WrittenFile(relative, len(data), digest)
        self.pending.append(self.pool.submit(path.write_bytes, data))
        while len(self.pending) > 64:  # bounded; a failed write raises here
            self.pending.popleft().result()

    def write(self, split: str, values: dict[str, Any], images: dict[str, bytes]) -> None:
        paths = {}
        for name in IMAGE_COLUMNS:
            data = images[name]
            digest = hashlib.sha256(data).hexdigest()
            relative = f"{IMAGE_FOLDER}/{digest[:2]}/{digest}.png"
            paths[name] = relative
            if relative not in self.images:
                self._put_image(relative, data, digest)
        if split not in self.handles:
            self.handles[split] = HashingFile(self.folder / f"{split}.jsonl")
            self.rows[split] = 0
        self.handles[split].write(json_record(self.columns, values | paths) + b"\n")
        self.rows[split] += 1

    def close(self) -> list[WrittenFile]:
        while self.pending:
            self.pending.popleft().result()
        self.pool.shutdown()
        files = []
        for split, handle in self.handles.items():
            handle.close()
            files.append(handle.entry(f"{split}.jsonl", self.rows[split]))
        self.handles = {}
        return sorted([*files, *self.images.values()], key=lambda f: f.path)


def count_rows(path: Path) -> int:
    """Rows of a JSONL file: its lines."""
    with path.open("rb") as handle:
        return sum(1 for _ in handle)
