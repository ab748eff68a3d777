"""The `store` section of the settings: metadata database, object store, image limits."""

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from store.images import ImageLimits

DATABASE_URL_EXAMPLES = (
    "use postgresql+psycopg://user:password@host:5432/database or sqlite:////path/to/file.db"
)


class StoreSettings(BaseModel):
    """Where metadata and objects live; empty URLs/paths mean under the data dir (embedded)."""

    # A misspelt key in a config file is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")

    database_url: str = Field("", description="SQLAlchemy URL; empty = SQLite under the data dir")
    backend: Literal["local", "s3"] = Field("local", description="object store backend")
    local_root: Path | None = Field(None, description="folder of the local store; empty = data dir")
    s3_endpoint: str = Field("localhost:9000", description="host:port of the S3 endpoint")
    s3_access_key: str = "minioadmin"
    s3_secret_key: SecretStr = SecretStr("minioadmin")
    s3_bucket: str = "editloop"
    s3_secure: bool = Field(False, description="use HTTPS for the S3 endpoint")
    s3_region: str | None = None
    create_bucket: bool = Field(True, description="create the bucket on first use if missing")
    retries: int = Field(5, ge=0, description="retries on transient store/database errors")
    backoff_s: float = Field(0.5, gt=0, description="first retry delay, s (doubles)")
    max_image_side: int = Field(4096, gt=0, description="longest accepted image side, pixels")
    max_image_megapixels: float = Field(40.0, gt=0, description="largest accepted image, MP")
    max_image_mb: float = Field(
        128.0, gt=0, description="largest accepted image file, MiB (checked before reading)"
    )

    @field_validator("database_url")
    @classmethod
    def _a_database_editloop_speaks(cls, url: str) -> str:
        if not url:
            return url
        try:
            driver = make_url(url).drivername
        except ArgumentError:
            raise ValueError(f"{url!r} is not a database URL; {DATABASE_URL_EXAMPLES}") from None
        if driver in ("postgresql", "postgresql+psycopg2", "postgres"):
            raise ValueError(
                "use postgresql+psycopg://... (the psycopg 3 driver editloop installs), not "
                f"{driver}://"
            )
        if driver not in ("postgresql+psycopg", "sqlite", "sqlite+pysqlite"):
            raise ValueError(f"{driver}:// is not supported; {DATABASE_URL_EXAMPLES}")
        return url

    @field_validator("s3_endpoint")
    @classmethod
    def _host_and_port(cls, endpoint: str) -> str:
        if "://" in endpoint or "/" in endpoint:
            raise ValueError(
                "give host:port without a scheme or path, e.g. minio:9000 (HTTPS: set "
                "EDITLOOP_STORE__S3_SECURE=true)"
            )
        return endpoint

    def image_limits(self) -> ImageLimits:
        """The image size limits as the image gate takes them."""
        return ImageLimits(
            max_side=self.max_image_side,
            max_megapixels=self.max_image_megapixels,
            max_bytes=int(self.max_image_mb * 2**20),
        )
