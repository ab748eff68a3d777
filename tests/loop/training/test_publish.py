"""Publishing a checkpoint: staged, verified, then one `ready` row; failures publish nothing."""

import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from loop.training.publish import PublishError, content_version, folder_files
from loop.training.publish import publish_checkpoint as publish
from migrations import upgrade
from policies.checkpoints import fetch_checkpoint
from store.db import make_engine, make_session_factory
from store.keys import CHECKPOINT_MANIFEST
from store.models import Checkpoint, CheckpointStatus, TrainJob
from store.objects import LocalStore, ObjectStore, StoreUnavailable
from tests.fixtures.services import MotoProcess, TcpProxy, make_s3_store
from tests.fixtures.training import tiny_editor


class InterceptedStore:
    """An object store whose file uploads (`fput`) call `before_put(count, key, path)` first
    (which may stop the server or return another file to send); it counts every upload."""

    def __init__(self, inner: ObjectStore, before_put: Callable[[int, str, Path], Path]) -> None:
        self.inner = inner
        self.before_put = before_put
        self.puts = 0
        self.uploaded_bytes = 0

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.puts += 1
        self.uploaded_bytes += len(data)
        self.inner.put(key, data, content_type)

    def fput(self, key: str, path: Path, content_type: str = "application/octet-stream") -> str:
        self.puts += 1
        path = self.before_put(self.puts, key, path)
        self.uploaded_bytes += path.stat().st_size
        return self.inner.fput(key, path, content_type)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def factory(tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    return make_session_factory(make_engine(url))


def make_verify(model: Path) -> Callable[[Path], None]:
    editor = tiny_editor(model)

    def verify(folder: Path) -> None:
        editor.use_checkpoint("candidate", folder)
        editor.use_base()

    return verify


def publish_args(folder: Path, version: str, verify: Callable[[Path], None]) -> dict[str, Any]:
    return {
        "folder": folder,
        "version": version,
        "parent_id": None,
        "kind": "full",
        "data_filter": {"run_id": 1},
        "sample_count": 12,
        "train_metrics": {"train/loss_last": 0.5},
        "verify": verify,
    }


def rows(factory) -> list[Checkpoint]:  # type: ignore[no-untyped-def]
    with factory() as session:
        return list(session.scalars(select(Checkpoint)))


@pytest.mark.services
def test_publish_uploads_verifies_and_records_one_ready_row(
    db_url: str, tmp_path: Path, tiny_instruct_pix2pix: Path, tiny_full_checkpoint: Path
) -> None:
    upgrade(db_url)
    factory = make_session_factory(make_engine(db_url))
    store = LocalStore(tmp_path / "objects")
    with factory() as session, session.begin():
        job = TrainJob(data_filter={})
        session.add(job)
        session.flush()
        job_id = job.id
    version = content_version("job1", folder_files(tiny_full_checkpoint))
    arguments = publish_args(tiny_full_checkpoint, version, make_verify(tiny_instruct_pix2pix))
    checkpoint_id = publish(factory=factory, store=store, job_id=job_id, **arguments)
    (row,) = rows(factory)
    assert (row.id, row.status, row.version) == (checkpoint_id, CheckpointStatus.READY, version)
    assert row.object_prefix == f"checkpoints/{version}"
    assert (row.sample_count, row.kind, row.data_filter) == (12, "full", {"run_id": 1})
    keys = list(store.list(row.object_prefix + "/"))
    expected = [f"{row.object_prefix}/{f.path}" for f in folder_files(tiny_full_checkpoint)]
    assert sorted(keys) == sorted([*expected, f"{row.object_prefix}/{CHECKPOINT_MANIFEST}"])
    assert not list(store.list("checkpoints/.staging/"))  # the staged copy is gone
    # What the workers fetch loads in the editor.
    folder = fetch_checkpoint(store, row.object_prefix, tmp_path / "cache")
    tiny_editor(tiny_instruct_pix2pix).use_checkpoint(version, folder)
    with factory() as session:
        assert session.get_one(TrainJob, job_id).checkpoint_id == checkpoint_id
    # Publishing the same version again publishes nothing new.
    assert publish(factory=factory, store=store, job_id=job_id, **arguments) == checkpoint_id
    assert len(rows(factory)) == 1


def test_a_checkpoint_that_does_not_load_is_not_published(
    factory, tmp_path: Path, tiny_instruct_pix2pix: Path, tiny_full_checkpoint: Path
) -> None:  # type: ignore[no-untyped-def]
    store = LocalStore(tmp_path / "objects")
    broken = tmp_path / "broken"
    (broken / "unet").mkdir(parents=True)
    (broken / "unet" / "config.json").write_text("{}")
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not weights")
    verify = make_verify(tiny_instruct_pix2pix)
    with pytest.raises(PublishError, match="does not load"):
        publish(factory=factory, store=store, **publish_args(broken, "broken", verify))
    assert rows(factory) == []
    assert not list(store.list("checkpoints/broken/"))


def test_a_corrupted_upload_is_caught_by_its_checksum(
    factory, tmp_path: Path, tiny_full_checkpoint: Path
) -> None:  # type: ignore[no-untyped-def]
    def corrupt(count: int, key: str, path: Path) -> Path:
        # Same size, one byte flipped, in the staged copy of the weights.
        if key.endswith(".safetensors"):
            data = path.read_bytes()
            path = tmp_path / "corrupted.safetensors"
            path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        return path

    store = InterceptedStore(LocalStore(tmp_path / "objects"), corrupt)
    with pytest.raises(PublishError, match="checksum differs"):
        publish(
            factory=factory,
            store=store,  # type: ignore[arg-type]
            **publish_args(tiny_full_checkpoint, "v1", lambda folder: None),
        )
    assert rows(factory) == []


def test_store_down_mid_upload_publishes_nothing_and_a_retry_publishes_once(
    factory, tiny_instruct_pix2pix: Path, tiny_full_checkpoint: Path
) -> None:  # type: ignore[no-untyped-def]
    server = MotoProcess()
    server.start()
    proxy = TcpProxy(server.port)
    proxy.start()
    try:
        s3 = make_s3_store(proxy.endpoint, retries=1, backoff_s=0.05, timeout_s=2.0)

        def stop_at_second(count: int, key: str, path: Path) -> Path:
            if count == 2:  # the upload is half done (one of two files): the endpoint goes away
                proxy.stop()
            return path

        store = InterceptedStore(s3, stop_at_second)
        arguments = publish_args(tiny_full_checkpoint, "v1", make_verify(tiny_instruct_pix2pix))
        with pytest.raises(StoreUnavailable):
            publish(factory=factory, store=store, **arguments)  # type: ignore[arg-type]
        assert rows(factory) == []  # no ready row, nothing that points at the partial upload

        proxy.start()  # the endpoint is back, with what was written before
        assert list(s3.list("checkpoints/.staging/"))  # the partial upload is garbage now
        first = publish(factory=factory, store=s3, **arguments)
        again = publish(factory=factory, store=s3, **arguments)
        assert first == again
        (row,) = rows(factory)
        assert row.status == CheckpointStatus.READY
        with factory() as session:
            count = session.scalar(select(func.count()).select_from(Checkpoint))
        assert count == 1
        files = {f"checkpoints/v1/{f.path}" for f in folder_files(tiny_full_checkpoint)}
        assert files <= set(s3.list("checkpoints/v1/"))
    finally:
        proxy.stop()
        server.stop()


@pytest.mark.services
def test_a_checkpoint_larger_than_the_memory_cap_is_streamed_and_uploaded_once(
    factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A 64 MiB shard is published to S3 (a moto process: only this side is measured) with at
    most 32 MiB of Python allocations, and every byte is uploaded once: the final prefix is a
    copy inside the store, not a second upload."""
    folder = tmp_path / "checkpoint"
    (folder / "transformer").mkdir(parents=True)
    (folder / "transformer" / "config.json").write_text('{"_class_name": "Big"}')
    with (folder / "transformer" / "diffusion_pytorch_model.safetensors").open("wb") as handle:
        for index in range(64):
            handle.write(bytes([index]) * (1024 * 1024))
    files = folder_files(folder)
    seen: list[int] = []

    def verify(local: Path) -> None:  # what a load check sees: the whole shard, streamed back
        seen.append((local / "transformer" / "diffusion_pytorch_model.safetensors").stat().st_size)

    server = MotoProcess()
    server.start()
    try:
        s3 = make_s3_store(server.endpoint, part_size=5 * 1024 * 1024, parallel_uploads=2)
        s3.put("warm-up", b"")  # the bucket, created outside the measurement
        store = InterceptedStore(s3, lambda count, key, path: path)
        arguments = publish_args(folder, "big-v1", verify)
        tracemalloc.start()
        publish(factory=factory, store=store, **arguments)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        manifest = s3.stat(f"checkpoints/big-v1/{CHECKPOINT_MANIFEST}").size
        assert set(s3.list("checkpoints/big-v1/")) == {
            f"checkpoints/big-v1/{f.path}" for f in files
        } | {f"checkpoints/big-v1/{CHECKPOINT_MANIFEST}"}
        assert not list(s3.list("checkpoints/.staging/"))
    finally:
        server.stop()
    assert peak < 32 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"
    assert seen == [64 * 1024 * 1024]
    assert store.uploaded_bytes == sum(f.size for f in files) + manifest
    (row,) = rows(factory)
    assert row.status == CheckpointStatus.READY
