"""Round metrics as a pure function of plain attempt records (names as in the DB and the admin)."""

from collections import Counter, defaultdict
from dataclasses import dataclass

VERDICTS = ("Success", "Reflection", "Failed")


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


def _rate(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def round_metrics(records: list[AttemptRecord], *, wall_seconds: float) -> dict[str, float]:
    """Counts and rates of verdicts by depth and edit type, mean scores, chain success, speed.

    A chain is one (task, sample): its attempts at depth 0, 1, 2 ... `chains/success_after_d`
    is the share of chains whose first Success came at depth d (after d reflections/restarts).
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
    for name in ("following", "quality", "preservation", "overall"):
        values = [getattr(r, name) for r in judged if getattr(r, name) is not None]
        metrics[f"scores/{name}/mean"] = sum(values) / len(values) if values else 0.0
        metrics[f"scores/{name}/count"] = len(values)
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
    metrics["edit/gpu_seconds"] = sum(r.edit_seconds or 0.0 for r in records)
    metrics["judge/gpu_seconds"] = sum(r.judge_seconds or 0.0 for r in records)
    metrics["round/wall_seconds"] = wall_seconds
    metrics["throughput/attempts_per_s"] = _rate(len(records), wall_seconds)
    return metrics


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
