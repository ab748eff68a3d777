"""Thin Celery tasks: attempt ids in, results written to the database, next stage enqueued."""

from celery import shared_task

from store.db import DatabaseUnavailable
from store.objects import StoreUnavailable
from workers.context import get_worker_context
from workers.stages import edit_attempts, judge_attempts

# Only transient I/O is retried here; the controller re-dispatches anything lost beyond that.
_RETRY = {
    "autoretry_for": (DatabaseUnavailable, StoreUnavailable),
    "retry_backoff": True,
    "max_retries": 3,
}


@shared_task(name="editloop.edit_batch", ignore_result=True, **_RETRY)
def edit_batch(attempt_ids: list[int], batch: str | None = None) -> None:
    """Edit a batch of dispatched attempts, then send the edited ones to the judge queue (the
    same batch: one message in flight per batch, as flow control counts)."""
    edited = edit_attempts(get_worker_context(), attempt_ids, batch)
    if edited:
        judge_batch.delay(edited, batch)


@shared_task(name="editloop.judge_batch", ignore_result=True, **_RETRY)
def judge_batch(attempt_ids: list[int], batch: str | None = None) -> None:
    """Judge a batch of edited attempts; the controller reads the verdicts from the database."""
    judge_attempts(get_worker_context(), attempt_ids, batch)
