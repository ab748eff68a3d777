"""The admin's read model as plain records: what the API returns, the pages show and `--json`
prints (one serialisation, `to_jsonable`, so that the three agree to the byte)."""

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

from pydantic import TypeAdapter


@dataclass(frozen=True)
class RoundCheckpoint:
    """The checkpoint a round edited with (None: the base editor)."""

    number: int
    checkpoint_id: int | None
    version: str | None


@dataclass(frozen=True)
class RunRow:
    """One run on the runs page: progress, acceptance, the checkpoint each round used."""

    id: int
    name: str
    status: str
    created_at: datetime
    updated_at: datetime
    rounds: int
    rounds_finished: int
    attempts: int
    judged: int
    accepted: int  # attempts whose effective verdict (a reviewer's override, else the judge's)
    acceptance: float  # accepted / judged
    round_checkpoints: list[RoundCheckpoint]


@dataclass(frozen=True)
class RunPage:
    items: list[RunRow]
    total: int
    next_before: int | None  # pass as `before` for the next page; None: last page


@dataclass(frozen=True)
class RoundRow:
    """One round of a run, with its metrics (stored when finished, live while editing)."""

    run_id: int
    number: int
    status: str
    checkpoint_id: int | None
    checkpoint_version: str | None
    started_at: datetime
    finished_at: datetime | None
    duration_s: float
    attempts: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class RunDetail:
    run: RunRow
    config: dict[str, Any]
    rounds: list[RoundRow]


@dataclass(frozen=True)
class TypeFigures:
    """One edit type's row of a round's metrics table."""

    edit_type: str
    judged: int
    success_rate: float
    reflection_rate: float
    failed_rate: float
    following: float
    quality: float
    preservation: float
    overall: float


@dataclass(frozen=True)
class SlowAttempt:
    attempt_id: int
    task_id: int
    depth: int
    edit_seconds: float | None
    judge_seconds: float | None
    total_seconds: float


@dataclass(frozen=True)
class JudgeHealth:
    judgments: int
    unparseable_rate: float
    capped_rate: float
    noop_trips: int
    reflector_invalid_rate: float
    overrides: int
    disagreements: int
    disagreement_rate: float


@dataclass(frozen=True)
class RoundDetail:
    run_id: int
    run_name: str
    round: RoundRow
    by_type: list[TypeFigures]
    judge_health: JudgeHealth
    slowest: list[SlowAttempt]


@dataclass(frozen=True)
class SampleCard:
    """One attempt on the samples grid."""

    attempt_id: int
    run_id: int
    run_name: str
    round_number: int
    task_id: int
    sample_index: int
    depth: int
    edit_type: str
    task_instruction: str
    instruction: str  # what this attempt was edited with (a reflection's revised instruction)
    source_key: str  # the task's original image
    input_key: str
    output_key: str | None
    status: str
    judge_verdict: str | None
    override_verdict: str | None
    verdict: str | None  # effective: the override when set, else the judge's
    following: float | None
    quality: float | None
    preservation: float | None
    overall: float | None


@dataclass(frozen=True)
class SamplePage:
    items: list[SampleCard]
    total: int  # matches of the filter, all pages
    next_before: int | None


@dataclass(frozen=True)
class TaskSourceView:
    dataset: str
    licence: str


@dataclass(frozen=True)
class TaskView:
    id: int
    instruction: str
    edit_type: str
    source_key: str
    origin: str
    width: int
    height: int
    sources: list[TaskSourceView]


@dataclass(frozen=True)
class JudgmentView:
    """Scores, verdict, the reflector's answer and the raw text of both models."""

    following: float | None
    quality: float | None
    preservation: float | None
    overall: float | None
    dimension_names: list[str]
    parse_status: str
    verdict: str
    reason: str | None
    reflector_tag: str | None
    think: str | None
    target_description: str | None
    revised_instruction: str | None  # the instruction the next attempt was edited with
    proposed_instruction: str | None  # what the reflector proposed, retry or not
    judge_model: str
    reflector_model: str | None
    raw_judge_output: str | None
    raw_reflector_output: str | None
    latency_s: float | None
    override_verdict: str | None
    override_reviewer: str | None
    override_reason: str | None
    override_at: datetime | None


