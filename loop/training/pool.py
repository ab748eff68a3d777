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

`PoolFilter` is also what `editloop export` selects with (`loop/export/`): `pool_conditions` is the
filter as SQL, `accepted` the same filter as a plain function over one record.
"""

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, false, func, or_, select
from sqlalchemy.orm import Session

from policies.training.data import Example
from store.models import Attempt, AttemptStatus, Judgment, Round, Task, TaskSource
from store.taxonomy import Verdict, parse_edit_type

# The filter's fields that hold lists (tuples here, JSON lists in a job's or export's row).
_TUPLE_FIELDS = (
    "run_ids",
    "verdicts",
    "edit_types",
    "checkpoint_ids",
    "origins",
    "exclude_origins",
    "licences",
)


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
    # The datasets the task arrived from, with their licences ("" when none was given); empty
    # for a task without `task_source` rows (its `origin` stands for its dataset).
    sources: tuple[tuple[str, str], ...] = ()
    # Promoted checkpoints behind the newest when it was edited (pipelined rounds); None: unknown.
    staleness: int | None = None


@dataclass(frozen=True)
class PoolFilter:
    """Which accepted attempts become training examples (every set field must hold)."""

    run_id: int | None = None  # only this run
    run_ids: tuple[int, ...] = ()  # only these runs; () = all
    verdicts: tuple[str, ...] = ()  # only these (effective) verdicts; () = Success
    from_round: int = 0  # only rounds numbered at least this
    up_to_round: int | None = None  # only rounds numbered at most this
    min_overall: float | None = None  # judge scores at least these (1-5)
    min_following: float | None = None
    min_quality: float | None = None
    min_preservation: float | None = None
    edit_types: tuple[str, ...] = ()  # only these ImgEdit types; () = all
    min_depth: int = 0  # only attempts at least this deep
    max_depth: int | None = None  # only accepted attempts at most this deep
    checkpoint_ids: tuple[int | None, ...] | None = None  # produced by these (None = base)
    origins: tuple[str, ...] = ()  # only tasks that arrived from one of these datasets; () = all
    exclude_origins: tuple[str, ...] = ()  # never tasks of these datasets (the held-out set)
    licences: tuple[str, ...] = ()  # only tasks with a source under one of these; () = all
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
        if self.min_depth < 0:
            raise ValueError(f"min_depth={self.min_depth}: must be >= 0")
        for verdict in self.verdicts:
            if verdict not in {v.value for v in Verdict}:
                valid = ", ".join(v.value for v in Verdict)
                raise ValueError(f"verdicts: unknown verdict {verdict!r}; expected one of: {valid}")
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
        for key in _TUPLE_FIELDS:
            if known.get(key) is not None:
                known[key] = tuple(known[key])
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "extra"}
        for key in _TUPLE_FIELDS:
            if data[key] is not None:
                data[key] = list(data[key])
        return {**self.extra, **data}


def verdict_accepted(verdict: str | None, pool_filter: PoolFilter) -> bool:
    """Whether an effective verdict passes: one of `verdicts` when given, else `Success` (any
    verdict when `unfiltered`)."""
    if pool_filter.verdicts:
        return verdict in pool_filter.verdicts
    return pool_filter.unfiltered or verdict == Verdict.SUCCESS.value


def accepted(record: PoolRecord, pool_filter: PoolFilter) -> bool:
    """Whether `record` is an accepted edit (any judged edit when `unfiltered`, one of `verdicts`
    when given) that passes every condition of the filter."""
    f = pool_filter
    datasets = {record.origin, *(dataset for dataset, _ in record.sources)}
    scores = {
        "min_overall": record.overall,
        "min_following": record.following,
        "min_quality": record.quality,
        "min_preservation": record.preservation,
    }
    return (
        verdict_accepted(record.verdict, f)
        and record.output_key is not None
        and (f.run_id is None or record.run_id == f.run_id)
        and (not f.run_ids or record.run_id in f.run_ids)
        and record.round_number >= f.from_round
        and (f.up_to_round is None or record.round_number <= f.up_to_round)
        and all(
            getattr(f, name) is None or (value is not None and value >= getattr(f, name))
            for name, value in scores.items()
        )
        and (not f.edit_types or record.edit_type in f.edit_types)
        and record.depth >= f.min_depth
        and (f.max_depth is None or record.depth <= f.max_depth)
        and (f.checkpoint_ids is None or record.checkpoint_id in f.checkpoint_ids)
        and (not f.origins or bool(datasets & set(f.origins)))
        # A task that arrived from an excluded dataset (the held-out set) stays out whatever
        # else it arrived from.
        and not datasets & set(f.exclude_origins)
        and (not f.licences or any(licence in f.licences for _, licence in record.sources))
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


def pool_conditions(pool_filter: PoolFilter) -> list[ColumnElement[bool]]:
    """The filter as SQL conditions on a query that joins `Attempt`, `Judgment` (on the attempt),
    `Task` and `Round`: the same selection as `accepted`, record by record."""
    f = pool_filter
    conditions: list[ColumnElement[bool]] = [
        Attempt.status == AttemptStatus.JUDGED,
        Attempt.output_key.is_not(None),
        Round.number >= f.from_round,
        Attempt.depth >= f.min_depth,
    ]
    if f.verdicts:
        conditions.append(effective_verdict().in_([Verdict(v) for v in f.verdicts]))
    elif not f.unfiltered:
        conditions.append(effective_verdict() == Verdict.SUCCESS)
    if f.run_id is not None:
        conditions.append(Round.run_id == f.run_id)
    if f.run_ids:
        conditions.append(Round.run_id.in_(f.run_ids))
    if f.up_to_round is not None:
        conditions.append(Round.number <= f.up_to_round)
    scores = {
        "min_overall": Judgment.overall,
        "min_following": Judgment.score_following,
        "min_quality": Judgment.score_quality,
        "min_preservation": Judgment.score_preservation,
    }
    for name, column in scores.items():
        if getattr(f, name) is not None:
            conditions.append(column >= getattr(f, name))
    if f.edit_types:
        conditions.append(Task.edit_type.in_(f.edit_types))
    if f.max_depth is not None:
        conditions.append(Attempt.depth <= f.max_depth)
    if f.checkpoint_ids is not None:
        ids = [i for i in f.checkpoint_ids if i is not None]
        base = Attempt.checkpoint_id.is_(None) if None in f.checkpoint_ids else false()
        conditions.append(or_(Attempt.checkpoint_id.in_(ids), base))
    if f.origins:
        conditions.append(
            or_(Task.origin.in_(f.origins), _has_source(TaskSource.dataset, f.origins))
        )
    if f.exclude_origins:
        conditions.append(Task.origin.not_in(f.exclude_origins))
        conditions.append(~_has_source(TaskSource.dataset, f.exclude_origins))
    if f.licences:
        conditions.append(_has_source(TaskSource.licence, f.licences))
    return conditions


def _has_source(column: Any, values: Sequence[str]) -> ColumnElement[bool]:
    """Whether the task has a `task_source` row whose `column` is one of `values`."""
    return exists().where(and_(TaskSource.task_id == Task.id, column.in_(values)))


def task_sources(
    session: Session, task_ids: Iterable[int]
) -> dict[int, tuple[tuple[str, str], ...]]:
    """The (dataset, licence) pairs of each task, sorted by dataset."""
    ids = sorted(set(task_ids))
    sources: dict[int, list[tuple[str, str]]] = {}
    for start in range(0, len(ids), 500):  # bounded IN lists
        rows = session.execute(
            select(TaskSource.task_id, TaskSource.dataset, TaskSource.licence)
            .where(TaskSource.task_id.in_(ids[start : start + 500]))
            .order_by(TaskSource.task_id, TaskSource.dataset)
        )
        for task_id, dataset, licence in rows:
            sources.setdefault(task_id, []).append((dataset, licence))
    return {task_id: tuple(pairs) for task_id, pairs in sources.items()}


def iter_pool_records(
    session: Session, pool_filter: PoolFilter, *, page_size: int = 1000
) -> Iterator[PoolRecord]:
    """The judged attempts the filter accepts, by attempt id, read `page_size` at a time."""
    after = 0
    while True:
        page = session.execute(
            select(Attempt, Judgment, Task, Round)
            .join(Judgment, Judgment.attempt_id == Attempt.id)
            .join(Task, Task.id == Attempt.task_id)
            .join(Round, Round.id == Attempt.round_id)
            .where(*pool_conditions(pool_filter), Attempt.id > after)
            .order_by(Attempt.id)
            .limit(page_size)
        ).all()
        if not page:
            return
        sources = task_sources(session, (task.id for _, _, task, _ in page))
        for attempt, judgment, task, round_ in page:
            yield PoolRecord(
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
                sources=sources.get(task.id, ()),
                staleness=attempt.staleness,
            )
        after = page[-1][0].id


def load_pool_records(session: Session, pool_filter: PoolFilter) -> list[PoolRecord]:
    """The judged attempts the filter accepts (every condition applied in SQL)."""
    return list(iter_pool_records(session, pool_filter))


def pool_examples(session: Session, pool_filter: PoolFilter) -> list[Example]:
    """The filter's training examples, read from the database."""
    return select_examples(load_pool_records(session, pool_filter), pool_filter)


def staleness_of(records: Iterable[PoolRecord], pool_filter: PoolFilter) -> dict[str, float]:
    """How stale the accepted edits a job trains on are (checkpoints behind, see
    `loop.metrics.staleness_figures`): the most and the mean, over those that record it."""
    stale = [r.staleness for r in records if accepted(r, pool_filter) and r.staleness is not None]
    return {
        "train/staleness_max": float(max(stale, default=0)),
        "train/staleness_mean": sum(stale) / len(stale) if stale else 0.0,
    }


def count_by_kind(examples: Sequence[Example]) -> dict[str, int]:
    """How many examples of each kind (for the checkpoint's record)."""
    counts: dict[str, int] = {}
    for example in examples:
        counts[example.kind] = counts.get(example.kind, 0) + 1
    return counts
