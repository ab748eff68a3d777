"""Reads of runs and rounds: the runs page, a run's rounds and charts, a round's figures."""

from collections import defaultdict

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from loop.admin.queries.common import NotFound, effective_verdict
from loop.admin.records import (
    JudgeHealth,
    RoundCheckpoint,
    RoundDetail,
    RoundRow,
    RunDetail,
    RunPage,
    RunRow,
    SlowAttempt,
    TypeFigures,
)
from loop.metrics import JUDGE_HEALTH_KEYS, round_metrics, round_records
from store.models import (
    Attempt,
    Checkpoint,
    Judgment,
    Round,
    RoundStatus,
    Run,
    utcnow,
)
from store.taxonomy import Verdict


def list_runs(session: Session, *, limit: int = 100, before: int | None = None) -> RunPage:
    """Runs, newest first, with progress, acceptance and each round's checkpoint."""
    query = select(Run).order_by(Run.id.desc()).limit(limit + 1)
    if before is not None:
        query = query.where(Run.id < before)
    runs = list(session.scalars(query))
    more = len(runs) > limit
    runs = runs[:limit]
    rows = _run_rows(session, runs)
    total = session.scalar(select(func.count()).select_from(Run)) or 0
    return RunPage(items=rows, total=total, next_before=runs[-1].id if more else None)


def _run_rows(session: Session, runs: list[Run]) -> list[RunRow]:
    ids = [run.id for run in runs]
    if not ids:
        return []
    rounds: dict[int, list[RoundCheckpoint]] = defaultdict(list)
    finished: dict[int, int] = defaultdict(int)
    for run_id, number, status, checkpoint_id, version in session.execute(
        select(Round.run_id, Round.number, Round.status, Round.checkpoint_id, Checkpoint.version)
        .outerjoin(Checkpoint, Checkpoint.id == Round.checkpoint_id)
        .where(Round.run_id.in_(ids))
        .order_by(Round.run_id, Round.number)
    ):
        rounds[run_id].append(RoundCheckpoint(number, checkpoint_id, version))
        finished[run_id] += status == RoundStatus.FINISHED
    verdict = effective_verdict()
    counts = {
        run_id: (attempts, judged or 0, accepted or 0)
        for run_id, attempts, judged, accepted in session.execute(
            select(
                Round.run_id,
                func.count(Attempt.id),
                func.count(Judgment.id),
                func.sum(case((verdict == Verdict.SUCCESS.value, 1), else_=0)),
            )
            .select_from(Attempt)
            .join(Round, Round.id == Attempt.round_id)
            .outerjoin(Judgment, Judgment.attempt_id == Attempt.id)
            .where(Round.run_id.in_(ids))
            .group_by(Round.run_id)
        )
    }
    rows = []
    for run in runs:
        attempts, judged, accepted = counts.get(run.id, (0, 0, 0))
        rows.append(
            RunRow(
                id=run.id,
                name=run.name,
                status=run.status.value,
                created_at=run.created_at,
                updated_at=run.updated_at,
                rounds=len(rounds[run.id]),
                rounds_finished=finished[run.id],
                attempts=attempts,
                judged=judged,
                accepted=accepted,
                acceptance=accepted / judged if judged else 0.0,
                round_checkpoints=rounds[run.id],
            )
        )
    return rows


RUN_NAMES = select(Run.id, Run.name).order_by(Run.id.desc())


def run_names(session: Session) -> list[tuple[int, str]]:
    """(id, name) of every run, newest first (for the filter form)."""
    return [(i, n) for i, n in session.execute(RUN_NAMES)]


def find_run(session: Session, *, ref: str) -> Run:
    """The run named `ref`, else the run whose id is `ref` (CLI arguments take either)."""
    run = session.scalar(select(Run).where(Run.name == ref))
    if run is None and ref.isdigit():
        run = session.get(Run, int(ref))
    if run is None:
        raise NotFound(f"run {ref!r} not found (give a run name or id; `editloop runs` lists them)")
    return run


def get_run(session: Session, run_id: int) -> Run:
    """The run with id `run_id`; `NotFound` names it when there is none."""
    run = session.get(Run, run_id)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    return run


def run_detail(session: Session, *, run_id: int) -> RunDetail:
    """A run, its stored config and every round with its metrics (the run page's charts)."""
    run = get_run(session, run_id)
    return RunDetail(
        run=_run_rows(session, [run])[0],
        config=dict(run.config),
        rounds=list_rounds(session, run_id=run_id),
    )


def list_rounds(session: Session, *, run_id: int) -> list[RoundRow]:
    """The rounds of a run in order, with their metrics."""
    get_run(session, run_id)
    rounds = list(
        session.execute(
            select(Round, Checkpoint.version)
            .outerjoin(Checkpoint, Checkpoint.id == Round.checkpoint_id)
            .where(Round.run_id == run_id)
            .order_by(Round.number)
        )
    )
    overrides = _override_counts(session, [round_.id for round_, _ in rounds])
    return [
        _round_row(session, round_, version, overrides.get(round_.id, (0, 0)))
        for round_, version in rounds
    ]


