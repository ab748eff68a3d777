"""Publishing a trained checkpoint: staged upload, verification, final prefix, then the row.

Invariant 4 (docs/design.md): a checkpoint row is `ready` only when every file is in the store under
its final prefix, byte for byte (sizes and SHA-256 checked), and the checkpoint loads. Steps:

1. upload every file under `checkpoints/.staging/<version>-<nonce>/`, streamed from disk and
   hashed while it is sent;
2. verify the staged copy: the listing is exactly the files with their sizes, and the copy,
   streamed back into a scratch folder (hashed while it arrives), matches byte for byte and
   loads (`verify`);
3. copy the files inside the store to `checkpoints/<version>/` (stale keys of an earlier failed
   try removed; no byte is uploaded twice), then write `checkpoint_manifest.json` (paths, sizes,
   SHA-256) last, and check the listing and sizes;
4. one transaction: the `checkpoint` row (status `ready`) and the job's reference to it.

Files only ever pass through a bounded buffer: a checkpoint of any size (a 12B-parameter
transformer is ~24 GB in bf16) is published without holding a shard in memory.

A failure at any step raises before step 4: objects may be left behind (garbage, never
referenced), a row never points at missing or partial objects. Publishing the same version again
after it succeeded returns the existing row: a retry publishes once.
"""

import contextlib
import hashlib
import json
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from policies.checkpoints import download_prefix
from store.keys import CHECKPOINT_MANIFEST, CHECKPOINT_PREFIX, STAGING_PREFIX
from store.models import Checkpoint, CheckpointRole, CheckpointStatus, TrainJob
from store.objects import ObjectStore, file_sha256


class PublishError(RuntimeError):
    """The uploaded checkpoint does not match the local one, or does not load."""


@dataclass(frozen=True)
class FileEntry:
    """One file of a checkpoint folder."""

    path: str  # relative, '/'-separated
    size: int  # bytes
    sha256: str


def folder_files(folder: Path) -> list[FileEntry]:
    """Every file under `folder` (sorted by path) with its size and SHA-256."""
    if not folder.is_dir():
        raise ValueError(f"folder={str(folder)!r}: no such folder")
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative == CHECKPOINT_MANIFEST:
            raise ValueError(
                f"{folder} already holds a {CHECKPOINT_MANIFEST}: publish the bare folder"
            )
        entries.append(FileEntry(relative, path.stat().st_size, file_sha256(path)))
    if not entries:
        raise ValueError(f"folder={str(folder)!r} is empty: nothing to publish")
    return entries


def content_version(prefix: str, files: list[FileEntry]) -> str:
    """A version name from a prefix and the files' content: same files, same version."""
    digest = hashlib.sha256(json.dumps([asdict(f) for f in files]).encode()).hexdigest()
    return f"{prefix}-{digest[:12]}"


def _check_listing(store: ObjectStore, prefix: str, files: list[FileEntry]) -> None:
    """PublishError unless the keys under `prefix` are exactly `files` with their sizes."""
    expected = {f"{prefix}/{f.path}": f for f in files}
    listed = set(store.list(prefix + "/"))
    if listed != set(expected):
        missing, extra = sorted(set(expected) - listed), sorted(listed - set(expected))
        raise PublishError(f"{prefix}: missing {missing[:5]}, unexpected {extra[:5]}")
    for key, entry in expected.items():
        size = store.stat(key).size
        if size != entry.size:
            raise PublishError(f"{key}: {size} bytes in the store, {entry.size} written")


def _check_digests(prefix: str, files: list[FileEntry], digests: dict[str, str]) -> None:
    """PublishError unless every file's SHA-256 is the one in `digests` (what passed)."""
    for entry in files:
        if digests.get(entry.path) != entry.sha256:
            raise PublishError(f"{prefix}/{entry.path}: checksum differs from the file written")


