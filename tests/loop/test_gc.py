"""Garbage collection deletes exactly the old unreferenced images."""

from datetime import timedelta
from pathlib import Path

from loop.gc import collect_garbage
from loop.ingest import ingest_rows, read_rows
from migrations import upgrade
from store.db import make_engine, make_session_factory
from store.images import ImageLimits
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
