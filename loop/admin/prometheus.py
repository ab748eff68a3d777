"""`/metrics`: a Prometheus collector that reads the database at scrape time.

Nothing is counted in the process: every figure is a query over the rows (gauges of current
counts; latency histograms built from the seconds stored on attempts and judgments), so any
number of admin replicas report the same values and a restart loses nothing.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.core import (
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, sessionmaker

from loop.admin.queries.common import effective_verdict
from loop.admin.queries.runs import round_durations
from loop.checkpoints import latest_promoted
from store.models import (
    Attempt,
    AttemptStatus,
    Judgment,
    Round,
    Run,
    Task,
    TrainJob,
    TrainJobStatus,
    utcnow,
)

# Seconds; edits of a large editor on one GPU take seconds to a minute, a judge a few seconds.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BACKLOG = (
    AttemptStatus.PENDING,
    AttemptStatus.DISPATCHED,
    AttemptStatus.EDITED,
    AttemptStatus.JUDGING,
)


@dataclass(frozen=True)
class Histogram:
    """Cumulative counts at each bucket's upper bound, the total count and the sum."""

    buckets: list[tuple[float, int]]
    count: int
    total: float


@dataclass(frozen=True)
class Figures:
    """Everything one scrape reports, read in one session."""

    attempts_by_status: dict[str, int]
    verdicts: list[tuple[str, int, str, str, int]]  # run, round, edit type, verdict, count
    overrides: list[tuple[str, int, int, int]]  # run, round, overrides, disagreements
    lapsed: int  # sent attempts not started by their pickup deadline
    train_jobs_by_status: dict[str, int]
    round_durations: list[tuple[str, int, float, bool]]
    edit_seconds: Histogram
    judge_seconds: Histogram
    live_checkpoint: tuple[int, str] | None


def _histogram(session: Session, column, where=None) -> Histogram:  # type: ignore[no-untyped-def]
    query = select(
        func.count(column),
        func.coalesce(func.sum(column), 0.0),
        *(func.sum(case((column <= bound, 1), else_=0)) for bound in LATENCY_BUCKETS),
    ).where(column.is_not(None))
    if where is not None:
        query = query.where(where)
    count, total, *cumulative = session.execute(query).one()
    return Histogram(
        buckets=[
            (bound, int(n or 0)) for bound, n in zip(LATENCY_BUCKETS, cumulative, strict=True)
        ],
        count=int(count),
        total=float(total),
    )


def read_figures(session: Session) -> Figures:
    """One scrape's figures (a handful of aggregate queries)."""
    attempts = dict.fromkeys((s.value for s in AttemptStatus), 0)
    for status, n in session.execute(select(Attempt.status, func.count()).group_by(Attempt.status)):
        attempts[status.value] = n
    verdict = effective_verdict()
    verdicts = [
        (run, number, edit_type, str(getattr(value, "value", value)), n)
        for run, number, edit_type, value, n in session.execute(
            select(Run.name, Round.number, Task.edit_type, verdict, func.count())
            .select_from(Attempt)
            .join(Round, Round.id == Attempt.round_id)
            .join(Run, Run.id == Round.run_id)
            .join(Task, Task.id == Attempt.task_id)
            .outerjoin(Judgment, Judgment.attempt_id == Attempt.id)
            .where(verdict.is_not(None))
            .group_by(Run.name, Round.number, Task.edit_type, verdict)
        )
    ]
    differs = Judgment.override_verdict != Judgment.verdict
    overrides = [
        (run, number, n, int(d or 0))
        for run, number, n, d in session.execute(
            select(Run.name, Round.number, func.count(), func.sum(case((differs, 1), else_=0)))
            .select_from(Judgment)
            .join(Attempt, Attempt.id == Judgment.attempt_id)
            .join(Round, Round.id == Attempt.round_id)
            .join(Run, Run.id == Round.run_id)
            .where(Judgment.override_verdict.is_not(None))
            .group_by(Run.name, Round.number)
        )
    ]
    lapsed = session.scalar(
        select(func.count())
        .select_from(Attempt)
        .where(Attempt.status.in_(BACKLOG), Attempt.dispatch_deadline < utcnow())
    )
    jobs = dict.fromkeys((s.value for s in TrainJobStatus), 0)
    for status, n in session.execute(
        select(TrainJob.status, func.count()).group_by(TrainJob.status)
    ):
        jobs[status.value] = n
    live = latest_promoted(session)
    return Figures(
        attempts_by_status=attempts,
        verdicts=verdicts,
        overrides=overrides,
        lapsed=lapsed or 0,
        train_jobs_by_status=jobs,
        round_durations=round_durations(session),
        edit_seconds=_histogram(session, Attempt.edit_seconds),
        judge_seconds=_histogram(session, Judgment.latency_s),
        live_checkpoint=(live.id, live.version) if live is not None else None,
    )


