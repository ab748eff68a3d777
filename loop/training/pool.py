"""The accepted pool as training examples: a filter, pure selection, and the database reader.

Two kinds of example come from an accepted (`Success`) attempt (docs/design.md, "Learning from
judged edits"):

- **direct**: the attempt's own input and instruction → its output. For a reflection step that
  is the parent's output and the revised instruction; for depth 0 or a restart, the task's source
  and original instruction.
- **hindsight**: the task's original source and original instruction → the final accepted image of
  the chain. Every attempt is judged against the original source and instruction (docs/design.md),
  so the final image of a successful chain is a right answer to the original task in one step: this
  is what turns reflection into new one-step skill (docs/design.md, "Learning from judged edits").
  It differs from the direct example only for reflection steps; duplicates are dropped.
"""

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from policies.training.data import Example
from store.models import Attempt, AttemptStatus, Judgment, Round, Task
from store.taxonomy import Verdict, parse_edit_type


@dataclass(frozen=True)
class PoolRecord:
    """What selection needs of one judged attempt, its judgment and its task."""

    attempt_id: int
    run_id: int
    round_number: int
    task_id: int
    depth: int
    instruction: str  # the instruction this attempt was edited with
    input_key: str  # the image this attempt edited
    output_key: str | None
    verdict: str | None  # the effective verdict: a reviewer's override, else the judge's
    checkpoint_id: int | None  # the checkpoint that produced it (None: base)
    task_source_key: str
    task_instruction: str
    edit_type: str
    origin: str
    following: float | None = None
    quality: float | None = None
    preservation: float | None = None
    overall: float | None = None


