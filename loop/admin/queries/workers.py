"""Reads of the worker table: each worker process's heartbeat, state and what it holds."""

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from loop.admin.records import WorkerPage, WorkerRow
from loop.liveness import WorkerState, is_live
from store.models import Attempt, AttemptStatus, Worker, utcnow


def worker_state(row: Worker, *, live: bool) -> str:
    """busy, idle, starting, stopped, or lapsed (no beat within the heartbeat timeout)."""
    if row.stopped_at is not None:
        return "stopped"
    if not live:
        return "lapsed"
    if row.busy_since is not None:
        return "busy"
    return "idle" if row.idle_since is not None else "starting"


def list_workers(
    session: Session, *, heartbeat_timeout_s: float, now: datetime | None = None
) -> WorkerPage:
    """Every worker row, live ones first; `heartbeat_timeout_s` decides which are live (the
    controller's rule, `loop.liveness.is_live`)."""
    now = now or utcnow()
    holding = dict(
        session.execute(
            select(Attempt.worker, func.count())
            .where(
                Attempt.status.in_((AttemptStatus.DISPATCHED, AttemptStatus.EDITED)),
                Attempt.started_at.is_not(None),
            )
            .group_by(Attempt.worker)
        ).all()
    )
    rows = []
    for worker in session.scalars(select(Worker)):
        state = WorkerState(
            worker.name, (), worker.beat_at, worker.busy_since, worker.idle_since, worker.stopped_at
        )
        live = is_live(state, now=now, heartbeat_timeout_s=heartbeat_timeout_s)
        rows.append(
            WorkerRow(
                name=worker.name,
                state=worker_state(worker, live=live),
                live=live,
                queues=worker.queues,
                device=worker.device,
                pid=worker.pid,
                checkpoint=worker.checkpoint,
                task=worker.task,
                holding=holding.get(worker.name, 0),
                tasks_done=worker.tasks_done,
                started_at=worker.started_at,
                beat_at=worker.beat_at,
                beat_age_s=max(0.0, (now - worker.beat_at).total_seconds()),
                busy_since=worker.busy_since,
                idle_since=worker.idle_since,
                stopped_at=worker.stopped_at,
            )
        )
    rows.sort(key=lambda r: (not r.live, r.name))
    return WorkerPage(
        items=rows,
        total=len(rows),
        live=sum(r.live for r in rows),
        heartbeat_timeout_s=heartbeat_timeout_s,
    )
