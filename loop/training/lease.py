"""The lease protocol of training jobs: claim, renew, end, and a thread that keeps a lease.

Training outlives any broker's redelivery timeout, so it is not a Celery task: a trainer claims
a `train_job` row (`SELECT … FOR UPDATE SKIP LOCKED`, then a conditional UPDATE, which is also
the whole claim on SQLite, where there are no row locks) and holds a lease that a background
thread renews while the job runs, recording the recipe's progress step. A lapsed lease makes the
job claimable again. A job whose trainer keeps dying (OOM, say) is not re-claimed forever: once
it was claimed `max_claims` times, the next claimer marks it failed instead.
"""

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from loop.training.launcher import LAUNCHER_LOG, job_folder
from store.db import with_db_retry
from store.models import TrainJob, TrainJobStatus, utcnow

log = logging.getLogger(__name__)


def _claimable(now: Any) -> Any:
    return or_(
        TrainJob.status == TrainJobStatus.QUEUED,
        and_(TrainJob.status == TrainJobStatus.RUNNING, TrainJob.lease_expires_at < now),
    )


def claim_job(
    factory: sessionmaker[Session], *, owner: str, lease_s: float, max_claims: int
) -> int | None:
    """Claim the oldest queued job, or a running one whose lease lapsed; its id, or None.

    A claimable job already claimed `max_claims` times is marked failed instead (its trainer
    keeps dying), and the next one is looked at."""
    if max_claims <= 0:
        raise ValueError(f"max_claims={max_claims}: at least 1 (training.max_claims)")

    def claim() -> int | None:
        races = 0
        # One row locked at a time: locking several would hide all of them from the other
        # claimers (SKIP LOCKED) while this one takes only the first.
        while races < 8:
            now = utcnow()
            with factory() as session, session.begin():
                row = session.execute(
                    select(TrainJob.id, TrainJob.claims)
                    .where(_claimable(now))
                    .order_by(TrainJob.id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).first()
                if row is None:
                    return None
                job_id, claims = row
                # The condition again in each UPDATE: on SQLite (no row locks) it is the claim.
                if claims >= max_claims:
                    failed = session.execute(
                        update(TrainJob)
                        .where(
                            TrainJob.id == job_id, _claimable(now), TrainJob.claims >= max_claims
                        )
                        .values(
                            status=TrainJobStatus.FAILED,
                            lease_expires_at=None,
                            error=_kept_dying(job_id, claims, max_claims),
                        )
                    )
                    if failed.rowcount == 1:
                        log.warning("job %d: claimed %d times, marked failed", job_id, claims)
                        # Not a race: one claimable job fewer. Look at the next one.
                        continue
                else:
                    claimed = session.execute(
                        update(TrainJob)
                        .where(TrainJob.id == job_id, _claimable(now), TrainJob.claims < max_claims)
                        .values(
                            status=TrainJobStatus.RUNNING,
                            lease_owner=owner,
                            lease_expires_at=now + timedelta(seconds=lease_s),
                            claims=TrainJob.claims + 1,
                        )
                    )
                    if claimed.rowcount == 1:
                        return job_id
            # Another claimer took it between our SELECT and our UPDATE (SQLite): look again.
            races += 1
        return None

    return with_db_retry(claim, what="claiming a train job")


def _kept_dying(job_id: int, claims: int, max_claims: int) -> str:
    log_file = job_folder(Path(), job_id) / LAUNCHER_LOG
    return (
        f"claimed {claims} times (training.max_claims={max_claims}) and its trainer kept dying "
        f"before the job ended (out of memory? killed?): read the last launcher log, {log_file} "
        "in the trainer's work_dir, and fix the cause (out of memory: a smaller "
        "recipe.micro_batch_size or zero_stage 3), or raise training.max_claims"
    )


def renew_lease(
    factory: sessionmaker[Session],
    job_id: int,
    *,
    owner: str,
    lease_s: float,
    progress_step: int | None = None,
) -> bool:
    """Extend the lease (and record progress); False when the job is no longer ours."""
    values: dict[str, Any] = {"lease_expires_at": utcnow() + timedelta(seconds=lease_s)}
    if progress_step is not None:
        values["progress_step"] = progress_step
    return _update_held_job(factory, job_id, owner, values)


def end_job(
    factory: sessionmaker[Session],
    job_id: int,
    *,
    owner: str,
    status: TrainJobStatus,
    error: str | None = None,
    progress_step: int | None = None,
) -> bool:
    """Set a job we hold to `status` (queued releases it for another try); False if not ours."""
    values: dict[str, Any] = {"status": status, "error": error, "lease_expires_at": None}
    if status == TrainJobStatus.QUEUED:
        values["lease_owner"] = None
        # A release is not a death: the claim is given back, so that transient failures (the
        # store down) do not count towards `max_claims`.
        values["claims"] = TrainJob.claims - 1
    if progress_step is not None:
        values["progress_step"] = progress_step
    return _update_held_job(factory, job_id, owner, values)


def _update_held_job(
    factory: sessionmaker[Session], job_id: int, owner: str, values: dict[str, Any]
) -> bool:
    """Update a running job only while `owner` holds it; False when it is no longer ours."""
    with factory() as session, session.begin():
        changed = session.execute(
            update(TrainJob)
            .where(
                TrainJob.id == job_id,
                TrainJob.lease_owner == owner,
                TrainJob.status == TrainJobStatus.RUNNING,
            )
            .values(**values)
        )
        return changed.rowcount == 1


class LeaseKeeper:
    """A thread renewing a job's lease every `renew_s` with the step read from `progress`.

    `lost` is set when the job was taken from us, or when no renewal succeeded for a whole lease
    (the database unreachable: by then another trainer may hold it).
    """

    def __init__(
        self,
        factory: sessionmaker[Session],
        job_id: int,
        *,
        owner: str,
        lease_s: float,
        renew_s: float,
        progress: Callable[[], int | None],
    ) -> None:
        self.factory = factory
        self.job_id = job_id
        self.owner = owner
        self.lease_s = lease_s
        self.renew_s = renew_s
        self.progress = progress
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        last_renewed = time.monotonic()
        while not self._stop.wait(self.renew_s):
            try:
                ours = renew_lease(
                    self.factory,
                    self.job_id,
                    owner=self.owner,
                    lease_s=self.lease_s,
                    progress_step=self.progress(),
                )
            except Exception:  # noqa: BLE001 - keep trying until the lease is surely gone
                log.warning("renewing the lease of job %d failed", self.job_id, exc_info=True)
                if time.monotonic() - last_renewed > self.lease_s:
                    self.lost.set()
                    return
                continue
            if not ours:
                log.warning("job %d was taken over by another trainer", self.job_id)
                self.lost.set()
                return
            last_renewed = time.monotonic()
