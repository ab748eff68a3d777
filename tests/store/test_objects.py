"""One contract for every object store: LocalStore and S3Store (real minio SDK against moto)."""

import hashlib
import threading
import time
import tracemalloc
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest

from store.objects import (
    LocalStore,
    ObjectNotFound,
    ObjectStore,
    StoreUnavailable,
    content_key,
    file_sha256,
    put_content,
)
from tests.fixtures.services import MotoProcess, free_port, make_s3_store


def test_put_get_round_trip_and_stat(object_store: ObjectStore) -> None:
    object_store.put("a/b/c.bin", b"\x00\x01payload", "application/octet-stream")
    assert object_store.get("a/b/c.bin") == b"\x00\x01payload"
    assert object_store.exists("a/b/c.bin")
    info = object_store.stat("a/b/c.bin")
    assert info.size == 9
    assert info.modified is not None
    assert abs((datetime.now(UTC) - info.modified).total_seconds()) < 60


def test_put_replaces_an_existing_object(object_store: ObjectStore) -> None:
    object_store.put("k.txt", b"old")
    object_store.put("k.txt", b"newer")
    assert object_store.get("k.txt") == b"newer"
    assert object_store.stat("k.txt").size == 5


def test_content_addressed_put_is_idempotent(object_store: ObjectStore) -> None:
    data = b"same bytes"
    first = put_content(object_store, data, prefix="images", ext="png", content_type="image/png")
    second = put_content(object_store, data, prefix="images/", ext=".png", content_type="image/png")
    digest = hashlib.sha256(data).hexdigest()
    assert first == second == f"images/{digest[:2]}/{digest}.png"
    assert list(object_store.list("images/")) == [first]


def test_missing_key_raises_object_not_found(object_store: ObjectStore) -> None:
    assert not object_store.exists("nope/x")
    with pytest.raises(ObjectNotFound):
        object_store.get("nope/x")
    with pytest.raises(ObjectNotFound):
        object_store.stat("nope/x")
    with pytest.raises(ObjectNotFound):
        object_store.presigned_get("nope/x")


def test_delete_removes_and_tolerates_missing(object_store: ObjectStore) -> None:
    object_store.put("d/1", b"1")
    object_store.delete("d/1")
    object_store.delete("d/1")
    assert not object_store.exists("d/1")
    assert list(object_store.list("d/")) == []


def test_list_by_prefix_is_recursive_and_sorted(object_store: ObjectStore) -> None:
    for key in ["p/b/2", "p/a/1", "p/c", "q/1", "pp/1"]:
        object_store.put(key, key.encode())
    assert list(object_store.list("p/")) == ["p/a/1", "p/b/2", "p/c"]
    assert list(object_store.list("p")) == ["p/a/1", "p/b/2", "p/c", "pp/1"]
    assert len(list(object_store.list())) == 5


def test_presigned_get_serves_the_bytes(object_store: ObjectStore) -> None:
    object_store.put("share/me.png", b"pixels", "image/png")
    url = object_store.presigned_get("share/me.png")
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"pixels"


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "..", "a\\b"])
def test_invalid_keys_are_refused(object_store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError, match="invalid object key"):
        object_store.put(key, b"x")


def test_content_key_depends_only_on_bytes() -> None:
    assert content_key(b"a", prefix="x", ext="png") != content_key(b"b", prefix="x", ext="png")
    assert content_key(b"a", prefix="x", ext="png").startswith("x/ca/ca978112")


def test_local_store_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for i in range(5):
        store.put("k", str(i).encode())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]


def test_s3_bucket_is_created_on_first_use(moto_endpoint: str) -> None:
    store = make_s3_store(moto_endpoint)
    assert not store.client.bucket_exists(store.bucket)
    store.put("x", b"1")
    assert store.client.bucket_exists(store.bucket)


def test_s3_missing_bucket_without_create_is_a_clear_error(moto_endpoint: str) -> None:
    store = make_s3_store(moto_endpoint, create_bucket=False)
    with pytest.raises(StoreUnavailable, match="does not exist.*CREATE_BUCKET"):
        store.put("x", b"1")