@dataclass(frozen=True)
class PoolFilter:
    """Which accepted attempts become training examples (every set field must hold)."""

    run_id: int | None = None  # only this run
    from_round: int = 0  # only rounds numbered at least this
    up_to_round: int | None = None  # only rounds numbered at most this
    min_overall: float | None = None  # judge scores at least these (1-5)
    min_following: float | None = None
    min_quality: float | None = None
    min_preservation: float | None = None
    edit_types: tuple[str, ...] = ()  # only these ImgEdit types; () = all
    max_depth: int | None = None  # only accepted attempts at most this deep
    checkpoint_ids: tuple[int | None, ...] | None = None  # produced by these (None = base)
    exclude_origins: tuple[str, ...] = ()  # never tasks of these datasets (the held-out set)
    direct: bool = True  # include direct examples
    hindsight: bool = True  # include hindsight examples
    # Every judged edit with an output, whatever its verdict: not a way to train an editor but
    # the control arm of `editloop bench self-improve` (fine-tuning on unfiltered samples).
    unfiltered: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # other keys kept for the record

    def __post_init__(self) -> None:
        if not (self.direct or self.hindsight):
            raise ValueError("direct=False and hindsight=False: select at least one kind")
        if self.max_depth is not None and self.max_depth < 0:
            raise ValueError(f"max_depth={self.max_depth}: must be >= 0")
        for name in ("min_overall", "min_following", "min_quality", "min_preservation"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= 5:
                raise ValueError(f"{name}={value}: scores are 1-5")
        for edit_type in self.edit_types:
            canonical = parse_edit_type(edit_type).value  # ValueError for an unknown type
            if canonical != edit_type:
                raise ValueError(f"edit_types: {edit_type!r} is an alias; write {canonical!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PoolFilter":
        """From a `train_job.data_filter` (JSON): known keys are fields, the rest is kept."""
        names = set(cls.__dataclass_fields__) - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        for key in ("edit_types", "exclude_origins", "checkpoint_ids"):
            if known.get(key) is not None:
                known[key] = tuple(known[key])
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "extra"}
        for key in ("edit_types", "exclude_origins", "checkpoint_ids"):
            if data[key] is not None:
                data[key] = list(data[key])
        return {**self.extra, **data}


def accepted(record: PoolRecord, pool_filter: PoolFilter) -> bool:
    """Whether `record` is an accepted edit (any judged edit when `unfiltered`) that passes every
    condition of the filter."""
    f = pool_filter
    scores = {
        "min_overall": record.overall,
        "min_following": record.following,
        "min_quality": record.quality,
        "min_preservation": record.preservation,
    }
    return (
        (f.unfiltered or record.verdict == Verdict.SUCCESS.value)
        and record.output_key is not None
        and (f.run_id is None or record.run_id == f.run_id)
        and record.round_number >= f.from_round
        and (f.up_to_round is None or record.round_number <= f.up_to_round)
        and all(
            getattr(f, name) is None or (value is not None and value >= getattr(f, name))
            for name, value in scores.items()
        )
        and (not f.edit_types or record.edit_type in f.edit_types)
        and (f.max_depth is None or record.depth <= f.max_depth)
        and (f.checkpoint_ids is None or record.checkpoint_id in f.checkpoint_ids)
        and record.origin not in f.exclude_origins
    )


def select_examples(records: Iterable[PoolRecord], pool_filter: PoolFilter) -> list[Example]:
    """The training examples of the accepted records, ordered by attempt id, direct before
    hindsight; an example identical to one already chosen (same source, instruction and target)
    is dropped."""
    chosen: list[Example] = []
    seen: set[tuple[str, str, str]] = set()

    def add(example: Example) -> None:
        key = (example.source, example.instruction, example.target)
        if key not in seen:
            seen.add(key)
            chosen.append(example)

    for record in sorted(records, key=lambda r: r.attempt_id):
        if not accepted(record, pool_filter):
            continue
        assert record.output_key is not None  # checked by `accepted`
        if pool_filter.direct:
            add(
                Example(
                    source=record.input_key,
                    instruction=record.instruction,
                    target=record.output_key,
                    kind="direct",
                    attempt_id=record.attempt_id,
                )
            )
        if pool_filter.hindsight:
            add(
                Example(
                    source=record.task_source_key,
                    instruction=record.task_instruction,
                    target=record.output_key,
                    kind="hindsight",
                    attempt_id=record.attempt_id,
                )
            )
    return chosen


def effective_verdict() -> Any:
    """The verdict that counts, as SQL: a reviewer's override wins over the judge's verdict."""
    return func.coalesce(Judgment.override_verdict, Judgment.verdict)


def load_pool_records(session: Session, pool_filter: PoolFilter) -> list[PoolRecord]:
    """The judged attempts the filter can accept (run and round bounds applied in SQL)."""
    query = (
        select(Attempt, Judgment, Task, Round)
        .join(Judgment, Judgment.attempt_id == Attempt.id)
        .join(Task, Task.id == Attempt.task_id)
        .join(Round, Round.id == Attempt.round_id)
        .where(
            Attempt.status == AttemptStatus.JUDGED,
            Attempt.output_key.is_not(None),
            Round.number >= pool_filter.from_round,
        )
        .order_by(Attempt.id)
    )
    if not pool_filter.unfiltered:
        query = query.where(effective_verdict() == Verdict.SUCCESS)
    if pool_filter.run_id is not None:
        query = query.where(Round.run_id == pool_filter.run_id)
    if pool_filter.up_to_round is not None:
        query = query.where(Round.number <= pool_filter.up_to_round)
    return [
        PoolRecord(
            attempt_id=attempt.id,
            run_id=round_.run_id,
            round_number=round_.number,
            task_id=task.id,
            depth=attempt.depth,
            instruction=attempt.instruction,
            input_key=attempt.input_key,
            output_key=attempt.output_key,
            verdict=(judgment.override_verdict or judgment.verdict).value,
            checkpoint_id=attempt.checkpoint_id,
            task_source_key=task.source_key,
            task_instruction=task.instruction,
            edit_type=task.edit_type,
            origin=task.origin,
            following=judgment.score_following,
            quality=judgment.score_quality,
            preservation=judgment.score_preservation,
            overall=judgment.overall,
        )
        for attempt, judgment, task, round_ in session.execute(query).all()
    ]


def pool_examples(session: Session, pool_filter: PoolFilter) -> list[Example]:
    """The filter's training examples, read from the database."""
    return select_examples(load_pool_records(session, pool_filter), pool_filter)


def count_by_kind(examples: Sequence[Example]) -> dict[str, int]:
    """How many examples of each kind (for the checkpoint's record)."""
    counts: dict[str, int] = {}
    for example in examples:
        counts[example.kind] = counts.get(example.kind, 0) + 1
    return counts
