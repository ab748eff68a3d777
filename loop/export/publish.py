"""Publishing an export safely: stage, verify, move into the target, manifest last.

A target is a local folder (`OUT`) or a prefix of the object store (`store:NAME` →
`exports/NAME/`). Files are written to a staging place first: a hidden folder inside `OUT`
(`.editloop-staging-<kind>-<export id>/`, locked while its export runs: an export never writes
outside its target), or a local scratch folder uploaded under `exports/.staging/NAME-<export
id>/`. Once verified, the target's old manifest goes first, then its old files, then the new files
move in, and `manifest.json` (rows per file, size and SHA-256 of every file) is written last. So a
target holds a manifest only when it holds the whole export that manifest lists: a crash at any
point leaves no half export that looks finished. What a crash leaves in staging is removed by the
next export into the same folder, or by `editloop gc` (store prefixes older than the grace).
"""

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any, Protocol

from loop.export.writers.base import WrittenFile
from store.keys import EXPORT_PREFIX, EXPORT_STAGING_PREFIX
from store.objects import ObjectNotFound, ObjectStore

MANIFEST_NAME = "manifest.json"
MANIFEST_MARK = "editloop_export"  # the manifest key that says "an editloop export"
STAGING_NAME = re.compile(r"\.editloop-staging-(?P<kind>[a-z]+)-(?P<id>\d+)")
LOCK_NAME = ".lock"
STORE_SCHEME = "store:"
STORE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class ExportRefused(ValueError):
    """The target holds something an export must not replace, or another export writes to it."""


class PublishError(RuntimeError):
    """What was staged or uploaded differs from what was written."""


def manifest_bytes(
    *,
    kind: str,
    export_format: str,
    files: list[WrittenFile],
    splits: dict[str, int],
    skipped: int,
    export_filter: dict[str, Any],
) -> bytes:
    """The manifest: what the export is, the filter that made it, and every file with its rows,
    size and SHA-256. No dates, so the same export gives the same bytes."""
    manifest = {
        MANIFEST_MARK: 1,
        "kind": kind,
        "format": export_format,
        "rows": sum(splits.values()),
        "splits": splits,
        "skipped": skipped,
        "filter": export_filter,
        "files": [asdict(f) for f in sorted(files, key=lambda f: f.path)],
    }
    return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()


def manifest_kind(data: bytes) -> str | None:
    """The export kind a manifest names, or None when it is not an editloop export manifest."""
    try:
        manifest = json.loads(data)
    except ValueError:
        return None
    if not isinstance(manifest, dict) or manifest.get(MANIFEST_MARK) != 1:
        return None
    kind = manifest.get("kind")
    return kind if isinstance(kind, str) else None


def check_staged(folder: Path, files: list[WrittenFile]) -> None:
    """PublishError unless `folder` holds exactly `files` (the lock aside) with their sizes. (The
    SHA-256 were taken of the finished files; the rows are read back by each format's library.)"""
    listed = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    expected = {f.path for f in files}
    if listed - {LOCK_NAME} != expected:
        missing, extra = sorted(expected - listed), sorted(listed - expected - {LOCK_NAME})
        raise PublishError(f"{folder}: missing {missing[:5]}, unexpected {extra[:5]}")
    for entry in files:
        if (folder / entry.path).stat().st_size != entry.size:
            raise PublishError(f"{folder / entry.path}: differs from what was written")


class Target(Protocol):
    """Where an export goes."""

    location: str  # what the `export` row records: an absolute path, or `exports/NAME`

    def check(self, kind: str, *, overwrite: bool) -> None:
        """ExportRefused unless the target is new, empty, or an earlier export of `kind` (or
        `overwrite`); nothing is written."""

    def begin(self, kind: str, export_id: int) -> tuple[Path, list[int]]:
        """A fresh local staging folder for the writers, and the ids of crashed exports whose
        leftovers were removed."""

    def publish(self, files: list[WrittenFile], manifest: bytes) -> None:
        """Replace the target's contents with the staged files, the manifest last."""

    def abandon(self) -> None:
        """Remove what this export staged (best effort: it may be running after a failure)."""


