"""Smoke tests of the real `editloop` command at toy size, in a fresh working folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

EDITLOOP = str(Path(sys.executable).parent / "editloop")


def editloop(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("EDITLOOP_")}
    return subprocess.run(
        [EDITLOOP, *args],
        cwd=cwd,
        env=environment | env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_config_prints_masked_settings(tmp_path: Path) -> None:
    result = editloop(
        "config", cwd=tmp_path, EDITLOOP_STORE__DATABASE_URL="postgresql+psycopg://u:pw@h/db"
    )
    shown = json.loads(result.stdout)
    assert shown["store"]["database_url"] == "postgresql+psycopg://u:***@h/db"


def test_user_errors_exit_1_with_a_message(tmp_path: Path, postgres_url: str) -> None:
    missing = editloop("ingest", str(tmp_path / "nope.jsonl"), cwd=tmp_path)
    assert missing.returncode == 1 and "no such file" in missing.stderr
    outdated = editloop("status", cwd=tmp_path, EDITLOOP_STORE__DATABASE_URL=postgres_url)
    assert outdated.returncode == 1 and "editloop db upgrade" in outdated.stderr
    down = editloop(
        "status",
        cwd=tmp_path,
        EDITLOOP_STORE__DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:1/x",
        EDITLOOP_STORE__RETRIES="1",
        EDITLOOP_STORE__BACKOFF_S="0.05",
    )
    assert down.returncode == 1 and "database did not answer" in down.stderr
    assert "Traceback" not in down.stdout + down.stderr


def test_db_upgrade_then_status_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    env = {"EDITLOOP_STORE__DATABASE_URL": postgres_url}
    assert editloop("db", "upgrade", cwd=tmp_path, **env).returncode == 0
    result = editloop("status", cwd=tmp_path, **env)
    assert result.returncode == 0 and "tasks" in result.stdout
