"""Garbage collection deletes exactly the old unreferenced images and stale staged uploads."""

import os
import time
from datetime import timedelta
from pathlib import Path

from loop.gc import collect_garbage
from loop.ingest import ingest_rows
from loop.sources import read_rows
from loop.training.publish import publish_checkpoint
from migrations import upgrade
from policies.checkpoints import fetch_checkpoint
from store.db import make_engine, make_session_factory
from store.images import ImageLimits
from store.keys import CHECKPOINT_PREFIX, EXPORT_PREFIX, EXPORT_STAGING_PREFIX, STAGING_PREFIX
from store.models import Checkpoint
from store.objects import LocalStore, put_content

SAMPLES = Path(__file__).resolve().parents[2] / "loop" / "samples"


def test_only_old_unreferenced_objects_go(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    factory = make_session_factory(make_engine(url))
    store = LocalStore(tmp_path / "objects")
    rows, _ = read_rows(SAMPLES)
    ingest_rows(rows, session_factory=factory, store=store, limits=ImageLimits(), origin="s")
    referenced = set(store.list())
    orphan = put_content(store, b"left by a crash", prefix="edits", ext="png", content_type="x")
    other = put_content(store, b"not ours", prefix="exports", ext="bin", content_type="x")
    # Young orphans may still get their row: a grace period keeps them.
    assert collect_garbage(factory, store, grace=timedelta(hours=1)) == []
    assert collect_garbage(factory, store, grace=timedelta(0), dry_run=True) == [orphan]
    assert store.exists(orphan)
    assert collect_garbage(factory, store, grace=timedelta(0)) == [orphan]
    assert set(store.list()) == referenced | {other}


def age(store: LocalStore, key: str, by: timedelta) -> None:
    """Set an object's modification time `by` into the past."""
    then = time.time() - by.total_seconds()
    os.utime(store.root / key, (then, then))


def test_stale_staged_checkpoint_uploads_go_published_checkpoints_stay(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    factory = make_session_factory(make_engine(url))
    store = LocalStore(tmp_path / "objects")
    folder = tmp_path / "final"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "weights.bin").write_bytes(b"weights")
    (folder / "config.json").write_text("{}")
    checkpoint_id = publish_checkpoint(
        factory=factory, store=store, folder=folder, version="job1-abc", parent_id=None,
        kind="full", data_filter={}, sample_count=1, train_metrics={}, verify=lambda _: None,
    )  # fmt: skip
    with factory() as session:
        prefix = session.get_one(Checkpoint, checkpoint_id).object_prefix
    published = set(store.list(f"{prefix}/"))
    assert published and not list(store.list(f"{STAGING_PREFIX}/"))  # publish cleans up
    # What crashed publishes left: a stale upload, a fresh one, and a large one still uploading
    # (its first file is old, its last one new).
    stale = [f"{STAGING_PREFIX}/job2-def-0badf00d/{name}" for name in ("config.json", "unet/w")]
    fresh = f"{STAGING_PREFIX}/job3-123-cafe0001/config.json"
    uploading = [f"{STAGING_PREFIX}/job4-456-beef0002/{name}" for name in ("a.bin", "b.bin")]
    for key in [*stale, fresh, *uploading]:
        store.put(key, b"partial")
    # A final prefix no row names (a crash between the final upload and the row): kept, since
    # the job's retry rewrites those very keys before its row (see collect_garbage).
    unrecorded = f"{CHECKPOINT_PREFIX}/job5-789/config.json"
    store.put(unrecorded, b"{}")
    two_hours = timedelta(hours=2)
    for key in [*stale, uploading[0], unrecorded, *published]:
        age(store, key, two_hours)

    assert collect_garbage(factory, store, grace=timedelta(hours=1), dry_run=True) == stale
    assert all(store.exists(key) for key in stale)
    assert collect_garbage(factory, store, grace=timedelta(hours=1)) == stale
    assert set(store.list(f"{CHECKPOINT_PREFIX}/")) == {*published, fresh, *uploading, unrecorded}
    # The published checkpoint still fetches whole.
    fetched = fetch_checkpoint(store, prefix, tmp_path / "fetched")
    assert (fetched / "unet" / "weights.bin").read_bytes() == b"weights"


def test_stale_staged_export_uploads_go_published_exports_stay(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    factory = make_session_factory(make_engine(url))
    store = LocalStore(tmp_path / "objects")
    # A published export, what two killed exports staged (one long ago, one just now), and a
    # large upload still in progress (its first shard old, its last one new).
    published = [f"{EXPORT_PREFIX}/refl/{name}" for name in ("README.md", "manifest.json")]
    stale = [f"{EXPORT_STAGING_PREFIX}/refl-3/{name}" for name in ("README.md", "data/a.parquet")]
    fresh = f"{EXPORT_STAGING_PREFIX}/refl-4/README.md"
    uploading = [f"{EXPORT_STAGING_PREFIX}/big-5/{name}" for name in ("a.tar", "b.tar")]
    for key in [*published, *stale, fresh, *uploading]:
        store.put(key, b"bytes")
    for key in [*published, *stale, uploading[0]]:
        age(store, key, timedelta(hours=2))
    assert collect_garbage(factory, store, grace=timedelta(hours=1), dry_run=True) == stale
    assert collect_garbage(factory, store, grace=timedelta(hours=1)) == stale
    assert set(store.list(f"{EXPORT_PREFIX}/")) == {*published, fresh, *uploading}
