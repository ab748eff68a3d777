"""Objects in one bucket of an S3 endpoint (MinIO or any S3) through the `minio` SDK, with the
store's one retry loop for transient failures and one clear message for permanent ones."""

import io
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import urllib3
from minio import Minio
from minio.commonconfig import ComposeSource
from minio.error import S3Error

from store.objects import (
    HashingReader,
    ObjectInfo,
    ObjectNotFound,
    StoreUnavailable,
    copy_stream,
    validate_key,
    write_atomically,
)
from store.retry import with_retries

T = TypeVar("T")


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
        part_size: int = 16 * 1024 * 1024,
        parallel_uploads: int = 2,
    ) -> None:
        self.endpoint = endpoint
        self.bucket = bucket
        # Streamed uploads (`fput`): part size and parts in flight bound the memory they use.
        self.part_size = part_size
        self.parallel_uploads = parallel_uploads
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
        validate_key(key)
        self._call(
            f"put {key}",
            lambda: self.client.put_object(
                self.bucket, key, io.BytesIO(data), len(data), content_type=content_type
            ),
        )

    def _read(self, key: str, use: Callable[[urllib3.BaseHTTPResponse], T]) -> T:
        """`use` the object's response (retried as a whole), then release its connection;
        ObjectNotFound for a missing key."""

        def read() -> T:
            response = self.client.get_object(self.bucket, key)
            try:
                return use(response)
            finally:
                response.close()
                response.release_conn()

        try:
            return self._call(f"get {key}", read)
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                raise ObjectNotFound(key) from None
            raise

    def get(self, key: str) -> bytes:
        return self._read(key, lambda response: response.read())

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

    def fput(self, key: str, path: Path, content_type: str = "application/octet-stream") -> str:
        validate_key(key)
        path = Path(path)
        # Outside the retry loop: a missing file is the caller's error, not the server's.
        size = path.stat().st_size

        def upload() -> str:
            # Reopened on every try: a retry sends the file from its start again.
            with path.open("rb") as handle:
                reader = HashingReader(handle)
                # Multipart above one part: at most (uploads + 1) parts are in memory at once.
                self.client.put_object(
                    self.bucket,
                    key,
                    reader,  # type: ignore[arg-type]
                    size,
                    content_type=content_type,
                    part_size=self.part_size,
                    num_parallel_uploads=self.parallel_uploads,
                )
                return reader.digest.hexdigest()

        return self._call(f"put {key}", upload)

    def fget(self, key: str, path: Path) -> str:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return self._read(
            key,
            lambda response: write_atomically(
                Path(path), lambda handle: copy_stream(response.read, handle)
            ),
        )

    def copy(self, source: str, key: str) -> None:
        validate_key(key)
        # compose_object is a plain server-side copy up to 5 GiB and a multipart copy of ranges
        # above (copy_object alone refuses objects over 5 GiB).
        try:
            self._call(
                f"copy {source} to {key}",
                lambda: self.client.compose_object(
                    self.bucket, key, [ComposeSource(self.bucket, source)]
                ),
            )
        except S3Error as exc:
            if exc.code in {"NoSuchKey", "NoSuchObject", "NotFound"}:
                raise ObjectNotFound(source) from None
            raise
