"""The `store` section of the settings: metadata database, object store, image limits."""

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr

from store.images import ImageLimits


class StoreSettings(BaseModel):
    """Where metadata and objects live; empty URLs/paths mean under the data dir (embedded)."""

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

    def image_limits(self) -> ImageLimits:
        """The image size limits as the image gate takes them."""
        return ImageLimits(
            max_side=self.max_image_side,
            max_megapixels=self.max_image_megapixels,
            max_bytes=int(self.max_image_mb * 2**20),
        )
