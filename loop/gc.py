"""Garbage collection of objects no row references (docs/design.md, invariant 2: object first, row
second, so a crash between the two leaves an unreferenced object, never a dangling row)."""

from collections import defaultdict
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from store.keys import EDIT_PREFIX, EXPORT_STAGING_PREFIX, SOURCE_PREFIX, STAGING_PREFIX
from store.models import Attempt, Task
from store.objects import ObjectStore


def referenced_keys(session: Session) -> set[str]:
    """Every image key a task or an attempt points at."""
    sources = session.scalars(select(Task.source_key))
    outputs = session.scalars(select(Attempt.output_key).where(Attempt.output_key.is_not(None)))
    inputs = session.scalars(select(Attempt.input_key))
    return {*sources, *outputs, *inputs}


def _older(store: ObjectStore, key: str, cutoff: datetime) -> bool:
    modified = store.stat(key).modified
    return modified is None or modified <= cutoff


def stale_staged_keys(
    store: ObjectStore, cutoff: datetime, prefix: str = STAGING_PREFIX
) -> list[str]:
    """The keys of every staged upload under `prefix` (checkpoints by default, or dataset exports)
    whose newest object is older than `cutoff`.

    No row ever points under a staging prefix (a published checkpoint or export lives under its
    final prefix), so only age matters. It is judged per upload (`<version>-<nonce>/`,
    `<name>-<export id>/`), by its newest object: a large upload still in progress, or being
    verified, has old first files too.
    """
    uploads: dict[str, list[str]] = defaultdict(list)
    for key in store.list(f"{prefix}/"):
        uploads[key.removeprefix(f"{prefix}/").split("/", 1)[0]].append(key)
    return [
        key
        for keys in uploads.values()
        if all(_older(store, key, cutoff) for key in keys)
        for key in keys
    ]


def collect_garbage(
    factory: sessionmaker[Session],
    store: ObjectStore,
    *,
    grace: timedelta = timedelta(hours=1),
    dry_run: bool = False,
) -> list[str]:
    """Delete source and edit images that no row references, and staged checkpoint and export
    uploads, older than `grace`.

    The grace period spares objects whose row is still being written (a worker between its
    object write and its commit) and uploads still being published. Returns the keys deleted
    (or that would be, with `dry_run`).
    """
    with factory() as session:
        keep = referenced_keys(session)
    cutoff = datetime.now(UTC) - grace
    garbage = []
    for prefix in (f"{SOURCE_PREFIX}/", f"{EDIT_PREFIX}/"):
        for key in store.list(prefix):
            if key in keep:
                continue
            if _older(store, key, cutoff):
                garbage.append(key)
    # A publish that crashed before its `finally` leaves its staged upload behind. Left alone on
    # purpose: final prefixes (`checkpoints/<version>/`) that no checkpoint row names, although a
    # crash between publish's final upload and its row leaves one. Versions are content
    # addressed, so the retry of that very job re-uploads the same keys before it commits its
    # row: a sweep that saw a key as old just before the retry rewrote it would delete it just
    # after, and the row would point at a missing file (invariant 4). Staged uploads carry a fresh
    # nonce per try, so nothing writes under an old one again.
    garbage.extend(stale_staged_keys(store, cutoff))
    # The same for dataset exports: each try stages under its own export id.
    garbage.extend(stale_staged_keys(store, cutoff, EXPORT_STAGING_PREFIX))
    if not dry_run:
        for key in garbage:
            store.delete(key)
    return garbage
