"""The CLI views on the filled database: tables on a terminal, `--json` byte for byte what the
API answers, and the error contract."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from loop.cli.app import app
from loop.settings import get_settings
from tests.loop.admin.conftest import Filled


@pytest.fixture
def cli(filled: Filled, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    for name in [n for n in os.environ if n.startswith("EDITLOOP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("EDITLOOP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EDITLOOP_STORE__DATABASE_URL", filled.url)
    get_settings.cache_clear()
    yield CliRunner()
    get_settings.cache_clear()


def test_json_views_print_what_the_api_answers(
    cli: CliRunner, client: TestClient, filled: Filled
) -> None:
    main = filled.main_run
    for command, path in [
        (["runs", "--json"], "/api/v1/runs?limit=100"),
        (["rounds", "main", "--json"], f"/api/v1/runs/{main}/rounds"),
        (["rounds", str(main), "--json"], f"/api/v1/runs/{main}/rounds"),  # by id too
        (["metrics", "main", "0", "--json"], f"/api/v1/runs/{main}/rounds/0"),
        (
            ["samples", "main", "--round", "1", "--verdict", "Failed", "--limit", "5", "--json"],
            f"/api/v1/samples?run_id={main}&round=1&verdict=Failed&limit=5",
        ),
        (
            ["samples", "strict", "--edit-type", "hybrid", "--search", "background", "--json"],
            f"/api/v1/samples?run_id={filled.strict_run}&edit_type=hybrid&q=background&limit=20",
        ),
        (["checkpoints", "--json"], "/api/v1/checkpoints"),
    ]:
        result = cli.invoke(app, command)
        assert result.exit_code == 0, (command, result.output)
        api = client.get(path)
        assert api.status_code == 200
        assert result.stdout.strip() == api.text, command


def test_tables_on_a_terminal(cli: CliRunner) -> None:
    runs = cli.invoke(app, ["runs"])
    assert runs.exit_code == 0 and "main" in runs.stdout and "strict" in runs.stdout
    metrics = cli.invoke(app, ["metrics", "main", "0"])
    assert metrics.exit_code == 0
    for heading in ("by edit type", "judge health", "slowest attempts", "unparseable", "hybrid"):
        assert heading in metrics.stdout
    samples = cli.invoke(app, ["samples", "main", "--limit", "3"])
    assert samples.exit_code == 0 and "more: --before" in samples.stdout
    checkpoints = cli.invoke(app, ["checkpoints"])
    assert checkpoints.exit_code == 0 and "(live)" in checkpoints.stdout
    assert "rejected" in checkpoints.stdout


def test_errors_follow_the_contract(cli: CliRunner) -> None:
    unknown = cli.invoke(app, ["rounds", "nope"])
    assert unknown.exit_code == 1
    assert unknown.stderr.startswith("error: run 'nope' not found")
    assert cli.invoke(app, ["metrics", "main", "9"]).stderr.startswith("error: round 9 of run")
    bad = cli.invoke(app, ["samples", "main", "--verdict", "Great"])
    assert bad.exit_code == 2 and bad.stderr.startswith("error: --verdict: ")
    score = cli.invoke(app, ["samples", "main", "--min-score", "9"])
    assert score.exit_code == 2 and "--min-score" in score.stderr
    assert "Traceback" not in unknown.output + bad.output