def _delete_prefix(store: ObjectStore, prefix: str) -> None:
    for key in list(store.list(prefix + "/")):
        store.delete(key)


def publish_checkpoint(
    *,
    factory: sessionmaker[Session],
    store: ObjectStore,
    folder: Path,
    version: str,
    parent_id: int | None,
    kind: str,
    data_filter: dict[str, Any],
    sample_count: int,
    train_metrics: dict[str, Any],
    verify: Callable[[Path], None],
    job_id: int | None = None,
    role: CheckpointRole = CheckpointRole.EDITOR,
) -> int:
    """Upload, verify and record the checkpoint in `folder` as `version` (status `ready`) of the
    model `role`; returns the row id. `verify(local_folder)` raises if the copy does not load."""
    if kind not in ("full", "lora"):
        raise ValueError(f"kind={kind!r}: full or lora")
    with factory() as session:
        existing = session.scalar(select(Checkpoint).where(Checkpoint.version == version))
        if existing is not None:
            return _link_existing(factory, existing, job_id)
    files = folder_files(folder)
    staging = f"{STAGING_PREFIX}/{version}-{uuid.uuid4().hex[:8]}"
    final = f"{CHECKPOINT_PREFIX}/{version}"
    try:
        # 1. staged upload, each file hashed as it is sent
        sent = {
            entry.path: store.fput(f"{staging}/{entry.path}", folder / entry.path)
            for entry in files
        }
        _check_digests(staging, files, sent)
        # 2. verify what the store holds: listing and sizes, then the bytes as they come back,
        # then that it loads
        _check_listing(store, staging, files)
        with tempfile.TemporaryDirectory(prefix="editloop-verify-") as scratch:
            local = Path(scratch) / "checkpoint"
            _check_digests(staging, files, download_prefix(store, staging, local))
            try:
                verify(local)
            except Exception as exc:  # any load failure means: do not publish
                raise PublishError(f"checkpoint {version} does not load: {exc}") from exc
        # 3. final prefix (what a previous failed try left there is replaced), copied inside
        # the store
        for key in store.list(final + "/"):
            if key.removeprefix(final + "/") not in {f.path for f in files}:
                store.delete(key)
        for entry in files:
            store.copy(f"{staging}/{entry.path}", f"{final}/{entry.path}")
        _check_listing(store, final, files)
        manifest = json.dumps({"version": version, "files": [asdict(f) for f in files]}, indent=1)
        store.put(f"{final}/{CHECKPOINT_MANIFEST}", manifest.encode(), "application/json")
    finally:
        # The store may be down: what staging keeps is garbage, never state.
        with contextlib.suppress(Exception):
            _delete_prefix(store, staging)
    # 4. the row, and the job's reference to it, in one transaction
    try:
        with factory() as session, session.begin():
            checkpoint = Checkpoint(
                version=version,
                parent_id=parent_id,
                kind=kind,
                role=CheckpointRole(role).value,
                object_prefix=final,
                status=CheckpointStatus.READY,
                data_filter=data_filter,
                sample_count=sample_count,
                train_metrics=train_metrics,
            )
            session.add(checkpoint)
            session.flush()
            if job_id is not None:
                session.get_one(TrainJob, job_id).checkpoint_id = checkpoint.id
            return checkpoint.id
    except IntegrityError:
        # Another process published the same version meanwhile (same content, same prefix).
        with factory() as session:
            existing = session.scalars(select(Checkpoint).where(Checkpoint.version == version))
            return _link_existing(factory, existing.one(), job_id)


def _link_existing(factory: sessionmaker[Session], checkpoint: Checkpoint, job_id: int | None):
    if checkpoint.status == CheckpointStatus.TRAINING:
        raise PublishError(f"checkpoint {checkpoint.version} exists with status training")
    if job_id is not None:
        with factory() as session, session.begin():
            session.get_one(TrainJob, job_id).checkpoint_id = checkpoint.id
    return checkpoint.id
