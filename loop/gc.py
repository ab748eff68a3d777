"""Garbage collection of objects no row references (DESIGN.md, invariant 2: object first, row
second, so a crash between the two leaves an unreferenced object, never a dangling row)."""

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from loop.ingest import SOURCE_PREFIX
from store.models import Attempt, Task
from store.objects import ObjectStore
from workers.stages import EDIT_PREFIX


def referenced_keys(session: Session) -> set[str]:
    """Every image key a task or an attempt points at."""
    sources = session.scalars(select(Task.source_key))
    outputs = session.scalars(select(Attempt.output_key).where(Attempt.output_key.is_not(None)))
    inputs = session.scalars(select(Attempt.input_key))
    return {*sources, *outputs, *inputs}


def collect_garbage(
    factory: sessionmaker[Session],
    store: ObjectStore,
    *,
    grace: timedelta = timedelta(hours=1),
    dry_run: bool = False,
) -> list[str]:
    """Delete source and edit images that no row references and that are older than `grace`.

    The grace period spares objects whose row is still being written (a worker between its
    object write and its commit). Returns the keys deleted (or that would be, with `dry_run`).
    """
    with factory() as session:
        keep = referenced_keys(session)
    cutoff = datetime.now(UTC) - grace
    garbage = []
    for prefix in (f"{SOURCE_PREFIX}/", f"{EDIT_PREFIX}/"):
        for key in store.list(prefix):
            if key in keep:
                continue
            modified = store.stat(key).modified
            if modified is not None and modified > cutoff:
                continue
            garbage.append(key)
    if not dry_run:
        for key in garbage:
            store.delete(key)
    return garbage
