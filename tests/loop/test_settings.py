"""Settings: embedded defaults, environment over config file, secrets masked."""

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