def _try_lock(path: Path) -> IO[bytes] | None:
    """An open file holding an exclusive lock on `path`, or None when another process holds it."""
    handle = path.open("ab")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class LocalTarget:
    """A folder on this machine; staging is a locked hidden folder inside it.

    `protected` are paths the folder must never be or contain (the working folder, the home
    folder, editloop's own data): replacing the folder's contents would delete them.
    """

    def __init__(self, out: Path, protected: tuple[Path, ...] = ()) -> None:
        self.out = Path(out).absolute()
        self.location = str(self.out)
        self.protected = tuple(Path(p).absolute() for p in (*protected, Path.home(), Path("/")))
        self.staging: Path | None = None
        self._lock: IO[bytes] | None = None

    def _leftovers(self) -> list[tuple[Path, re.Match[str]]]:
        if not self.out.is_dir():
            return []
        found = [(p, STAGING_NAME.fullmatch(p.name)) for p in sorted(self.out.iterdir())]
        return [(p, m) for p, m in found if m is not None and p != self.staging]

    def check(self, kind: str, *, overwrite: bool) -> None:
        resolved = self.out.resolve()
        for path in self.protected:
            if resolved == path.resolve() or resolved in path.resolve().parents:
                raise ExportRefused(
                    f"{self.out} holds {path}, which an export would delete; export into a "
                    "folder of its own"
                )
        for path, match in self._leftovers():
            if not path.is_dir():
                continue
            lock = _try_lock(path / LOCK_NAME)
            if lock is None:
                raise ExportRefused(
                    f"{self.out}: export {match['id']} is writing into it now; wait for it to "
                    "end, or export somewhere else"
                )
            lock.close()
        if overwrite or not self.out.exists():
            return
        if not self.out.is_dir():
            raise ExportRefused(
                f"{self.out} is a file, not an export folder; pass --overwrite to replace it"
            )
        manifest = self.out / MANIFEST_NAME
        earlier = manifest_kind(manifest.read_bytes()) if manifest.is_file() else None
        leftovers = {match["kind"] for _, match in self._leftovers()}
        others = [p for p in self.out.iterdir() if not STAGING_NAME.fullmatch(p.name)]
        # An earlier export of this kind, an empty folder, or what a crashed export of this kind
        # left (its staging folder, and maybe part of its files) may be replaced.
        if earlier == kind or leftovers == {kind} or not (others or leftovers):
            return
        what = f"an export of {earlier}" if earlier else "files that are not an editloop export"
        raise ExportRefused(
            f"{self.out} holds {what}, not an earlier {kind} export; pass --overwrite to "
            "replace its contents, or choose another folder"
        )

    def begin(self, kind: str, export_id: int) -> tuple[Path, list[int]]:
        if self.out.exists() and not self.out.is_dir():
            self.out.unlink()  # a file, and `check` allowed replacing it (--overwrite)
        self.out.mkdir(parents=True, exist_ok=True)
        crashed = []
        for path, match in self._leftovers():
            _remove(path)
            crashed.append(int(match["id"]))
        self.staging = self.out / f".editloop-staging-{kind}-{export_id}"
        self.staging.mkdir()
        self._lock = _try_lock(self.staging / LOCK_NAME)
        return self.staging, crashed

    def publish(self, files: list[WrittenFile], manifest: bytes) -> None:
        assert self.staging is not None, "begin() first"
        (self.out / MANIFEST_NAME).unlink(missing_ok=True)  # the old export stops looking whole
        for path in list(self.out.iterdir()):
            if path != self.staging:
                _remove(path)
        # The folder is empty but for staging, which holds exactly `files` (check_staged): moving
        # its top-level entries moves them all (one rename for a folder of a thousand images).
        for entry in sorted(self.staging.iterdir()):
            if entry.name != LOCK_NAME:
                os.replace(entry, self.out / entry.name)
        staged_manifest = self.staging / MANIFEST_NAME
        staged_manifest.write_bytes(manifest)
        os.replace(staged_manifest, self.out / MANIFEST_NAME)
        self.abandon()

    def abandon(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def store_target_name(out: str) -> str | None:
    """NAME of a `store:NAME` target, or None for a local path; ValueError for a bad name."""
    if not out.startswith(STORE_SCHEME):
        return None
    name = out.removeprefix(STORE_SCHEME)
    if not STORE_NAME.fullmatch(name):
        raise ValueError(
            f"{out!r}: name a store export with letters, digits, '.', '_' and '-' "
            "(e.g. store:reflections-v1)"
        )
    return name


class StoreTarget:
    """`exports/NAME/` in the object store; staged locally, then under `exports/.staging/`."""

    def __init__(self, store: ObjectStore, name: str) -> None:
        self.store = store
        self.name = name
        self.final = f"{EXPORT_PREFIX}/{name}"
        self.location = self.final
        self.scratch: Path | None = None
        self.staging_prefix: str | None = None

    def check(self, kind: str, *, overwrite: bool) -> None:
        if overwrite:
            return
        try:
            earlier = manifest_kind(self.store.get(f"{self.final}/{MANIFEST_NAME}"))
        except ObjectNotFound:
            earlier = None
        if earlier == kind or not any(True for _ in self.store.list(f"{self.final}/")):
            return
        what = f"an export of {earlier}" if earlier else "objects that are not an editloop export"
        raise ExportRefused(
            f"store:{self.name} ({self.final}/) holds {what}, not an earlier {kind} export; pass "
            "--overwrite to replace it, or choose another name"
        )

    def begin(self, kind: str, export_id: int) -> tuple[Path, list[int]]:
        self.scratch = Path(tempfile.mkdtemp(prefix="editloop-export-"))
        self.staging_prefix = f"{EXPORT_STAGING_PREFIX}/{self.name}-{export_id}"
        return self.scratch, []

    def _check_uploaded(self, prefix: str, files: list[WrittenFile], *, content: bool) -> None:
        expected = {f"{prefix}/{f.path}": f for f in files}
        listed = set(self.store.list(f"{prefix}/"))
        if listed != set(expected):
            missing, extra = sorted(set(expected) - listed), sorted(listed - set(expected))
            raise PublishError(f"{prefix}: missing {missing[:5]}, unexpected {extra[:5]}")
        for key, entry in expected.items():
            if self.store.stat(key).size != entry.size:
                raise PublishError(f"{key}: size differs from the file written")
            if content and hashlib.sha256(self.store.get(key)).hexdigest() != entry.sha256:
                raise PublishError(f"{key}: checksum differs from the file written")

    def publish(self, files: list[WrittenFile], manifest: bytes) -> None:
        assert self.scratch is not None and self.staging_prefix is not None, "begin() first"
        for entry in files:
            self.store.put(
                f"{self.staging_prefix}/{entry.path}", (self.scratch / entry.path).read_bytes()
            )
        self._check_uploaded(self.staging_prefix, files, content=True)
        self.store.delete(f"{self.final}/{MANIFEST_NAME}")  # the old export stops looking whole
        keep = {f"{self.final}/{f.path}" for f in files}
        for key in list(self.store.list(f"{self.final}/")):
            if key not in keep:
                self.store.delete(key)
        for entry in files:
            self.store.put(f"{self.final}/{entry.path}", (self.scratch / entry.path).read_bytes())
        self._check_uploaded(self.final, files, content=False)
        self.store.put(f"{self.final}/{MANIFEST_NAME}", manifest, "application/json")
        self.abandon()

    def abandon(self) -> None:
        if self.staging_prefix is not None:
            with contextlib.suppress(Exception):  # the store may be down: gc sweeps it later
                for key in list(self.store.list(f"{self.staging_prefix}/")):
                    self.store.delete(key)
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
