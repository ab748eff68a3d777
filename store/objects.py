"""Object storage: one small protocol and the local-folder backend (`store/s3.py`: the S3 one)."""

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO, Protocol, TypeVar

T = TypeVar("T")

# Streams move this much at a time: a file of any size passes through a bounded buffer.
CHUNK_SIZE = 1024 * 1024


class ObjectNotFound(KeyError):
    """The key does not exist in the store."""


class StoreUnavailable(RuntimeError):
    """The store could not be reached after retrying, or is misconfigured."""


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows about one object."""

    key: str
    size: int
    content_type: str | None
    modified: datetime | None = None


class ObjectStore(Protocol):
    """Where images, checkpoints and exports live; every backend behaves the same."""

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Write `data` under `key`, atomically (readers see the old or the new object)."""

    def get(self, key: str) -> bytes:
        """Read the whole object; raises `ObjectNotFound`."""

    def exists(self, key: str) -> bool:
        """Whether `key` exists."""

    def stat(self, key: str) -> ObjectInfo:
        """Size and content type of `key`; raises `ObjectNotFound`."""

    def delete(self, key: str) -> None:
        """Remove `key`; removing a missing key is not an error."""

    def list(self, prefix: str = "") -> Iterator[str]:
        """Every key that starts with `prefix`, recursively, in lexical order."""

    def presigned_get(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        """A URL from which `key` can be read without credentials until `expires`."""

    def fput(self, key: str, path: Path, content_type: str = "application/octet-stream") -> str:
        """Write the file at `path` under `key`, streamed (never whole in memory), atomically;
        returns the SHA-256 (hex) of the bytes sent, hashed while streaming."""

    def fget(self, key: str, path: Path) -> str:
        """Write `key` to the file `path`, streamed, atomically (a temporary file renamed);
        returns the SHA-256 (hex) of the bytes received. Raises `ObjectNotFound`."""

    def copy(self, source: str, key: str) -> None:
        """Copy the object `source` to `key` inside the store (no bytes through this process).
        Raises `ObjectNotFound`."""


class HashingReader:
    """A binary file read through SHA-256: what the uploader reads is what gets hashed."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.digest.update(data)
        return data


def copy_stream(read: Callable[[int], bytes], handle: BinaryIO) -> str:
    """Copy chunks from `read` to `handle` until EOF; the SHA-256 of what was copied."""
    digest = hashlib.sha256()
    while chunk := read(CHUNK_SIZE):
        digest.update(chunk)
        handle.write(chunk)
    return digest.hexdigest()


def write_atomically(path: Path, fill: Callable[[BinaryIO], T]) -> T:
    """Fill a temporary file next to `path` with `fill(handle)`, then rename it to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            result = fill(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return result


def file_sha256(path: Path) -> str:
    """The SHA-256 (hex) of the file at `path`, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def content_key(data: bytes, *, prefix: str, ext: str) -> str:
    """The content address of `data`: `prefix/ab/<sha256>.ext` (two-character fan-out)."""
    digest = hashlib.sha256(data).hexdigest()
    return f"{prefix.strip('/')}/{digest[:2]}/{digest}.{ext.lstrip('.')}"


def put_content(
    store: ObjectStore, data: bytes, *, prefix: str, ext: str, content_type: str
) -> str:
    """Write `data` content-addressed and return its key.

    No existence check first: rewriting the same bytes under the same key is harmless and one
    request cheaper than asking (callers that expect duplicates check their rows instead).
    """
    key = content_key(data, prefix=prefix, ext=ext)
    store.put(key, data, content_type)
    return key


def validate_key(key: str) -> str:
    if not key or key.startswith("/") or ".." in key.split("/") or "\\" in key:
        raise ValueError(f"invalid object key {key!r}: use a relative '/'-separated path")
    return key


class LocalStore:
    """Objects as files under `root`; the embedded default."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write to a temporary file in the same folder, then rename: never a half-written object.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFound(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(key)
        stat = path.stat()
        modified = datetime.fromtimestamp(stat.st_mtime, UTC)
        return ObjectInfo(key=key, size=stat.st_size, content_type=None, modified=modified)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> Iterator[str]:
        keys = (
            path.relative_to(self.root).as_posix()
            for path in self.root.rglob("*")
            if path.is_file() and not path.name.startswith(".tmp-")
        )
        yield from sorted(key for key in keys if key.startswith(prefix))

    def presigned_get(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        if not self.exists(key):
            raise ObjectNotFound(key)
        return self._path(key).as_uri()

    def fput(self, key: str, path: Path, content_type: str = "application/octet-stream") -> str:
        target = self._path(key)
        with Path(path).open("rb") as source:
            return write_atomically(target, lambda handle: copy_stream(source.read, handle))

    def fget(self, key: str, path: Path) -> str:
        try:
            source = self._path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFound(key) from None
        with source:
            return write_atomically(Path(path), lambda handle: copy_stream(source.read, handle))

    def copy(self, source: str, key: str) -> None:
        origin, target = self._path(source), self._path(key)
        if not origin.is_file():
            raise ObjectNotFound(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".tmp-{os.getpid()}-{id(target)}"
        try:
            # A hard link costs no bytes; `put` never writes into an existing file (it renames a
            # new one over it), so the two keys never change each other.
            os.link(origin, tmp)
        except OSError:
            shutil.copyfile(origin, tmp)
        try:
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
