"""Round metrics as a pure function of plain attempt records (names as in the DB and the admin),
and the one reader that builds those records from a round's rows."""

from collections import Counter, defaultdict
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import Attempt, Judgment, Task

VERDICTS = ("Success", "Reflection", "Failed")
DIMENSIONS = ("following", "quality", "preservation", "overall")
# Keys that round_metrics writes since judge health was added: a stored dict without them was
# computed by an older version and is recomputed on read.
JUDGE_HEALTH_KEYS = (
    "judge/judgments",
    "judge/unparseable_rate",
    "judge/capped_rate",
    "judge/noop_trips",
    "judge/reflector_invalid_rate",
    "judge/overrides",
    "judge/disagreements",
    "judge/disagreement_rate",
)


@dataclass(frozen=True)
class AttemptRecord:
    """What metrics need of one attempt and its judgment (scores None when not parsed)."""

    task_id: int
    sample_index: int
    depth: int
    edit_type: str
    status: str
    verdict: str | None
    following: float | None = None
    quality: float | None = None
    preservation: float | None = None
    overall: float | None = None
    edit_seconds: float | None = None
    judge_seconds: float | None = None
    parse_status: str | None = None  # None: no judgment (the edit failed, or not judged yet)
    reason: str | None = None  # the verdict rule's "<code>: <detail>"
    reflector_tag: str | None = None  # Success | Failed | Reflection | Invalid; None: none asked
    override_verdict: str | None = None  # a reviewer's verdict beside the judge's
    checkpoint_id: int | None = None  # the checkpoint it edited with (None: base)
    staleness: int | None = None  # checkpoints behind (see `staleness_figures`); None: not edited


