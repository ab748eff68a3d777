"""editloop's settings: each package's section, composed; env `EDITLOOP_*` and a config file.

Precedence: explicit arguments > environment (`EDITLOOP_STORE__DATABASE_URL`, ...) > config file
(`EDITLOOP_CONFIG` or `--config`, TOML or YAML) > defaults, which are the embedded mode.
"""

import difflib
import os
import tomllib
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from loop.admin.settings import AdminSettings
from policies.settings import EditorSettings
from policies.training.layout import DIE_WITH_PARENT_ENV
from policies.training.settings import TrainingSettings
from rewards.settings import JudgeSettings
from store.db import sqlite_url
from store.settings import StoreSettings
from workers.settings import WorkerSettings

ENV_PREFIX = "EDITLOOP_"
# Variables editloop reads that are not settings: the config file, tracebacks, and the flag the
# trainer sets for the training ranks it launches.
NON_SETTING_VARIABLES = {"EDITLOOP_CONFIG", "EDITLOOP_DEBUG", DIE_WITH_PARENT_ENV}


class SettingsError(ValueError):
    """The settings cannot be read: a bad value, a malformed or missing config file."""


class Settings(BaseSettings):
    """Everything editloop reads from its environment, read once per process."""

    model_config = SettingsConfigDict(
        env_prefix="EDITLOOP_", env_nested_delimiter="__", extra="forbid"
    )

    data_dir: Path = Field(Path(".editloop"), description="embedded-mode database, objects, models")
    store: StoreSettings = StoreSettings()
    editor: EditorSettings = EditorSettings()
    judge: JudgeSettings = JudgeSettings()
    worker: WorkerSettings = WorkerSettings()
    training: TrainingSettings = TrainingSettings()
    admin: AdminSettings = AdminSettings()

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
    unknown = unknown_variables(os.environ)
    if unknown:
        raise SettingsError("; ".join(unknown))
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        problem = " ".join(str(exc).split())
        raise SettingsError(
            f"EDITLOOP_CONFIG={os.environ.get('EDITLOOP_CONFIG')}: the file cannot be parsed "
            f"({problem})"
        ) from None


def setting_paths(model: type[BaseModel] = Settings) -> set[str]:
    """Every setting's dotted path (`store`, `store.database_url`, ...). A dict setting such as
    `training.recipe` is one value (JSON in its variable), not a section of its own."""
    paths: set[str] = set()
    for name, field in model.model_fields.items():
        paths.add(name)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            paths |= {f"{name}.{path}" for path in setting_paths(field.annotation)}
    return paths


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A message for each `EDITLOOP_*` variable that sets nothing, naming the closest setting."""
    variables = {_variable(path) for path in setting_paths()}
    messages = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in NON_SETTING_VARIABLES | variables:
            continue
        close = difflib.get_close_matches(name, [*variables, *NON_SETTING_VARIABLES], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        messages.append(
            f"unknown setting variable {name}{hint}: it would be ignored; fix or unset it "
            "(`editloop config` lists the settings)"
        )
    return messages


def _variable(path: str) -> str:
    return ENV_PREFIX + path.replace(".", "__").upper()


def describe_validation_error(exc: ValidationError) -> str:
    """One line per bad value: the setting, the problem, and the variable that sets it."""
    paths = setting_paths()
    problems = []
    for error in exc.errors():
        path = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            close = difflib.get_close_matches(path, paths, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"unknown setting {path}{hint} in the config file")
            continue
        given = f" (got {error['input']!r})" if not isinstance(error["input"], dict) else ""
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"setting {path}: {message}{given}; set it with {_variable(path)}")
    return "invalid settings: " + "; ".join(problems)


def masked_settings(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, secrets (and passwords in URLs) masked."""
    data = settings.model_dump(mode="json")
    data["store"]["database_url"] = _mask_url(settings.store.database_url)
    data["worker"]["broker_url"] = _mask_url(settings.worker.broker_url.get_secret_value())
    # SecretStr dumps as stars already; said here so that a change of type cannot leak it.
    data["admin"]["token"] = "***" if settings.admin.token is not None else None
    return data


def _mask_url(url: str) -> str:
    """`scheme://user:secret@host` → `scheme://user:***@host`."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user, has_password, _ = credentials.partition(":")
    return f"{scheme}://{user}{':***' if has_password else ''}@{host}"
