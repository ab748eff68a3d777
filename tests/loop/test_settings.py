"""Settings: embedded defaults, environment over config file, secrets masked."""

import re
from pathlib import Path

import pytest

from loop.settings import Settings, SettingsError, get_settings, masked_settings


def test_defaults_are_the_embedded_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDITLOOP_DATA_DIR", str(tmp_path / "data"))
    settings = Settings()
    assert settings.store.database_url == f"sqlite:///{(tmp_path / 'data/editloop.db').resolve()}"
    assert settings.store.backend == "local"
    assert settings.store.local_root == tmp_path / "data/objects"
    assert settings.worker.eager is True
    assert not (tmp_path / "data").exists(), "reading settings must not create folders"


def test_environment_overrides_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "editloop.toml"
    config.write_text(
        '[store]\nbackend = "s3"\ns3_bucket = "from-file"\n[worker]\nedit_batch_size = 3\n'
    )
    monkeypatch.setenv("EDITLOOP_CONFIG", str(config))
    monkeypatch.setenv("EDITLOOP_STORE__S3_BUCKET", "from-env")
    settings = Settings()
    assert settings.store.backend == "s3"
    assert settings.store.s3_bucket == "from-env"
    assert settings.worker.edit_batch_size == 3


def test_yaml_config_and_bad_config_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "editloop.yaml"
    config.write_text("judge:\n  max_reflections: 1\n")
    monkeypatch.setenv("EDITLOOP_CONFIG", str(config))
    assert Settings().judge.max_reflections == 1
    monkeypatch.setenv("EDITLOOP_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(SettingsError, match="missing.toml: no such file"):
        Settings()
    (tmp_path / "x.ini").write_text("")
    monkeypatch.setenv("EDITLOOP_CONFIG", str(tmp_path / "x.ini"))
    with pytest.raises(SettingsError, match=".toml or .yaml"):
        Settings()


def test_unknown_keys_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="typo"):
        Settings(typo=1)  # type: ignore[call-arg]


def test_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDITLOOP_STORE__DATABASE_URL", "postgresql+psycopg://app:hunter2@db/edit")
    monkeypatch.setenv("EDITLOOP_WORKER__BROKER_URL", "amqp://guest:sesame@mq:5672//")
    monkeypatch.setenv("EDITLOOP_STORE__S3_SECRET_KEY", "topsecret")
    shown = str(masked_settings(Settings()))
    for secret in ("hunter2", "sesame", "topsecret"):
        assert secret not in shown
    assert "postgresql+psycopg://app:***@db/edit" in shown
    assert "amqp://guest:***@mq:5672//" in shown


def test_a_bad_value_names_the_setting_and_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDITLOOP_STORE__RETRIES", "many")
    get_settings.cache_clear()
    with pytest.raises(SettingsError) as raised:
        get_settings()
    get_settings.cache_clear()
    assert str(raised.value).startswith("invalid settings: setting store.retries: ")
    assert "(got 'many'); set it with EDITLOOP_STORE__RETRIES" in str(raised.value)


def test_admin_settings_come_from_their_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDITLOOP_ADMIN__TOKEN", "s3cret-token")
    monkeypatch.setenv("EDITLOOP_ADMIN__PORT", "9001")
    settings = Settings()
    assert settings.admin.token_value() == "s3cret-token" and settings.admin.port == 9001
    shown = masked_settings(settings)
    assert shown["admin"]["token"] == "***" and "s3cret-token" not in str(shown)
    assert "admin_token" not in shown  # the old top-level setting moved under admin
    with pytest.raises(ValueError, match="admin_token"):
        Settings(admin_token="x")  # type: ignore[call-arg]


def test_protected_reads_need_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDITLOOP_ADMIN__PROTECT_READS", "true")
    get_settings.cache_clear()
    with pytest.raises(SettingsError, match="EDITLOOP_ADMIN__TOKEN"):
        get_settings()
    get_settings.cache_clear()


def test_an_unknown_variable_is_refused_with_the_closest_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EDITLOOP_STORE__DATABSE_URL", "sqlite:///x.db")
    monkeypatch.setenv("EDITLOOP_TRAINING__RECIPE__MAX_STEPS", "3")
    monkeypatch.setenv("EDITLOOP_DEBUG", "1")  # read by the command line, not a setting
    get_settings.cache_clear()
    with pytest.raises(SettingsError) as raised:
        get_settings()
    get_settings.cache_clear()
    message = str(raised.value)
    assert "EDITLOOP_STORE__DATABSE_URL (did you mean EDITLOOP_STORE__DATABASE_URL?)" in message
    assert (
        "EDITLOOP_TRAINING__RECIPE__MAX_STEPS (did you mean EDITLOOP_TRAINING__RECIPE?)" in message
    )
    assert "EDITLOOP_DEBUG" not in message


def test_a_misspelt_key_in_a_config_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "editloop.toml"
    config.write_text('[store]\ndatabse_url = "sqlite:///x.db"\n')
    monkeypatch.setenv("EDITLOOP_CONFIG", str(config))
    get_settings.cache_clear()
    with pytest.raises(SettingsError, match=r"unknown setting store\.databse_url \(did you mean"):
        get_settings()
    config.write_text("[store\n")
    get_settings.cache_clear()
    with pytest.raises(SettingsError, match=r"editloop\.toml: the file cannot be parsed"):
        get_settings()
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("EDITLOOP_STORE__DATABASE_URL", "notaurl", "is not a database URL"),
        ("EDITLOOP_STORE__DATABASE_URL", "postgresql://u@h/d", "use postgresql+psycopg://"),
        ("EDITLOOP_STORE__DATABASE_URL", "mysql://u@h/d", "mysql:// is not supported"),
        ("EDITLOOP_STORE__S3_ENDPOINT", "http://minio:9000", "without a scheme"),
        ("EDITLOOP_WORKER__BROKER_URL", "localhost:6379", "a broker URL starts with"),
    ],
)
def test_urls_editloop_cannot_use_are_refused(
    variable: str, value: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    get_settings.cache_clear()
    with pytest.raises(SettingsError, match=re.escape(message)) as raised:
        get_settings()
    get_settings.cache_clear()
    assert f"set it with {variable}" in str(raised.value)
