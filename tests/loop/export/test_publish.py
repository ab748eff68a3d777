"""Safe publishing: what a target may hold before an export, staging, store prefixes, failures."""

import fcntl
import hashlib
import json
from pathlib import Path

import pytest
from sqlalchemy import select

from loop.export.columns import ExportFormat, ExportKind
from loop.export.pipeline import NothingSelected
from loop.export.publish import (
    ExportRefused,
    LocalTarget,
    StoreTarget,
    manifest_kind,
    store_target_name,
)
from loop.training.pool import PoolFilter
from migrations import upgrade
from store.db import make_engine, make_session_factory
from store.keys import EXPORT_STAGING_PREFIX
from store.models import Export
from store.s3 import S3Store
from tests.loop.export.conftest import ExportEnv, folder_digest, manifest_verifies
from tests.loop.export.seed import seed_export_data


def exports(env: ExportEnv) -> list[tuple[str, str]]:
    with env.factory() as session:
        return [(e.kind, e.status) for e in session.scalars(select(Export).order_by(Export.id))]


def test_a_folder_that_is_not_an_earlier_export_of_the_kind_is_refused(
    env: ExportEnv, tmp_path: Path
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ExportRefused, match="not an editloop export.*--overwrite"):
        env.export(mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and exports(env) == []
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(ExportRefused, match="is a file"):
        env.export(a_file)
    # An export of the other kind is not replaced either ...
    edits = tmp_path / "edits"
    env.export(edits)
    before = folder_digest(edits)
    with pytest.raises(ExportRefused, match="holds an export of edits, not an earlier reflections"):
        env.export(edits, ExportKind.REFLECTIONS)
    assert folder_digest(edits) == before
    # ... but one of the same kind is, in any format; and --overwrite replaces anything.
    env.export(edits, export_format=ExportFormat.JSONL)
    assert json.loads((edits / "manifest.json").read_text())["format"] == "jsonl"
    assert not (edits / "data").exists()
    env.export(mine, ExportKind.REFLECTIONS, overwrite=True)
    assert not (mine / "notes.txt").exists()
    assert manifest_verifies(mine)["kind"] == "reflections"
    env.export(a_file, overwrite=True)
    manifest_verifies(a_file)
    empty = tmp_path / "empty"
    empty.mkdir()
    env.export(empty)
    assert [s for _, s in exports(env)] == ["finished"] * 5


def test_a_filter_selecting_nothing_writes_nothing(env: ExportEnv, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(NothingSelected, match="selects no edits"):
        env.export(out, pool_filter=PoolFilter(origins=("nowhere",), hindsight=False))
    assert not out.exists() and exports(env) == []


def test_a_crashed_exports_leftovers_are_cleared_by_the_next_one(
    env: ExportEnv, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    env.export(out)
    # What a killed export (row 7, still `staging`) left: its staging folder and part of a move.
    with env.factory() as session, session.begin():
        session.add(Export(id=7, kind="edits", format="hf", object_key=str(out), row_count=0,
                           checksum="", status="staging"))  # fmt: skip
    leftover = out / ".editloop-staging-edits-7"
    (leftover / "data").mkdir(parents=True)
    (leftover / "data" / "train-00000-of-00001.parquet").write_bytes(b"half")
    (out / "manifest.json").unlink()
    # While its owner lives (holds the lock), nobody else writes into the folder.
    with (leftover / ".lock").open("ab") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ExportRefused, match="export 7 is writing into it now"):
            env.export(out)
    env.export(out)
    assert not leftover.exists()
    manifest_verifies(out)
    assert exports(env) == [("edits", "finished"), ("edits", "failed"), ("edits", "finished")]


def test_a_failure_midway_leaves_no_finished_row_and_no_staging(
    env: ExportEnv, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    env.export(out)
    before = folder_digest(out)

    class BrokenStore:
        def get(self, key: str) -> bytes:
            raise OSError("disk on fire")

    env.store = BrokenStore()  # type: ignore[assignment]
    with pytest.raises(OSError, match="disk on fire"):
        env.export(out)
    assert folder_digest(out) == before  # the earlier export is untouched
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    assert exports(env) == [("edits", "finished"), ("edits", "failed")]


def test_store_target_on_postgres_and_s3(postgres_url: str, s3_store: S3Store, tmp_path) -> None:
    upgrade(postgres_url)
    env = ExportEnv(make_session_factory(make_engine(postgres_url)), s3_store, None, postgres_url)  # type: ignore[arg-type]
    env.seeded = seed_export_data(env.factory, s3_store)
    assert store_target_name("store:reflections-v1") == "reflections-v1"
    assert store_target_name("out/folder") is None
    with pytest.raises(ValueError, match="name a store export"):
        store_target_name("store:../up")
    result = env.export(StoreTarget(s3_store, "refl"), ExportKind.REFLECTIONS, val_fraction=0.3)
    keys = list(s3_store.list("exports/"))
    assert keys and all(k.startswith("exports/refl/") for k in keys)  # staging removed
    manifest_bytes = s3_store.get("exports/refl/manifest.json")
    manifest = json.loads(manifest_bytes)
    assert manifest_kind(manifest_bytes) == "reflections" and manifest["rows"] == result.rows
    assert {f"exports/refl/{f['path']}" for f in manifest["files"]} | {
        "exports/refl/manifest.json"
    } == set(keys)
    for entry in manifest["files"]:
        data = s3_store.get(f"exports/refl/{entry['path']}")
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert result.checksum == hashlib.sha256(manifest_bytes).hexdigest()
    with env.factory() as session:
        export = session.scalars(select(Export)).one()
        assert (export.status, export.object_key) == ("finished", "exports/refl")
    # Same kind again: replaced, byte for byte the same; another kind: refused.
    env.export(StoreTarget(s3_store, "refl"), ExportKind.REFLECTIONS, val_fraction=0.3)
    assert s3_store.get("exports/refl/manifest.json") == manifest_bytes
    with pytest.raises(ExportRefused, match="store:refl"):
        env.export(StoreTarget(s3_store, "refl"), ExportKind.EDITS)
    assert not list(s3_store.list(f"{EXPORT_STAGING_PREFIX}/"))
    # A local folder export of the same selection holds the same files.
    env.export(tmp_path / "local", ExportKind.REFLECTIONS, val_fraction=0.3)
    local = json.loads((tmp_path / "local" / "manifest.json").read_text())
    assert local["files"] == manifest["files"]


def test_local_target_location_is_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert LocalTarget(Path("out")).location == str(tmp_path / "out")


def test_a_folder_holding_protected_paths_is_refused(env: ExportEnv, tmp_path: Path) -> None:
    precious = tmp_path / "work" / "objects"
    precious.mkdir(parents=True)
    for out in (tmp_path / "work", precious, Path.home()):
        with pytest.raises(ExportRefused, match="which an export would delete"):
            env.export(LocalTarget(out, protected=(precious,)), overwrite=True)
    assert precious.is_dir() and exports(env) == []
