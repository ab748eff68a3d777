"""What the metadata database holds, counted: the `editloop status` report."""

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from store.models import Attempt, Checkpoint, Judgment, Round, Run, Task
from store.taxonomy import Verdict


@dataclass(frozen=True)
class StatusReport:
    tasks: int
    runs: int
    rounds: int
    attempts_by_status: dict[str, int]
    samples: int  # accepted (Success) edits, the pool the trainer learns from
    checkpoints_by_status: dict[str, int]


def collect_status(session: Session) -> StatusReport:
    """Count tasks, runs, rounds, attempts by status, accepted samples and checkpoints by status."""

    def count(model: type) -> int:
        return session.scalar(select(func.count()).select_from(model)) or 0

    def by_status(column) -> dict[str, int]:  # type: ignore[no-untyped-def]
        rows = session.execute(select(column, func.count()).group_by(column))
        return {str(status.value): n for status, n in rows}

    samples = session.scalar(
        select(func.count()).select_from(Judgment).where(Judgment.verdict == Verdict.SUCCESS)
    )
    return StatusReport(
        tasks=count(Task),
        runs=count(Run),
        rounds=count(Round),
        attempts_by_status=by_status(Attempt.status),
        samples=samples or 0,
        checkpoints_by_status=by_status(Checkpoint.status),
    )


def round_metrics_of(session: Session, run_id: int) -> list[dict[str, float]]:
    """The stored metrics of a run's rounds, in order."""
    return [
        dict(metrics)
        for metrics in session.scalars(
            select(Round.metrics).where(Round.run_id == run_id).order_by(Round.number)
        )
    ]