def metric_families(figures: Figures) -> list[Metric]:
    """The Prometheus metric families of one scrape's figures."""
    attempts = GaugeMetricFamily("editloop_attempts", "Attempts by status.", labels=["status"])
    for status, n in sorted(figures.attempts_by_status.items()):
        attempts.add_metric([status], n)
    backlog = GaugeMetricFamily(
        "editloop_dispatch_backlog",
        "Attempts not finished yet, by the stage they wait in.",
        labels=["status"],
    )
    for status in BACKLOG:
        backlog.add_metric([status.value], figures.attempts_by_status.get(status.value, 0))
    lapsed = GaugeMetricFamily(
        "editloop_dispatch_lapsed",
        "Sent attempts no worker has started within the pickup timeout (queued behind busy "
        "workers, or lost: the controller sends those again when a worker is free).",
        value=figures.lapsed,
    )
    verdicts = GaugeMetricFamily(
        "editloop_verdicts",
        "Attempts by verdict (a reviewer's override, else the judge's), round and edit type.",
        labels=["run", "round", "edit_type", "verdict"],
    )
    for run, number, edit_type, verdict, n in figures.verdicts:
        verdicts.add_metric([run, str(number), edit_type, verdict], n)
    overrides = GaugeMetricFamily(
        "editloop_judge_overrides", "Verdicts a reviewer overrode.", labels=["run", "round"]
    )
    disagreements = GaugeMetricFamily(
        "editloop_judge_disagreements",
        "Overrides that differ from the judge's verdict.",
        labels=["run", "round"],
    )
    for run, number, n, d in figures.overrides:
        overrides.add_metric([run, str(number)], n)
        disagreements.add_metric([run, str(number)], d)
    jobs = GaugeMetricFamily("editloop_train_jobs", "Training jobs by status.", labels=["status"])
    for status, n in sorted(figures.train_jobs_by_status.items()):
        jobs.add_metric([status], n)
    durations = GaugeMetricFamily(
        "editloop_round_duration_seconds",
        "Wall time of each round (an open round: so far).",
        labels=["run", "round", "finished"],
    )
    for run, number, seconds, finished in figures.round_durations:
        durations.add_metric([run, str(number), str(finished).lower()], seconds)
    live = InfoMetricFamily(
        "editloop_live_checkpoint", "The checkpoint rounds edit with now (base: none promoted)."
    )
    live_id = GaugeMetricFamily(
        "editloop_live_checkpoint_id",
        "Row id of the live checkpoint (0: the base editor).",
        value=figures.live_checkpoint[0] if figures.live_checkpoint else 0,
    )
    live.add_metric(
        [], {"version": figures.live_checkpoint[1] if figures.live_checkpoint else "base"}
    )
    return [
        attempts,
        backlog,
        lapsed,
        verdicts,
        overrides,
        disagreements,
        jobs,
        durations,
        _histogram_family(
            "editloop_edit_seconds", "Seconds per edit (stored).", figures.edit_seconds
        ),
        _histogram_family(
            "editloop_judge_seconds",
            "Seconds per judgment, scorer and reflector (stored).",
            figures.judge_seconds,
        ),
        live,
        live_id,
    ]


def _histogram_family(name: str, documentation: str, histogram: Histogram) -> Metric:
    buckets: Sequence[tuple[str, float]] = [
        *((repr(bound), n) for bound, n in histogram.buckets),
        ("+Inf", histogram.count),
    ]
    return HistogramMetricFamily(
        name, documentation, buckets=list(buckets), sum_value=histogram.total
    )


class DatabaseCollector(Collector):
    """Reads the figures from the database on every scrape."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def collect(self) -> Iterator[Metric]:
        with self.factory() as session:
            figures = read_figures(session)
        yield from metric_families(figures)


def build_registry(factory: sessionmaker[Session]) -> CollectorRegistry:
    """A registry holding only editloop's database collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(factory))
    return registry
