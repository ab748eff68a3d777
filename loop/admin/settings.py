"""The `admin` section of the settings (`EDITLOOP_ADMIN__*`)."""

from pydantic import BaseModel, Field, SecretStr, model_validator


class AdminSettings(BaseModel):
    """`editloop serve`: where it listens, the token that guards writes, page and cache bounds."""

    host: str = Field("127.0.0.1", description="interface `editloop serve` listens on")
    port: int = Field(8080, ge=1, le=65535, description="port `editloop serve` listens on")
    token: SecretStr | None = Field(
        None, description="bearer token for state-changing calls; unset = writes disabled"
    )
    protect_reads: bool = Field(
        False, description="require the token for reads too (API, pages, images, /metrics)"
    )
    page_size: int = Field(48, ge=1, description="samples per page by default")
    max_page_size: int = Field(200, ge=1, description="largest page a request may ask for")
    thumbnail_cache_mb: float = Field(
        64.0, ge=0, description="memory for resized thumbnails (least recently used dropped)"
    )

    @model_validator(mode="after")
    def _check(self) -> "AdminSettings":
        if self.page_size > self.max_page_size:
            raise ValueError(
                f"page_size={self.page_size} exceeds max_page_size={self.max_page_size}"
            )
        if self.protect_reads and not self.token_value():
            raise ValueError("protect_reads=true needs a token: set EDITLOOP_ADMIN__TOKEN")
        return self

    def token_value(self) -> str:
        """The configured token, or "" when writes are disabled (unset or blank)."""
        return self.token.get_secret_value().strip() if self.token is not None else ""
