"""The admin's writes: stop a run, promote or reject a checkpoint by hand, override a verdict.

Each is one guarded UPDATE (the row's expected state is in its WHERE clause), so that two
reviewers at once, or a retried request, change the row once; asking for the state a row already
has changes nothing and says so. A reviewer's verdict is stored beside the judge's, never over it.
"""

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from loop.admin.queries.common import BadValue, NotFound
from loop.admin.records import WriteResult
from store.models import (
    Attempt,
    Checkpoint,
    CheckpointStatus,
    Judgment,
    Run,
    RunStatus,
    utcnow,
)
from store.taxonomy import Verdict

DECISIONS = {"promote": CheckpointStatus.PROMOTED, "reject": CheckpointStatus.REJECTED}


class Conflict(RuntimeError):
    """The row is in a state where the write does not apply; the message says why."""


def _required(field: str, value: str, limit: int) -> str:
    value = value.strip()
    if not value:
        raise BadValue(field, "must not be empty")
    if len(value) > limit:
        raise BadValue(field, f"{len(value)} characters, at most {limit}")
    return value


def stop_run(session: Session, *, run_id: int) -> WriteResult:
    """Mark a running run `stopped`: its controller exits after the pass it is in, and
    `editloop run --name NAME` resumes it."""
    run = session.get(Run, run_id)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    changed = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == RunStatus.RUNNING)
        .values(status=RunStatus.STOPPED, updated_at=utcnow())
    ).rowcount
    session.refresh(run)
    state = {"run_id": run.id, "name": run.name, "status": run.status.value}
    if changed:
        return WriteResult(
            True, f"run {run.name} stopped; resume it with `editloop run --name {run.name}`", state
        )
    if run.status == RunStatus.STOPPED:
        return WriteResult(False, f"run {run.name} was already stopped", state)
    raise Conflict(f"run {run_id} is {run.status.value}: only a running run can be stopped")


def decide_checkpoint(
    session: Session, *, checkpoint_id: int, decision: str, reviewer: str, reason: str
) -> WriteResult:
    """Promote or reject a published checkpoint by hand, recording who, why and when; the
    controller's next round edits with the latest promoted checkpoint."""
    if decision not in DECISIONS:
        raise BadValue("decision", f"{decision!r}: use promote or reject")
    reviewer = _required("reviewer", reviewer, 128)
    reason = _required("reason", reason, 4000)
    target = DECISIONS[decision]
    checkpoint = session.get(Checkpoint, checkpoint_id)
    if checkpoint is None:
        raise NotFound(f"checkpoint {checkpoint_id} not found")
    decidable = (CheckpointStatus.READY, CheckpointStatus.PROMOTED, CheckpointStatus.REJECTED)
    changed = session.execute(
        update(Checkpoint)
        .where(
            Checkpoint.id == checkpoint_id,
            Checkpoint.status.in_(decidable),
            Checkpoint.status != target,
        )
        .values(status=target, decided_by=reviewer, decision_reason=reason, decided_at=utcnow())
    ).rowcount
    session.refresh(checkpoint)
    state = {
        "checkpoint_id": checkpoint.id,
        "version": checkpoint.version,
        "status": checkpoint.status.value,
        "decided_by": checkpoint.decided_by,
    }
    if changed:
        return WriteResult(True, f"checkpoint {checkpoint.version} {target.value}", state)
    if checkpoint.status == target:
        return WriteResult(
            False, f"checkpoint {checkpoint.version} was already {target.value}", state
        )
    raise Conflict(
        f"checkpoint {checkpoint_id} is {checkpoint.status.value}: only a published (ready, "
        "promoted or rejected) checkpoint can be promoted or rejected"
    )


def override_verdict(
    session: Session, *, attempt_id: int, verdict: str, reviewer: str, reason: str
) -> WriteResult:
    """Store a reviewer's verdict beside the judge's: training pools prepared from now on and
    exports use it, and metrics count it as a disagreement when it differs from the judge's.
    Overriding again replaces the reviewer's verdict (an override equal to the judge's verdict
    takes the judge's side)."""
    try:
        wanted = Verdict(verdict)
    except ValueError:
        valid = ", ".join(v.value for v in Verdict)
        raise BadValue("verdict", f"{verdict!r} is not one of {valid}") from None
    reviewer = _required("reviewer", reviewer, 128)
    reason = _required("reason", reason, 4000)
    if session.get(Attempt, attempt_id) is None:
        raise NotFound(f"attempt {attempt_id} not found")
    judgment = session.scalar(select(Judgment).where(Judgment.attempt_id == attempt_id))
    if judgment is None:
        raise Conflict(
            f"attempt {attempt_id} has no judgment (its edit failed or is not judged yet): "
            "there is no judge's verdict to override"
        )
    changed = session.execute(
        update(Judgment)
        .where(
            Judgment.id == judgment.id,
            or_(
                Judgment.override_verdict.is_(None),
                Judgment.override_verdict != wanted,
                Judgment.override_reviewer != reviewer,
                Judgment.override_reason != reason,
            ),
        )
        .values(
            override_verdict=wanted,
            override_reviewer=reviewer,
            override_reason=reason,
            override_at=utcnow(),
        )
    ).rowcount
    session.refresh(judgment)
    state = {
        "attempt_id": attempt_id,
        "judge_verdict": judgment.verdict.value,
        "override_verdict": wanted.value,
        "override_reviewer": judgment.override_reviewer,
        "override_at": judgment.override_at.isoformat() if judgment.override_at else None,
    }
    if changed:
        return WriteResult(
            True,
            f"attempt {attempt_id}: {wanted.value} by {reviewer} (the judge said "
            f"{judgment.verdict.value})",
            state,
        )
    return WriteResult(False, f"attempt {attempt_id} already had this override", state)
