"""A worker's presence in the database: its `worker` row, the heartbeat thread that renews it,
whether it is busy, and the watchdog that ends a task past its time limit.

The controller reads these rows instead of guessing from dispatch times (docs/design.md, "How a
task moves"): an attempt started by a worker whose beat lapsed, that stopped, or that went on to
other work is sent again; one held by a live, busy worker is left alone however slow it is.
Celery's own time limits do not apply to the solo pool (one task in the main thread), so the
watchdog enforces `time_limit_s` by exiting the process, which makes its batch lapse at once.
"""

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import event, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from store.db import DatabaseUnavailable, insert_ignore
from store.models import Worker, utcnow

log = logging.getLogger(__name__)
WATCHDOG_EXIT_CODE = 70  # EX_SOFTWARE: what a supervisor sees when the watchdog ended a worker


class Presence:
    """One worker process's row: registered on `start`, marked stopped on `stop` (and by the
    watchdog). Between the two a thread writes it: every `interval_s` (the heartbeat), and soon
    after the worker goes busy or idle. Those marks are kept here with their times and written by
    the thread, off the task's path (two commits a task would cost more than the control plane's
    whole budget); the controller's rule allows for a mark written late (`loop.liveness`)."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        *,
        name: str,
        queues: str,
        device: str = "",
        interval_s: float = 5.0,
        time_limit_s: float | None = None,
        loaded_checkpoint: Callable[[], str | None] = lambda: None,
        exit_process: Callable[[int], None] = os._exit,
        min_write_gap_s: float = 0.2,
    ) -> None:
        self.factory = factory
        self.name = name
        self.queues = queues
        self.device = device
        self.interval_s = interval_s
        self.time_limit_s = time_limit_s
        self.loaded_checkpoint = loaded_checkpoint
        self.exit_process = exit_process
        self.min_write_gap_s = min_write_gap_s
        self._lock = threading.Lock()
        self._state: dict[str, object] = {}  # the busy/idle columns not written yet
        self._tasks_done = 0
        # The tasks running now (one with the solo pool): key -> (name, wall and monotonic start).
        self._running: dict[str, tuple[str, datetime, float]] = {}
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Register this process (a restart under the same name replaces the row) and beat.
        It counts as live from now, and as free to take work from its first `idle()`."""
        now = utcnow()
        values = {
            "queues": self.queues, "device": self.device, "pid": os.getpid(), "checkpoint": None,
            "started_at": now, "beat_at": now, "busy_since": None, "idle_since": None,
            "task": None, "tasks_done": 0, "stopped_at": None,
        }  # fmt: skip
        with self.factory() as session, session.begin():
            if not insert_ignore(
                session, Worker, [{"name": self.name, **values}], conflict_columns=["name"]
            ):
                session.execute(update(Worker).where(Worker.name == self.name).values(**values))
        self._thread = threading.Thread(target=self._run, name="editloop-heartbeat", daemon=True)
        self._thread.start()

    def busy(self, task: str, key: str = "") -> None:
        """Mark the start of a task (before the task marks its attempts started). With several
        at once (a threads pool), busy since the oldest running."""
        with self._lock:
            self._running[key] = (task, utcnow(), time.monotonic())
            name, since, _ = min(self._running.values(), key=lambda running: running[1])
            self._state = {"busy_since": since, "idle_since": None, "task": name}
        self._changed.set()

    def idle(self, key: str = "", *, first: bool = False) -> None:
        """Mark the end of a task (`first`: that the worker now consumes): whatever a task left
        unfinished is now the controller's to send again."""
        with self._lock:
            self._running.pop(key, None)
            self._tasks_done += 0 if first else 1
            if self._running:  # still busy with the others
                name, since, _ = min(self._running.values(), key=lambda running: running[1])
                self._state = {"busy_since": since, "task": name, "tasks_done": self._tasks_done}
            else:
                self._state = {"busy_since": None, "idle_since": utcnow(), "task": None,
                               "tasks_done": self._tasks_done}  # fmt: skip
        self._changed.set()

    def beat(self) -> None:
        """Write the heartbeat now, with the checkpoint loaded and the marks not written yet."""
        with self._lock:
            state, self._state = self._state, {}
        if not self._write(beat_at=utcnow(), checkpoint=self.loaded_checkpoint(), **state):
            with self._lock:  # written by nobody: keep them for the next beat, unless superseded
                self._state = state | self._state

    def stop(self) -> None:
        """Stop beating and mark the row stopped (its attempts are sent again at once)."""
        self._stop.set()
        self._changed.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.interval_s + 5)
        self._write(stopped_at=utcnow(), busy_since=None, idle_since=None, task=None,
                    tasks_done=self._tasks_done)  # fmt: skip

    def overdue(self) -> tuple[str, float] | None:
        """The task running longest and its seconds, when that exceeds the time limit."""
        with self._lock:
            running = list(self._running.values())
        if not running or self.time_limit_s is None:
            return None
        name, _, started = min(running, key=lambda task: task[2])
        elapsed = time.monotonic() - started
        return (name, elapsed) if elapsed > self.time_limit_s else None

    def _run(self) -> None:
        tick = min(self.interval_s, 1.0)  # the watchdog looks at least once a second
        next_beat = 0.0
        while not self._stop.is_set():
            changed = self._changed.wait(tick)
            if self._stop.is_set():
                return
            overdue = self.overdue()
            if overdue is not None:
                self._end_overdue(*overdue)
                return
            if changed or time.monotonic() >= next_beat:
                self._changed.clear()
                self.beat()
                next_beat = time.monotonic() + self.interval_s
                # Coalesce a burst of short tasks into one write.
                self._stop.wait(self.min_write_gap_s)

    def _end_overdue(self, task: str, elapsed: float) -> None:
        log.critical(
            "watchdog: task %s has run %.0f s, over EDITLOOP_WORKER__TIME_LIMIT_S=%g; exiting "
            "worker %s so that its batch is sent again (raise the limit if such batches are "
            "normal)",
            task, elapsed, self.time_limit_s, self.name,
        )  # fmt: skip
        self._write(stopped_at=utcnow())
        logging.shutdown()
        self.exit_process(WATCHDOG_EXIT_CODE)

    def _write(self, **values: object) -> bool:
        # Best effort: a database that is down must not kill the worker (its tasks retry); a
        # missed beat only makes the controller resend a batch, which changes nothing twice.
        try:
            with self.factory() as session, session.begin():
                session.execute(update(Worker).where(Worker.name == self.name).values(**values))
            return True
        except (SQLAlchemyError, DatabaseUnavailable, OSError) as exc:
            log.warning("worker %s: could not update its row (%s)", self.name, exc)
            return False


