"""Build the object store a `StoreSettings` describes."""

from pathlib import Path

from store.objects import LocalStore, ObjectStore
from store.s3 import S3Store
from store.settings import StoreSettings


def build_object_store(settings: StoreSettings, *, default_root: Path) -> ObjectStore:
    """The local or S3 store named by `settings.backend`."""
    if settings.backend == "local":
        return LocalStore(settings.local_root or default_root)
    return S3Store(
        endpoint=settings.s3_endpoint,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key.get_secret_value(),
        bucket=settings.s3_bucket,
        secure=settings.s3_secure,
        region=settings.s3_region,
        create_bucket=settings.create_bucket,
        retries=settings.retries,
        backoff_s=settings.backoff_s,
    )
