"""editloop's settings: each package's section, composed; env `EDITLOOP_*` and a config file.

Precedence: explicit arguments > environment (`EDITLOOP_STORE__DATABASE_URL`, ...) > config file
(`EDITLOOP_CONFIG` or `--config`, TOML or YAML) > defaults, which are the embedded mode.
"""

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from policies.settings import EditorSettings
from policies.training.settings import TrainingSettings
from rewards.settings import JudgeSettings
from store.db import sqlite_url
from store.settings import StoreSettings
from workers.settings import WorkerSettings


class SettingsError(ValueError):
    """The settings cannot be read: a bad value, a malformed or missing config file."""


class Settings(BaseSettings):
    """Everything editloop reads from its environment, read once per process."""

    model_config = SettingsConfigDict(
        env_prefix="EDITLOOP_", env_nested_delimiter="__", extra="forbid"
    )

    data_dir: Path = Field(Path(".editloop"), description="embedded-mode database, objects, models")
    admin_token: SecretStr | None = Field(None, description="token for state-changing admin calls")
    store: StoreSettings = StoreSettings()
    editor: EditorSettings = EditorSettings()
    judge: JudgeSettings = JudgeSettings()
    worker: WorkerSettings = WorkerSettings()
    training: TrainingSettings = TrainingSettings()

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> "Settings":
        if not self.store.database_url:
            self.store.database_url = sqlite_url(self.data_dir / "editloop.db")
        if self.store.local_root is None:
            self.store.local_root = self.data_dir / "objects"
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = [init_settings, env_settings]
        config_file = os.environ.get("EDITLOOP_CONFIG")
        if config_file:
            path = Path(config_file)
            if not path.is_file():
                raise SettingsError(f"EDITLOOP_CONFIG={config_file}: no such file")
            if path.suffix == ".toml":
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            elif path.suffix in {".yaml", ".yml"}:
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
            else:
                raise SettingsError(f"EDITLOOP_CONFIG={config_file}: use a .toml or .yaml file")
        return tuple(sources)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once; `SettingsError` says what is wrong and how to fix it."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    """One line per bad value: the setting, the problem, and the variable that sets it."""
    problems = []
    for error in exc.errors():
        path = ".".join(str(part) for part in error["loc"])
        variable = "EDITLOOP_" + "__".join(str(part).upper() for part in error["loc"])
        given = f" (got {error['input']!r})" if not isinstance(error["input"], dict) else ""
        problems.append(f"setting {path}: {error['msg']}{given}; set it with {variable}")
    return "invalid settings: " + "; ".join(problems)


def masked_settings(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, secrets (and passwords in URLs) masked."""
    data = settings.model_dump(mode="json")
    data["store"]["database_url"] = _mask_url(settings.store.database_url)
    data["worker"]["broker_url"] = _mask_url(settings.worker.broker_url.get_secret_value())
    return data


def _mask_url(url: str) -> str:
    """`scheme://user:secret@host` → `scheme://user:***@host`."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user, has_password, _ = credentials.partition(":")
    return f"{scheme}://{user}{':***' if has_password else ''}@{host}"
