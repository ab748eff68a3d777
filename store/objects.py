"""Object storage: one small protocol, a local-folder backend and an S3 backend (MinIO SDK)."""

import hashlib
import io
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol, TypeVar

import urllib3
from minio import Minio
from minio.error import S3Error

from store.retry import with_retries

T = TypeVar("T")


class ObjectNotFound(KeyError):
    """The key does not exist in the store."""


class StoreUnavailable(RuntimeError):
    """The store could not be reached after retrying, or is misconfigured."""


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows about one object."""

    key: str
    size: int
    content_type: str | None
    modified: datetime | None = None


class ObjectStore(Protocol):
    """Where images, checkpoints and exports live; every backend behaves the same."""

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Write `data` under `key`, atomically (readers see the old or the new object)."""

    def get(self, key: str) -> bytes:
        """Read the whole object; raises `ObjectNotFound`."""

    def exists(self, key: str) -> bool:
        """Whether `key` exists."""

    def stat(self, key: str) -> ObjectInfo:
        """Size and content type of `key`; raises `ObjectNotFound`."""

    def delete(self, key: str) -> None:
        """Remove `key`; removing a missing key is not an error."""

    def list(self, prefix: str = "") -> Iterator[str]:
        """Every key that starts with `prefix`, recursively, in lexical order."""

    def presigned_get(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        """A URL from which `key` can be read without credentials until `expires`."""


def content_key(data: bytes, *, prefix: str, ext: str) -> str:
    """The content address of `data`: `prefix/ab/<sha256>.ext` (two-character fan-out)."""
    digest = hashlib.sha256(data).hexdigest()
    return f"{prefix.strip('/')}/{digest[:2]}/{digest}.{ext.lstrip('.')}"


def put_content(
    store: ObjectStore, data: bytes, *, prefix: str, ext: str, content_type: str
) -> str:
    """Write `data` content-addressed and return its key.

    No existence check first: rewriting the same bytes under the same key is harmless and one
    request cheaper than asking (callers that expect duplicates check their rows instead).
    """
    key = content_key(data, prefix=prefix, ext=ext)
    store.put(key, data, content_type)
    return key


def _validate_key(key: str) -> str:
    if not key or key.startswith("/") or ".." in key.split("/") or "\\" in key:
        raise ValueError(f"invalid object key {key!r}: use a relative '/'-separated path")
    return key


class LocalStore:
    """Objects as files under `root`; the embedded default."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / _validate_key(key)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write to a temporary file in the same folder, then rename: never a half-written object.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFound(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(key)
        stat = path.stat()
        modified = datetime.fromtimestamp(stat.st_mtime, UTC)
        return ObjectInfo(key=key, size=stat.st_size, content_type=None, modified=modified)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> Iterator[str]:
        keys = (
            path.relative_to(self.root).as_posix()
            for path in self.root.rglob("*")
            if path.is_file() and not path.name.startswith(".tmp-")
        )
        yield from sorted(key for key in keys if key.startswith(prefix))

    def presigned_get(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        if not self.exists(key):
            raise ObjectNotFound(key)
        return self._path(key).as_uri()


# S3 error codes worth retrying; anything else is a real answer from the server.
_TRANSIENT_S3_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout"}


# Answers that no retry changes: the credentials are wrong (raised on the first try).
_CREDENTIAL_S3_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidSecurity"}


def _is_transient_s3_error(exc: Exception) -> bool:
    if isinstance(exc, S3Error):
        return exc.code in _TRANSIENT_S3_CODES
    return isinstance(exc, urllib3.exceptions.HTTPError | OSError)


class S3Store:
    """Objects in one bucket of an S3 endpoint (MinIO or any S3), through the `minio` SDK."""

    def __init__(
        self,
        *,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        secure: bool = False,
        region: str | None = None,
        create_bucket: bool = True,
        retries: int = 5,
        backoff_s: float = 0.5,
        timeout_s: float = 10.0,
    ) -> None:
        self.endpoint = endpoint
        self.bucket = bucket
        self.retries = retries
        self.backoff_s = backoff_s
        # The SDK's default pool retries for minutes; we retry ourselves, with a bound.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s * 3),
            retries=urllib3.Retry(total=0, connect=0, read=0, redirect=0),
            maxsize=16,
        )
        self.client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=http,
        )
        self._create_bucket = create_bucket
        self._bucket_checked = False

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one SDK call with exponential backoff on transient failures."""
        self._ensure_bucket()
        return self._retry(what, fn)

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return with_retries(
                fn,
                transient=_is_transient_s3_error,
                retries=self.retries,
                backoff_s=self.backoff_s,
                what=f"S3 {what}",
            )
        except S3Error as exc:
            if exc.code in _CREDENTIAL_S3_CODES:
                raise StoreUnavailable(
                    f"S3 endpoint {self.endpoint} refused {what}: {exc.code} ({exc.message}); "
                    "check EDITLOOP_STORE__S3_ACCESS_KEY and EDITLOOP_STORE__S3_SECRET_KEY"
                ) from None
            if exc.code == "AccessDenied":
                raise StoreUnavailable(
                    f"S3 endpoint {self.endpoint} refused {what}: access denied; the credentials "
                    f"in EDITLOOP_STORE__S3_ACCESS_KEY need read and write access to bucket "
                    f"{self.bucket!r} (EDITLOOP_STORE__S3_BUCKET)"
                ) from None
            raise
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StoreUnavailable(
                f"S3 endpoint {self.endpoint} did not answer {what} after "
                f"{self.retries + 1} tries ({type(exc).__name__}: {exc}); check that the "
                "server is running and EDITLOOP_STORE__S3_ENDPOINT is right"
            ) from exc

    def _ensure_bucket(self) -> None:
        if self._bucket_checked:
            return
        if not self._retry("bucket_exists", lambda: self.client.bucket_exists(self.bucket)):
            if not self._create_bucket:
                raise StoreUnavailable(
                    f"bucket {self.bucket!r} does not exist at {self.endpoint}; create it or set "
                    "EDITLOOP_STORE__CREATE_BUCKET=true"
                )
            try:
                self._retry("make_bucket", lambda: self.client.make_bucket(self.bucket))
            except S3Error as exc:
                if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise
        self._bucket_checked = True

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        _validate_key(key)
        self._call(
            f"put {key}",
            lambda: self.client.put_object(
                self.bucket, key, io.BytesIO(data), len(data), content_type=content_type
            ),
        )

    def get(self, key: str) -> bytes:
        def read() -> bytes:
            response = self.client.get_object(self.bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        try:
            return self._call(f"get {key}", read)
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                raise ObjectNotFound(key) from None
            raise

    def stat(self, key: str) -> ObjectInfo:
        try:
            info = self._call(f"stat {key}", lambda: self.client.stat_object(self.bucket, key))
        except S3Error as exc:
            if exc.code in {"NoSuchKey", "NoSuchObject", "NotFound"}:
                raise ObjectNotFound(key) from None
            raise
        return ObjectInfo(
            key=key,
            size=info.size or 0,
            content_type=info.content_type,
            modified=info.last_modified,
        )

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except ObjectNotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        self._call(f"delete {key}", lambda: self.client.remove_object(self.bucket, key))

    def list(self, prefix: str = "") -> Iterator[str]:
        objects = self._call(
            f"list {prefix}",
            lambda: list(self.client.list_objects(self.bucket, prefix=prefix, recursive=True)),
        )
        yield from sorted(obj.object_name for obj in objects if obj.object_name)

    def presigned_get(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        if not self.exists(key):
            raise ObjectNotFound(key)
        return self.client.presigned_get_object(self.bucket, key, expires=expires)
