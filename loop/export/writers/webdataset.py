"""WebDataset: `<split>-NNNNNN.tar` shards of at most `shard_bytes`, each row three members
(`KEY.source.png`, `KEY.edited.png`, `KEY.json`), with fixed mtime, owner and mode so that the
same rows give the same bytes."""

import io
import tarfile
from pathlib import Path
from typing import Any

from loop.export.columns import IMAGE, IMAGE_COLUMNS, Column
from loop.export.writers.base import HashingFile, WrittenFile, json_record

BLOCK = tarfile.BLOCKSIZE  # 512: a header, and the unit data is padded to
END = 2 * BLOCK  # the two zero blocks that end an archive


def member_size(data_size: int) -> int:
    """Bytes a regular member with a short name takes in a tar archive."""
    return BLOCK + -(-data_size // BLOCK) * BLOCK


def archive_size(content: int) -> int:
    """Bytes of an archive whose members take `content`: end blocks, padded to a record."""
    record = tarfile.RECORDSIZE
    return -(-(content + END) // record) * record


class WebDatasetWriter:
    """Tar shards; a row never spans two shards, and a shard grows past `shard_bytes` only when
    one row alone is larger."""

    def __init__(self, folder: Path, columns: tuple[Column, ...], *, shard_bytes: int) -> None:
        self.folder = folder
        self.columns = tuple(c for c in columns if c.dtype != IMAGE)  # the JSON member's
        self.shard_bytes = shard_bytes
        self.shards: dict[str, list[tuple[str, int]]] = {}  # split → [(name, rows)]
        self.written: list[WrittenFile] = []
        self.open: dict[str, tuple[tarfile.TarFile, int]] = {}  # split → (archive, content bytes)
        self.files: dict[str, HashingFile] = {}  # split → the archive's file (left open by tarfile)

    def write(self, split: str, values: dict[str, Any], images: dict[str, bytes]) -> None:
        members = [
            *((f"{values['id']}.{IMAGE_COLUMNS[name]}", images[name]) for name in IMAGE_COLUMNS),
            (f"{values['id']}.json", json_record(self.columns, values)),
        ]
        size = sum(member_size(len(data)) for _, data in members)
        archive, content = self.open.get(split, (None, 0))
        if archive is not None and archive_size(content + size) > self.shard_bytes:
            self._close(split)
            archive = None
        if archive is None:
            shards = self.shards.setdefault(split, [])
            name = f"{split}-{len(shards):06d}.tar"
            shards.append((name, 0))
            # Closed when the shard is full or in close(): it outlives this call.
            self.files[split] = HashingFile(self.folder / name)
            archive = tarfile.open(  # noqa: SIM115
                fileobj=self.files[split], mode="w", format=tarfile.USTAR_FORMAT
            )
            content = 0
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            archive.addfile(info, io.BytesIO(data))
        self.open[split] = (archive, content + size)
        name, rows = self.shards[split][-1]
        self.shards[split][-1] = (name, rows + 1)

    def _close(self, split: str) -> None:
        archive, _ = self.open.pop(split)
        archive.close()
        file = self.files.pop(split)
        file.close()
        name, rows = self.shards[split][-1]
        self.written.append(file.entry(name, rows))

    def close(self) -> list[WrittenFile]:
        for split in list(self.open):
            self._close(split)
        return sorted(self.written, key=lambda f: f.path)


def count_rows(path: Path) -> int:
    """Rows of a shard: its JSON members."""
    with tarfile.open(path) as archive:
        return sum(1 for name in archive.getnames() if name.endswith(".json"))