@dataclass(frozen=True)
class ChainStep:
    """One attempt of a chain (a task's sample in a round), with its judgment."""

    attempt_id: int
    depth: int
    parent_id: int | None
    instruction: str
    input_key: str
    output_key: str | None
    seed: int
    status: str
    verdict: str | None  # effective
    error: str | None
    checkpoint_version: str | None
    edit_seconds: float | None
    dispatch_count: int
    judgment: JudgmentView | None


@dataclass(frozen=True)
class SampleDetail:
    attempt_id: int  # the attempt asked for; the chain holds every attempt of its sample
    run_id: int
    run_name: str
    round_number: int
    sample_index: int
    task: TaskView
    chain: list[ChainStep]


@dataclass(frozen=True)
class GateFigures:
    """The gate's comparison with the parent on the held-out set."""

    parent_version: str
    candidate_mean: float | None
    parent_mean: float | None
    delta: float | None
    margin: float | None
    tasks: int | None


@dataclass(frozen=True)
class CheckpointRow:
    id: int
    version: str
    parent_id: int | None
    parent_version: str | None
    kind: str
    status: str
    live: bool  # the checkpoint rounds edit with now
    sample_count: int
    data_filter: dict[str, Any]
    created_at: datetime
    decided_by: str | None
    decision_reason: str | None
    decided_at: datetime | None
    rounds_using: int
    gate: GateFigures | None
    lineage_depth: int  # generations from its root (for the lineage view)


@dataclass(frozen=True)
class CheckpointPage:
    items: list[CheckpointRow]  # in lineage order: each parent before its children
    total: int


@dataclass(frozen=True)
class LossPoint:
    step: int
    loss: float


@dataclass(frozen=True)
class CheckpointDetail:
    checkpoint: CheckpointRow
    children: list[str]
    train_metrics: dict[str, Any]
    eval_metrics: dict[str, Any]
    train_job_id: int | None
    loss_curve: list[LossPoint]
    loss_note: str  # why the curve is empty, when it is


@dataclass(frozen=True)
class TrainJobRow:
    id: int
    run_id: int | None
    run_name: str | None
    status: str
    claims: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    progress_step: int
    checkpoint_id: int | None
    checkpoint_version: str | None
    error: str | None
    data_filter: dict[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class TrainJobPage:
    items: list[TrainJobRow]
    total: int
    next_before: int | None


@dataclass(frozen=True)
class TrainJobDetail:
    job: TrainJobRow
    log_tail: str  # the launcher log's last lines, when the job folder is readable from here
    log_path: str


@dataclass(frozen=True)
class WorkerRow:
    """A worker process as its heartbeat reports it (`state`: busy, idle, starting, stopped, or
    lapsed: no beat within the heartbeat timeout, so what it held is being sent again)."""

    name: str
    state: str
    live: bool
    queues: str
    device: str
    pid: int
    checkpoint: str | None  # the editor version loaded ("base"); None: none loaded yet
    task: str | None  # the task it runs now
    holding: int  # attempts it started that are not finished yet
    tasks_done: int
    started_at: datetime
    beat_at: datetime
    beat_age_s: float
    busy_since: datetime | None
    idle_since: datetime | None
    stopped_at: datetime | None


@dataclass(frozen=True)
class WorkerPage:
    items: list[WorkerRow]  # live ones first, then by name
    total: int
    live: int
    heartbeat_timeout_s: float


@dataclass(frozen=True)
class WriteResult:
    """What a write did: `changed` is False when the state already was the one asked for."""

    changed: bool
    detail: str
    state: dict[str, Any] = field(default_factory=dict)


@lru_cache(maxsize=64)
def _adapter(kind: type) -> TypeAdapter[Any]:
    return TypeAdapter(kind)


def to_jsonable(value: Any, kind: Any = None) -> Any:
    """`value` (a record, or a list of them as `kind`) as JSON-ready data, the API's encoding."""
    return _adapter(kind or type(value)).dump_python(value, mode="json")


def dumps(value: Any, kind: Any = None) -> str:
    """`value` as the JSON text the API answers and `--json` prints."""
    return json.dumps(to_jsonable(value, kind), ensure_ascii=False)
