"""A worker's presence: its row, heartbeat, busy/idle marks, stop, and the watchdog."""

import logging
import threading
import time

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from migrations import upgrade
from store.db import make_engine, make_session_factory
from store.models import Worker
from workers.heartbeat import WATCHDOG_EXIT_CODE, Presence
from workers.settings import WorkerSettings


@pytest.fixture
def factory(sqlite_db_url: str) -> sessionmaker[Session]:
    upgrade(sqlite_db_url)
    return make_session_factory(make_engine(sqlite_db_url))


def row(factory: sessionmaker[Session], name: str = "w@h") -> Worker:
    with factory() as session:
        return session.scalars(select(Worker).where(Worker.name == name)).one()


def eventually(factory: sessionmaker[Session], condition, timeout: float = 10) -> Worker:  # type: ignore[no-untyped-def]
    """The worker row once `condition(row)` holds (the thread writes it a moment later)."""
    deadline = time.monotonic() + timeout
    while not condition(current := row(factory)):
        assert time.monotonic() < deadline, "the row never got there"
        time.sleep(0.02)
    return current


def test_a_worker_registers_beats_and_reports_its_state(factory: sessionmaker[Session]) -> None:
    loaded: list[str | None] = [None]
    presence = Presence(
        factory, name="w@h", queues="edit,judge", device="cuda:1", interval_s=0.05,
        loaded_checkpoint=lambda: loaded[0],
    )  # fmt: skip
    presence.start()
    try:
        first = row(factory)
        # Live from the start, but not free to take work until Celery consumes.
        assert (first.queues, first.device, first.busy_since, first.idle_since) == (
            "edit,judge", "cuda:1", None, None,
        )  # fmt: skip
        presence.idle(first=True)
        presence.busy("editloop.edit_batch")
        loaded[0] = "v-123"
        # Written by the heartbeat thread a moment later, with the time the task started.
        busy = eventually(factory, lambda w: w.task == "editloop.edit_batch")
        assert busy.busy_since and busy.idle_since is None
        eventually(factory, lambda w: w.checkpoint == "v-123")
        assert row(factory).beat_at > first.beat_at
        presence.idle()
        idle = eventually(factory, lambda w: w.busy_since is None)
        assert idle.idle_since > busy.busy_since and idle.tasks_done == 1
    finally:
        presence.stop()
    stopped = row(factory)
    assert stopped.stopped_at is not None and stopped.idle_since is None


def test_a_restart_under_the_same_name_replaces_the_row(factory: sessionmaker[Session]) -> None:
    first = Presence(factory, name="w@h", queues="edit", interval_s=60)
    first.start()
    first.busy("editloop.edit_batch")
    first.idle()
    first.stop()
    assert row(factory).tasks_done == 1
    again = Presence(factory, name="w@h", queues="judge", interval_s=60)
    again.start()
    try:
        fresh = row(factory)
        with factory() as session:
            assert len(session.scalars(select(Worker)).all()) == 1
        assert fresh.stopped_at is None and fresh.queues == "judge" and fresh.tasks_done == 0
    finally:
        again.stop()


def test_the_watchdog_exits_a_worker_whose_task_runs_past_the_limit(
    factory: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    exits: list[int] = []
    exited = threading.Event()

    def exit_process(code: int) -> None:
        exits.append(code)
        exited.set()

    presence = Presence(
        factory, name="w@h", queues="edit", interval_s=0.05, time_limit_s=0.2,
        exit_process=exit_process,
    )  # fmt: skip
    presence.start()
    presence.busy("editloop.edit_batch")
    with caplog.at_level(logging.CRITICAL, logger="workers.heartbeat"):
        assert exited.wait(10), "the watchdog did not fire"
    assert exits == [WATCHDOG_EXIT_CODE]
    assert "watchdog: task editloop.edit_batch has run" in caplog.text
    assert "EDITLOOP_WORKER__TIME_LIMIT_S=0.2" in caplog.text
    # Marked stopped, so that the controller sends its batch again at once.
    assert row(factory).stopped_at is not None


def test_a_task_within_the_limit_is_left_alone(factory: sessionmaker[Session]) -> None:
    exits: list[int] = []
    presence = Presence(
        factory, name="w@h", queues="edit", interval_s=0.02, time_limit_s=5,
        exit_process=exits.append,
    )  # fmt: skip
    presence.start()
    try:
        presence.busy("editloop.edit_batch")
        time.sleep(0.3)
        presence.idle()
        time.sleep(0.1)
    finally:
        presence.stop()
    assert exits == [] and presence.overdue() is None


def test_a_heartbeat_timeout_under_two_beats_is_refused() -> None:
    with pytest.raises(ValueError, match="heartbeat_timeout_s=5 is under two heartbeats"):
        WorkerSettings(heartbeat_s=3, heartbeat_timeout_s=5)


def test_with_tasks_at_once_it_stays_busy_since_the_oldest(factory: sessionmaker[Session]) -> None:
    presence = Presence(factory, name="w@h", queues="edit", interval_s=60)
    presence.start()
    try:
        presence.idle(first=True)
        presence.busy("editloop.edit_batch", "task-1")
        presence.busy("editloop.judge_batch", "task-2")
        first = eventually(factory, lambda w: w.task == "editloop.edit_batch")
        presence.idle("task-1")  # the other still runs: busy since its own start, not idle
        second = eventually(factory, lambda w: w.task == "editloop.judge_batch")
        assert second.idle_since is None and second.busy_since > first.busy_since
        presence.idle("task-2")
        done = eventually(factory, lambda w: w.busy_since is None)
        assert done.idle_since is not None and done.tasks_done == 2
    finally:
        presence.stop()
