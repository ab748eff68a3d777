"""One contract for every object store: LocalStore and S3Store (real minio SDK against moto)."""

import hashlib
import threading
import time
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
