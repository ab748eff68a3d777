"""The worker table in the admin: the API, the page and `editloop workers`, over worker rows as
heartbeats leave them (`workers.heartbeat.Presence` writes them; tests/workers checks that)."""

import json
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from loop.admin.api import create_app
from loop.cli.app import app
from loop.controller import RunConfig, _open_round, start_or_resume_run
from loop.settings import Settings, get_settings
from store.db import make_engine
from store.models import Attempt, AttemptStatus, Worker, utcnow


@pytest.fixture
def workers(loop_env, tmp_path: Path) -> sessionmaker[Session]:  # type: ignore[no-untyped-def]
    """Four workers as their heartbeats leave them: busy holding two attempts, idle, lapsed (no
    beat for a minute), stopped."""
    factory = loop_env[0]
    now = utcnow()
    ago = lambda seconds: now - timedelta(seconds=seconds)  # noqa: E731
    rows = {
        "busy@h": {"busy_since": ago(5), "task": "editloop.edit_batch", "checkpoint": "base"},
        "idle@h": {"idle_since": ago(3), "tasks_done": 12},
        "lapsed@h": {"busy_since": ago(90), "beat_at": ago(60)},
        "stopped@h": {"stopped_at": ago(20)},
    }
    with factory() as session, session.begin():
        for name, values in rows.items():
            defaults = {"queues": "edit,judge", "device": "cuda:0", "pid": 7,
                        "started_at": ago(600), "beat_at": ago(1)}  # fmt: skip
            session.add(Worker(name=name, **(defaults | values)))
    config = RunConfig(name="r", rounds=1, tasks_per_round=2)
    _open_round(factory, start_or_resume_run(factory, config), 0, config)
    with factory() as session, session.begin():
        session.execute(
            update(Attempt).values(status=AttemptStatus.DISPATCHED, worker="busy@h",
                                   started_at=ago(4), batch="b")
        )  # fmt: skip
    return factory


def _url(factory: sessionmaker[Session]) -> str:
    return str(factory.kw["bind"].url)


@pytest.fixture
def client(workers: sessionmaker[Session], tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path / "data")
    with TestClient(create_app(settings, engine=make_engine(_url(workers)))) as test_client:
        yield test_client


def _without_clock(page: dict) -> dict:  # type: ignore[type-arg]
    return page | {"items": [{k: v for k, v in w.items() if k != "beat_age_s"}
                             for w in page["items"]]}  # fmt: skip


def test_the_api_lists_workers_live_first_with_their_state(client: TestClient) -> None:
    page = client.get("/api/v1/workers").json()
    states = [(w["name"], w["state"], w["live"], w["holding"]) for w in page["items"]]
    assert states == [
        ("busy@h", "busy", True, 2),
        ("idle@h", "idle", True, 0),
        ("lapsed@h", "lapsed", False, 0),
        ("stopped@h", "stopped", False, 0),
    ]
    assert (page["total"], page["live"], page["heartbeat_timeout_s"]) == (4, 2, 30.0)
    busy = page["items"][0]
    assert (busy["task"], busy["device"], busy["queues"]) == (
        "editloop.edit_batch", "cuda:0", "edit,judge",
    )  # fmt: skip
    assert page["items"][2]["beat_age_s"] >= 60


def test_the_page_shows_the_table(client: TestClient) -> None:
    html = client.get("/workers").text
    assert 'id="workers"' in html and "2 live of 4" in html
    assert all(name in html for name in ("busy@h", "idle@h", "lapsed@h", "stopped@h"))
    assert 'class="badge s-lapsed"' in html


def test_editloop_workers_prints_what_the_api_answers(
    workers: sessionmaker[Session],
    client: TestClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [n for n in os.environ if n.startswith("EDITLOOP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("EDITLOOP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EDITLOOP_STORE__DATABASE_URL", _url(workers))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        printed = runner.invoke(app, ["workers", "--json"])
        table = runner.invoke(app, ["workers"], env={"COLUMNS": "200"})
    finally:
        get_settings.cache_clear()
    assert printed.exit_code == 0, printed.output
    api = client.get("/api/v1/workers").json()
    assert _without_clock(json.loads(printed.output)) == _without_clock(api)
    assert table.exit_code == 0, table.output
    assert "workers (2 live of 4)" in table.output and "busy: editloop.edit_batch" in table.output