def commit_without_waiting(factory: sessionmaker[Session]) -> None:
    """Make the worker's PostgreSQL transactions commit without waiting for the disk
    (`synchronous_commit = off`; SQLite's WAL mode with synchronous=NORMAL does the same).

    Atomic and consistent all the same; a database crash may lose the last fraction of a second
    of a worker's writes, which the controller then sends again (every stage is idempotent, and
    the controller's own commits, which act on those writes, flush them). An fsync per commit is
    the largest part of a worker's database time.
    """
    engine = factory.kw["bind"]
    if engine.dialect.name != "postgresql":
        return

    @event.listens_for(engine, "connect")
    def _no_wait(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True  # a SET in a transaction would be rolled back
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET synchronous_commit = off")
        dbapi_connection.autocommit = autocommit

    engine.dispose()  # connections opened before get it too


def connect_to_celery(presence: Presence) -> None:
    """Mark the worker busy and idle around every task it runs (Celery's task signals)."""
    from celery.signals import task_postrun, task_prerun

    def before(sender: object = None, task_id: str = "", **_: object) -> None:
        presence.busy(getattr(sender, "name", "task"), task_id)

    def after(task_id: str = "", **_: object) -> None:
        presence.idle(task_id)

    task_prerun.connect(before, weak=False)
    task_postrun.connect(after, weak=False)