def test_s3_wrong_endpoint_fails_after_bounded_retries() -> None:
    store = make_s3_store(f"127.0.0.1:{free_port()}", retries=2, backoff_s=0.05, timeout_s=1)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"did not answer .* after 3 tries"):
        store.get("x")
    assert time.monotonic() - started < 10


def test_s3_retries_until_the_endpoint_comes_back(moto_process: MotoProcess) -> None:
    make_s3_store(moto_process.endpoint).put("before", b"1")
    moto_process.stop()
    restart = threading.Timer(1.0, moto_process.start)
    restart.start()
    # Endpoint down at the first call: the bucket check and the put wait it out with backoff.
    store = make_s3_store(moto_process.endpoint, retries=8, backoff_s=0.2)
    store.put("after", b"2")
    restart.join()
    assert store.get("after") == b"2"


# ---- streamed files (checkpoints): fput, fget, copy ---------------------------------------------


def test_fput_fget_stream_files_and_hash_what_passed(
    object_store: ObjectStore, tmp_path: Path
) -> None:
    # Larger than one streaming chunk and than S3's minimum part: a multipart upload on S3.
    data = bytes(range(256)) * (7 * 1024 * 1024 // 256 + 3)
    source = tmp_path / "weights.bin"
    source.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    assert object_store.fput("ckpt/weights.bin", source) == digest
    assert object_store.stat("ckpt/weights.bin").size == len(data)
    target = tmp_path / "fetched" / "weights.bin"
    assert object_store.fget("ckpt/weights.bin", target) == digest
    assert target.read_bytes() == data
    assert file_sha256(target) == digest
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".tmp-")]
    with pytest.raises(ObjectNotFound):
        object_store.fget("ckpt/missing.bin", tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()
    with pytest.raises(FileNotFoundError):
        object_store.fput("ckpt/x", tmp_path / "no-such-file")


def test_copy_is_inside_the_store_and_independent_of_its_source(
    object_store: ObjectStore,
) -> None:
    object_store.put("staging/a.bin", b"first")
    object_store.copy("staging/a.bin", "final/a.bin")
    assert object_store.get("final/a.bin") == b"first"
    # Each key is its own object: replacing or deleting the source leaves the copy as it was.
    object_store.put("staging/a.bin", b"second")
    object_store.delete("staging/a.bin")
    assert object_store.get("final/a.bin") == b"first"
    with pytest.raises(ObjectNotFound):
        object_store.copy("staging/missing", "final/b")


@pytest.mark.parametrize("backend", ["local", pytest.param("s3", marks=pytest.mark.services)])
def test_streaming_keeps_a_large_file_out_of_memory(backend: str, tmp_path: Path) -> None:
    """A 64 MiB file goes up and down with at most 32 MiB of Python allocations (tracemalloc;
    S3 holds up to three 5 MiB parts and their request copies, ~20 MiB); the S3 server runs in
    its own process so that only this side is measured."""
    size, cap = 64 * 1024 * 1024, 32 * 1024 * 1024
    source = tmp_path / "big.bin"
    with source.open("wb") as handle:
        for index in range(size // (1024 * 1024)):
            handle.write(bytes([index % 251]) * (1024 * 1024))
    server = None
    if backend == "local":
        store: ObjectStore = LocalStore(tmp_path / "objects")
    else:
        server = MotoProcess()
        server.start()
        store = make_s3_store(server.endpoint, part_size=5 * 1024 * 1024, parallel_uploads=2)
        store.put("warm-up", b"")  # bucket created outside the measurement
    try:
        tracemalloc.start()
        sent = store.fput("big.bin", source)
        received = store.fget("big.bin", tmp_path / "back.bin")
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        if server is not None:
            server.stop()
    assert sent == received == file_sha256(source)
    assert peak < cap, f"peak {peak / 2**20:.1f} MiB"
