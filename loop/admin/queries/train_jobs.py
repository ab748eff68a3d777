"""Reads of training jobs: status, claims, lease, progress, the launcher log's tail."""

from pathlib import Path
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from loop.admin.queries.common import NotFound
from loop.admin.records import (
    TrainJobDetail,
    TrainJobPage,
    TrainJobRow,
)
from loop.training.launcher import LAUNCHER_LOG, job_folder
from store.models import (
    Checkpoint,
    Run,
    TrainJob,
)


def list_train_jobs(
    session: Session, *, limit: int = 100, before: int | None = None
) -> TrainJobPage:
    """Training jobs, newest first."""
    query = _train_job_query().order_by(TrainJob.id.desc()).limit(limit + 1)
    if before is not None:
        query = query.where(TrainJob.id < before)
    rows = [_train_job_row(*row) for row in session.execute(query)]
    total = session.scalar(select(func.count()).select_from(TrainJob)) or 0
    more = len(rows) > limit
    rows = rows[:limit]
    return TrainJobPage(items=rows, total=total, next_before=rows[-1].id if more else None)


def _train_job_query() -> Select[Any]:
    return (
        select(TrainJob, Run.name, Checkpoint.version)
        .outerjoin(Run, Run.id == TrainJob.run_id)
        .outerjoin(Checkpoint, Checkpoint.id == TrainJob.checkpoint_id)
    )


def _train_job_row(job: TrainJob, run_name: str | None, version: str | None) -> TrainJobRow:
    return TrainJobRow(
        id=job.id,
        run_id=job.run_id,
        run_name=run_name,
        status=job.status.value,
        claims=job.claims,
        lease_owner=job.lease_owner,
        lease_expires_at=job.lease_expires_at,
        progress_step=job.progress_step,
        checkpoint_id=job.checkpoint_id,
        checkpoint_version=version,
        error=job.error,
        data_filter=dict(job.data_filter),
        created_at=job.created_at,
        updated_at=job.updated_at,
    )


def train_job_detail(
    session: Session, *, job_id: int, work_dir: Path | None, lines: int = 40
) -> TrainJobDetail:
    """A job with the tail of its launcher log, when its folder is readable from here (on a
    deployment the trainer's work_dir must be shared; the error keeps the tail of a failure)."""
    found = session.execute(_train_job_query().where(TrainJob.id == job_id)).first()
    if found is None:
        raise NotFound(f"train job {job_id} not found")
    path = job_folder(work_dir, job_id) / LAUNCHER_LOG if work_dir is not None else None
    tail = ""
    if path is not None and path.is_file():
        tail = "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return TrainJobDetail(
        job=_train_job_row(*found), log_tail=tail, log_path=str(path) if path else ""
    )
