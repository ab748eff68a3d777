"""Which workers are alive and which sent attempts are lost, from the workers' heartbeats.

Pure functions over plain records (the controller and the admin read the rows). An attempt in
flight is lost when:

- a worker started it and that worker's heartbeat lapsed, it stopped or restarted, or it has
  gone idle or on to another task since (its task ended without a result): a slow but alive
  worker keeps it. A worker writes its busy and idle marks a moment late (its heartbeat
  thread does), so a mark older than the start says nothing yet;
- no worker started it, and a live worker consuming its queue has been free for the pickup
  timeout while it was sent: the message is gone (a broker restart, a lost send). The clock
  runs from when the batch could have been taken (it reached the head of the line with a worker
  free), not from when it was created, so a long queue behind busy workers never lapses;
- in-process (Celery's eager mode), once the pickup timeout passed since it was sent: nothing
  outside the controller can hold it.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

EDIT_QUEUE, JUDGE_QUEUE = "edit", "judge"


@dataclass(frozen=True)
class WorkerState:
    """A worker row as liveness needs it."""

    name: str
    queues: tuple[str, ...]
    beat_at: datetime
    busy_since: datetime | None  # its current task started then (None: not running one)
    idle_since: datetime | None  # free to take work since then (None: busy, starting, stopped)
    stopped_at: datetime | None = None
    started_at: datetime | None = None  # this process (a restart under the same name: later)


@dataclass(frozen=True)
class SentAttempt:
    """An attempt sent to a queue (dispatched: edit; edited: judge) as liveness needs it."""

    queue: str
    batch: str | None
    dispatched_at: datetime | None
    worker: str | None  # who started it (meaningful when started_at is set)
    started_at: datetime | None


def is_live(worker: WorkerState, *, now: datetime, heartbeat_timeout_s: float) -> bool:
    """Whether the worker runs: not stopped, and its last beat is recent enough."""
    return worker.stopped_at is None and worker.beat_at >= now - timedelta(
        seconds=heartbeat_timeout_s
    )


def live_workers(
    workers: Iterable[WorkerState], *, now: datetime, heartbeat_timeout_s: float
) -> list[WorkerState]:
    """The workers that are live now."""
    return [w for w in workers if is_live(w, now=now, heartbeat_timeout_s=heartbeat_timeout_s)]


def is_lost(
    attempt: SentAttempt,
    workers: Mapping[str, WorkerState],
    *,
    now: datetime,
    heartbeat_timeout_s: float,
    pickup_timeout_s: float,
    in_process: bool = False,
) -> bool:
    """Whether nothing will bring a result for `attempt`, so it must be sent again (module doc)."""
    if attempt.batch is None or attempt.dispatched_at is None:
        return True  # never sent as a batch (or sent before batches existed)
    pickup = timedelta(seconds=pickup_timeout_s)
    if in_process:
        return attempt.dispatched_at <= now - pickup
    if attempt.started_at is not None:
        holder = workers.get(attempt.worker or "")
        if holder is None or not is_live(holder, now=now, heartbeat_timeout_s=heartbeat_timeout_s):
            return True
        return any(
            moment is not None and moment > attempt.started_at
            for moment in (holder.started_at, holder.busy_since, holder.idle_since)
        )
    if attempt.dispatched_at > now - pickup:
        return False
    return any(
        attempt.queue in w.queues
        and w.idle_since is not None
        and w.idle_since <= now - pickup
        and is_live(w, now=now, heartbeat_timeout_s=heartbeat_timeout_s)
        for w in workers.values()
    )