def _rate(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def noop_tripped(reason: str | None) -> bool:
    """Whether the verdict rule's no-op guard fired: the edit failed as unchanged, or a reflection
    was asked because nothing visible changed (rewards/verdict.py writes these reasons)."""
    return reason is not None and (
        reason.startswith("no-op:") or reason == "reflect: no visible change"
    )


def round_metrics(records: list[AttemptRecord], *, wall_seconds: float) -> dict[str, float]:
    """Counts and rates of verdicts by depth and edit type, mean scores (overall and per edit
    type), chain success, judge health, speed and cost.

    A chain is one (task, sample): its attempts at depth 0, 1, 2 ... `chains/success_after_d`
    is the share of chains whose first Success came at depth d (after d reflections/restarts).
    Verdicts are the judge's; a reviewer's override counts as a disagreement (`judge/*`).
    """
    metrics: dict[str, float] = {"attempts/total": len(records)}
    judged = [r for r in records if r.verdict is not None]
    verdicts = Counter(r.verdict for r in judged)
    for verdict in VERDICTS:
        metrics[f"verdict/{verdict}/count"] = verdicts[verdict]
        metrics[f"verdict/{verdict}/rate"] = _rate(verdicts[verdict], len(judged))
    metrics["attempts/errors"] = sum(1 for r in records if r.status == "failed")
    for key, group in _group(judged, lambda r: f"by_depth/{r.depth}").items():
        _verdict_rates(metrics, key, group)
    for key, group in _group(judged, lambda r: f"by_type/{r.edit_type}").items():
        _verdict_rates(metrics, key, group)
        _score_means(metrics, f"{key}/scores", group)
    _score_means(metrics, "scores", judged, counts=True)
    chains = _group(records, lambda r: (r.task_id, r.sample_index))
    metrics["chains/total"] = len(chains)
    first_success = Counter(
        min(r.depth for r in chain if r.verdict == "Success")
        for chain in chains.values()
        if any(r.verdict == "Success" for r in chain)
    )
    metrics["chains/success_rate"] = _rate(sum(first_success.values()), len(chains))
    for depth in range(max((r.depth for r in records), default=0) + 1):
        metrics[f"chains/success_after_{depth}"] = _rate(first_success[depth], len(chains))
    metrics.update(judge_health(records))
    metrics.update(staleness_figures(records))
    metrics["edit/gpu_seconds"] = sum(r.edit_seconds or 0.0 for r in records)
    metrics["judge/gpu_seconds"] = sum(r.judge_seconds or 0.0 for r in records)
    metrics["accepted/gpu_seconds_per_sample"] = _rate(
        metrics["edit/gpu_seconds"] + metrics["judge/gpu_seconds"], verdicts["Success"]
    )
    metrics["round/wall_seconds"] = wall_seconds
    metrics["throughput/attempts_per_s"] = _rate(len(records), wall_seconds)
    return metrics


def judge_health(records: list[AttemptRecord]) -> dict[str, float]:
    """How far the judges can be trusted this round, over the attempts that have a judgment:
    unparseable and capped answers, no-op guard trips, invalid reflector answers, and reviewer
    overrides (a disagreement when the override differs from the judge's verdict)."""
    judgments = [r for r in records if r.parse_status is not None]
    statuses = Counter(r.parse_status for r in judgments)
    reflected = [r for r in judgments if r.reflector_tag is not None]
    overrides = [r for r in judgments if r.override_verdict is not None]
    disagreements = sum(1 for r in overrides if r.override_verdict != r.verdict)
    return {
        "judge/judgments": len(judgments),
        "judge/unparseable_rate": _rate(statuses["unparseable"], len(judgments)),
        "judge/capped_rate": _rate(statuses["capped"], len(judgments)),
        "judge/noop_trips": sum(1 for r in judgments if noop_tripped(r.reason)),
        "judge/reflector_invalid_rate": _rate(
            sum(1 for r in reflected if r.reflector_tag == "Invalid"), len(reflected)
        ),
        "judge/overrides": len(overrides),
        "judge/disagreements": disagreements,
        "judge/disagreement_rate": _rate(disagreements, len(judgments)),
    }


def staleness_figures(records: list[AttemptRecord]) -> dict[str, float]:
    """How stale the checkpoints edited with were, over the attempts a worker started editing.

    An attempt's staleness counts the run's training jobs queued before its round opened whose
    result its checkpoint lacks (still training, or promoted a newer one): 0 in sequential rounds,
    at most the pipeline depth in pipelined ones (`editloop run --pipeline-depth`).
    """
    stale = [r.staleness for r in records if r.staleness is not None]
    return {
        "staleness/edits": len(stale),
        "staleness/max": max(stale, default=0),
        "staleness/mean": _rate(sum(stale), len(stale)),
        "staleness/stale_rate": _rate(sum(1 for s in stale if s > 0), len(stale)),
        "checkpoints/used": len({r.checkpoint_id for r in records if r.staleness is not None}),
    }


def _group(records, key):  # type: ignore[no-untyped-def]
    groups: dict[object, list[AttemptRecord]] = defaultdict(list)
    for record in records:
        groups[key(record)].append(record)
    return groups


def _verdict_rates(metrics: dict[str, float], prefix: str, group: list[AttemptRecord]) -> None:
    counts = Counter(r.verdict for r in group)
    metrics[f"{prefix}/count"] = len(group)
    for verdict in VERDICTS:
        metrics[f"{prefix}/{verdict}/rate"] = _rate(counts[verdict], len(group))


def _score_means(
    metrics: dict[str, float], prefix: str, group: list[AttemptRecord], *, counts: bool = False
) -> None:
    for name in DIMENSIONS:
        values = [getattr(r, name) for r in group if getattr(r, name) is not None]
        metrics[f"{prefix}/{name}/mean"] = sum(values) / len(values) if values else 0.0
        if counts:
            metrics[f"{prefix}/{name}/count"] = len(values)


def round_records(session: Session, *, round_id: int) -> list[AttemptRecord]:
    """The metrics records of every attempt of a round, read from its rows."""
    rows = session.execute(
        select(Attempt, Task.edit_type, Judgment)
        .join(Task, Task.id == Attempt.task_id)
        .outerjoin(Judgment, Judgment.attempt_id == Attempt.id)
        .where(Attempt.round_id == round_id)
    ).all()
    return [
        AttemptRecord(
            task_id=a.task_id,
            sample_index=a.sample_index,
            depth=a.depth,
            edit_type=edit_type,
            status=a.status.value,
            verdict=a.verdict.value if a.verdict is not None else None,
            following=j.score_following if j else None,
            quality=j.score_quality if j else None,
            preservation=j.score_preservation if j else None,
            overall=j.overall if j else None,
            edit_seconds=a.edit_seconds,
            judge_seconds=j.latency_s if j else None,
            parse_status=j.parse_status if j else None,
            reason=j.reason if j else None,
            reflector_tag=j.reflector_tag if j else None,
            override_verdict=j.override_verdict.value if j and j.override_verdict else None,
            checkpoint_id=a.checkpoint_id,
            staleness=a.staleness,
        )
        for a, edit_type, j in rows
    ]