def _override_counts(session: Session, round_ids: list[int]) -> dict[int, tuple[int, int]]:
    """(overrides, disagreements with the judge) per round: live, since reviewers add them after
    the round's metrics were stored."""
    if not round_ids:
        return {}
    differs = Judgment.override_verdict != Judgment.verdict
    return {
        round_id: (overrides, disagreements or 0)
        for round_id, overrides, disagreements in session.execute(
            select(
                Attempt.round_id,
                func.count(Judgment.override_verdict),
                func.sum(case((differs, 1), else_=0)),
            )
            .join(Judgment, Judgment.attempt_id == Attempt.id)
            .where(Attempt.round_id.in_(round_ids), Judgment.override_verdict.is_not(None))
            .group_by(Attempt.round_id)
        )
    }


def _round_row(
    session: Session, round_: Round, version: str | None, overrides: tuple[int, int]
) -> RoundRow:
    end = round_.finished_at or utcnow()
    duration = (end - round_.started_at).total_seconds()
    metrics = dict(round_.metrics)
    if round_.status != RoundStatus.FINISHED or not all(k in metrics for k in JUDGE_HEALTH_KEYS):
        # Live for an open round; recomputed for one finished before judge health was measured.
        wall = metrics.get("round/wall_seconds", duration)
        metrics = round_metrics(round_records(session, round_id=round_.id), wall_seconds=wall)
    metrics["judge/overrides"], metrics["judge/disagreements"] = overrides
    judgments = metrics.get("judge/judgments", 0)
    metrics["judge/disagreement_rate"] = overrides[1] / judgments if judgments else 0.0
    return RoundRow(
        run_id=round_.run_id,
        number=round_.number,
        status=round_.status.value,
        checkpoint_id=round_.checkpoint_id,
        checkpoint_version=version,
        started_at=round_.started_at,
        finished_at=round_.finished_at,
        duration_s=duration,
        attempts=int(metrics.get("attempts/total", 0)),
        metrics=metrics,
    )


def round_detail(session: Session, *, run_id: int, number: int, slowest: int = 10) -> RoundDetail:
    """A round's metrics table by edit type, judge health and its slowest attempts."""
    run = get_run(session, run_id)
    found = session.execute(
        select(Round, Checkpoint.version)
        .outerjoin(Checkpoint, Checkpoint.id == Round.checkpoint_id)
        .where(Round.run_id == run_id, Round.number == number)
    ).first()
    if found is None:
        raise NotFound(f"round {number} of run {run_id} not found")
    round_, version = found
    row = _round_row(
        session, round_, version, _override_counts(session, [round_.id]).get(round_.id, (0, 0))
    )
    total = func.coalesce(Attempt.edit_seconds, 0.0) + func.coalesce(Judgment.latency_s, 0.0)
    slow = session.execute(
        select(Attempt.id, Attempt.task_id, Attempt.depth, Attempt.edit_seconds, Judgment.latency_s)
        .outerjoin(Judgment, Judgment.attempt_id == Attempt.id)
        .where(Attempt.round_id == round_.id)
        .order_by(total.desc(), Attempt.id)
        .limit(slowest)
    )
    return RoundDetail(
        run_id=run.id,
        run_name=run.name,
        round=row,
        by_type=type_figures(row.metrics),
        judge_health=judge_health_of(row.metrics),
        slowest=[
            SlowAttempt(id_, task, depth, edit, judge, (edit or 0.0) + (judge or 0.0))
            for id_, task, depth, edit, judge in slow
        ],
    )


def type_figures(metrics: dict[str, float]) -> list[TypeFigures]:
    """The per-edit-type rows of a round's metrics (`by_type/<type>/...` keys), by type name."""
    types = sorted({key.split("/")[1] for key in metrics if key.startswith("by_type/")})

    def get(edit_type: str, name: str) -> float:
        return float(metrics.get(f"by_type/{edit_type}/{name}", 0.0))

    return [
        TypeFigures(
            edit_type=t,
            judged=int(get(t, "count")),
            success_rate=get(t, "Success/rate"),
            reflection_rate=get(t, "Reflection/rate"),
            failed_rate=get(t, "Failed/rate"),
            following=get(t, "scores/following/mean"),
            quality=get(t, "scores/quality/mean"),
            preservation=get(t, "scores/preservation/mean"),
            overall=get(t, "scores/overall/mean"),
        )
        for t in types
    ]


def judge_health_of(metrics: dict[str, float]) -> JudgeHealth:
    """The judge-health figures of a round's metrics (`judge/...` keys)."""

    def get(name: str) -> float:
        return float(metrics.get(f"judge/{name}", 0.0))

    return JudgeHealth(
        judgments=int(get("judgments")),
        unparseable_rate=get("unparseable_rate"),
        capped_rate=get("capped_rate"),
        noop_trips=int(get("noop_trips")),
        reflector_invalid_rate=get("reflector_invalid_rate"),
        overrides=int(get("overrides")),
        disagreements=int(get("disagreements")),
        disagreement_rate=get("disagreement_rate"),
    )


def round_durations(session: Session) -> list[tuple[str, int, float, bool]]:
    """(run name, round number, seconds, finished) of every round; an open round counts to now."""
    now = utcnow()
    return [
        (name, number, ((finished or now) - started).total_seconds(), finished is not None)
        for name, number, started, finished in session.execute(
            select(Run.name, Round.number, Round.started_at, Round.finished_at)
            .join(Run, Run.id == Round.run_id)
            .order_by(Run.id, Round.number)
        )
    ]
