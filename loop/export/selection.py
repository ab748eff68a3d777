"""The rows of an export: judged attempts read in pages through the pool's filter, made into rows.

Edit triples are the pool's examples (`loop/training/pool.py`): each accepted attempt's own input
and instruction → its output, and with `hindsight` the task's source and original instruction →
the final image of a successful reflection chain, marked as such. Reflection records are the
judged attempts the reflector answered, with what happened next: the child attempt that edited
this output with the proposed instruction, and its verdict. A reviewer's override wins over the
judge (`effective_verdict`). Rows come sorted by attempt id (a hindsight row right after the
direct one of the same attempt), which with the pages' keyset order makes exports deterministic.
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, sessionmaker

from loop.export.columns import ExportKind
from loop.training.pool import (
    PoolFilter,
    PoolRecord,
    accepted,
    pool_conditions,
    task_sources,
)
from store.models import (
    Attempt,
    AttemptStatus,
    Checkpoint,
    Judgment,
    Round,
    Run,
    Task,
)
from store.taxonomy import Verdict

JUDGE, REVIEWER = "judge", "reviewer"


@dataclass(frozen=True)
class Child:
    """The attempt that followed a judged one in its chain."""

    attempt_id: int
    instruction: str
    input_key: str
    verdict: str | None  # effective verdict once terminal, else None


@dataclass(frozen=True)
class ExportRecord:
    """One judged attempt with its judgment, task, round, run and checkpoint."""

    attempt_id: int
    task_id: int
    run_id: int
    run_name: str
    round_number: int
    depth: int
    seed: int
    instruction: str  # the instruction this attempt was edited with
    input_key: str
    output_key: str
    checkpoint_id: int | None
    checkpoint_version: str | None
    task_source_key: str
    task_instruction: str
    edit_type: str
    origin: str
    sources: tuple[tuple[str, str], ...]  # (dataset, licence), sorted by dataset
    dimension_names: tuple[str, ...]
    following: float | None
    quality: float | None
    preservation: float | None
    overall: float | None
    judge_verdict: str
    override_verdict: str | None
    reviewer: str | None
    judge_model: str
    reflector_model: str | None
    reflector_tag: str | None = None
    think: str | None = None
    target_description: str | None = None
    proposed_instruction: str | None = None
    child: Child | None = None
    raw_judge_output: str | None = None

    @property
    def verdict(self) -> str:
        """The verdict that counts: a reviewer's override wins over the judge's."""
        return self.override_verdict or self.judge_verdict

    def pool_record(self) -> PoolRecord:
        """What the pool's filter looks at."""
        return PoolRecord(
            attempt_id=self.attempt_id,
            run_id=self.run_id,
            round_number=self.round_number,
            task_id=self.task_id,
            depth=self.depth,
            instruction=self.instruction,
            input_key=self.input_key,
            output_key=self.output_key,
            verdict=self.verdict,
            checkpoint_id=self.checkpoint_id,
            task_source_key=self.task_source_key,
            task_instruction=self.task_instruction,
            edit_type=self.edit_type,
            origin=self.origin,
            following=self.following,
            quality=self.quality,
            preservation=self.preservation,
            overall=self.overall,
            sources=self.sources,
        )


@dataclass(frozen=True)
class ExportRow:
    """One row to write: its key, task (for the split), column values and the images' keys."""

    id: str
    task_id: int
    values: dict[str, Any]  # every column but the images and their SHA-256
    image_keys: dict[str, str] = field(default_factory=dict)  # image column → object key


def _conditions(pool_filter: PoolFilter, kind: ExportKind) -> list[Any]:
    conditions = pool_conditions(pool_filter)
    if kind == ExportKind.REFLECTIONS:
        conditions.append(Judgment.reflector_tag.is_not(None))
    return conditions


def _joined(query: Select[Any]) -> Select[Any]:
    return (
        query.join(Judgment, Judgment.attempt_id == Attempt.id)
        .join(Task, Task.id == Attempt.task_id)
        .join(Round, Round.id == Attempt.round_id)
    )


def count_records(session: Session, pool_filter: PoolFilter, kind: ExportKind) -> int:
    """How many judged attempts the filter selects for `kind` (hindsight rows not counted)."""
    query = _joined(select(func.count()).select_from(Attempt))
    return session.scalar(query.where(*_conditions(pool_filter, kind))) or 0


# The columns a page reads, labelled as the record's fields (plain rows: no ORM objects to build).
_COLUMNS = (
    Attempt.id.label("attempt_id"),
    Task.id.label("task_id"),
    Round.run_id.label("run_id"),
    Run.name.label("run_name"),
    Round.number.label("round_number"),
    Attempt.depth,
    Attempt.seed,
    Attempt.instruction,
    Attempt.input_key,
    Attempt.output_key,
    Attempt.checkpoint_id,
    Checkpoint.version.label("checkpoint_version"),
    Task.source_key.label("task_source_key"),
    Task.instruction.label("task_instruction"),
    Task.edit_type,
    Task.origin,
    Judgment.dimension_names,
    Judgment.score_following.label("following"),
    Judgment.score_quality.label("quality"),
    Judgment.score_preservation.label("preservation"),
    Judgment.overall,
    Judgment.verdict.label("judge_verdict"),
    Judgment.override_verdict,
    Judgment.override_reviewer.label("reviewer"),
    Judgment.judge_model,
    Judgment.reflector_model,
    Judgment.reflector_tag,
    Judgment.think,
    Judgment.target_description,
    Judgment.proposed_instruction,
    Judgment.raw_judge_output,
)


def _page(
    session: Session, pool_filter: PoolFilter, kind: ExportKind, after: int, size: int
) -> list[ExportRecord]:
    rows = session.execute(
        _joined(select(*_COLUMNS))
        .join(Run, Run.id == Round.run_id)
        .outerjoin(Checkpoint, Checkpoint.id == Attempt.checkpoint_id)
        .where(*_conditions(pool_filter, kind), Attempt.id > after)
        .order_by(Attempt.id)
        .limit(size)
    ).all()
    sources = task_sources(session, (row.task_id for row in rows))
    reflections = kind == ExportKind.REFLECTIONS
    children = _children(session, [row.attempt_id for row in rows]) if reflections else {}
    records = []
    for row in rows:
        fields = row._asdict()
        names = fields.pop("dimension_names").get("names") or []
        override = fields.pop("override_verdict")
        records.append(
            ExportRecord(
                **fields
                | {
                    "sources": sources.get(row.task_id) or ((row.origin, ""),),
                    "dimension_names": tuple(str(n) for n in names),
                    "judge_verdict": row.judge_verdict.value,
                    "override_verdict": override.value if override else None,
                    "reviewer": row.reviewer if override else None,
                    "child": children.get(row.attempt_id),
                }
            )
        )
    return records


def _children(session: Session, attempt_ids: list[int]) -> dict[int, Child]:
    """The child attempt of each of `attempt_ids` that has one (a parent has at most one)."""
    if not attempt_ids:
        return {}
    verdict = func.coalesce(Judgment.override_verdict, Judgment.verdict, Attempt.verdict)
    rows = session.execute(
        select(
            Attempt.parent_id,
            Attempt.id,
            Attempt.instruction,
            Attempt.input_key,
            Attempt.status,
            verdict,
        )  # fmt: skip
        .outerjoin(Judgment, Judgment.attempt_id == Attempt.id)
        .where(Attempt.parent_id.in_(attempt_ids))
        .order_by(Attempt.id)
    )
    terminal = (AttemptStatus.JUDGED, AttemptStatus.FAILED)
    return {
        parent_id: Child(
            attempt_id=child_id,
            instruction=instruction,
            input_key=input_key,
            verdict=Verdict(value).value if value is not None and status in terminal else None,
        )
        for parent_id, child_id, instruction, input_key, status, value in rows
    }


def iter_records(
    factory: sessionmaker[Session],
    pool_filter: PoolFilter,
    kind: ExportKind,
    *,
    page_size: int = 500,
) -> Iterator[ExportRecord]:
    """The selected attempts by attempt id, one short read transaction per page (never the whole
    pool in memory); each passes the pool's own `accepted`, as the SQL already made sure."""
    after = 0
    while True:
        with factory() as session:
            page = _page(session, pool_filter, kind, after, page_size)
        if not page:
            return
        yield from (r for r in page if accepted(r.pool_record(), pool_filter))
        after = page[-1].attempt_id


def _provenance(record: ExportRecord) -> dict[str, Any]:
    return {
        "edit_type": record.edit_type,
        "task_id": record.task_id,
        "source_datasets": [dataset for dataset, _ in record.sources],
        "source_licences": [licence for _, licence in record.sources],
        "run": record.run_name,
        "round": record.round_number,
        "attempt_id": record.attempt_id,
        "depth": record.depth,
        "checkpoint": record.checkpoint_version,
        "seed": record.seed,
        "dimension_names": list(record.dimension_names),
        "score_following": record.following,
        "score_quality": record.quality,
        "score_preservation": record.preservation,
        "overall": record.overall,
        "verdict": record.verdict,
        "decided_by": REVIEWER if record.override_verdict else JUDGE,
        "reviewer": record.reviewer,
        "judge_verdict": record.judge_verdict,
        "judge_model": record.judge_model,
        "reflector_model": record.reflector_model,
    }


def edit_rows(record: ExportRecord, *, hindsight: bool) -> list[ExportRow]:
    """The edit triple of `record` (its input and instruction → its output) and, with `hindsight`
    and for a successful reflection step, the task's source and original instruction → the same
    output."""
    provenance = _provenance(record)
    rows = [
        ExportRow(
            id=f"e{record.attempt_id:010d}",
            task_id=record.task_id,
            values={
                "id": f"e{record.attempt_id:010d}",
                "instruction": record.instruction,
                "hindsight": False,
                "original_instruction": record.task_instruction,
                **provenance,
            },
            image_keys={"source_image": record.input_key, "edited_image": record.output_key},
        )
    ]
    differs = (record.input_key, record.instruction) != (
        record.task_source_key,
        record.task_instruction,
    )
    if hindsight and differs and record.verdict == Verdict.SUCCESS.value:
        rows.append(
            ExportRow(
                id=f"h{record.attempt_id:010d}",
                task_id=record.task_id,
                values={
                    "id": f"h{record.attempt_id:010d}",
                    "instruction": record.task_instruction,
                    "hindsight": True,
                    "original_instruction": record.task_instruction,
                    **provenance,
                },
                image_keys={
                    "source_image": record.task_source_key,
                    "edited_image": record.output_key,
                },
            )
        )
    return rows


def proposal_tested(record: ExportRecord) -> bool:
    """Whether the reflector's proposal was put to the test: the next attempt of the chain edited
    this output with the proposed instruction and reached a verdict."""
    child = record.child
    return (
        child is not None
        and record.reflector_tag == Verdict.REFLECTION.value
        and child.input_key == record.output_key
        and child.instruction == record.proposed_instruction
        and child.verdict is not None
    )


def reflection_row(record: ExportRecord) -> ExportRow:
    """The reflection record of `record`: the original source and instruction, the edit, the
    reflector's answer and whether its proposed instruction then succeeded."""
    child = record.child
    tested = proposal_tested(record)
    row_id = f"r{record.attempt_id:010d}"
    return ExportRow(
        id=row_id,
        task_id=record.task_id,
        values={
            "id": row_id,
            "instruction": record.task_instruction,
            "attempt_instruction": record.instruction,
            "reasoning": record.think,
            "target_description": record.target_description,
            "tag": record.reflector_tag,
            "proposed_instruction": record.proposed_instruction,
            "child_attempt_id": child.attempt_id if child else None,
            "child_instruction": child.instruction if child else None,
            "child_verdict": child.verdict if child else None,
            "confirmed": (child.verdict == Verdict.SUCCESS.value) if tested and child else None,
            **_provenance(record),
        },
        image_keys={"source_image": record.task_source_key, "edited_image": record.output_key},
    )


def rows_of(
    records: Iterable[ExportRecord], kind: ExportKind, *, hindsight: bool = False
) -> Iterator[ExportRow]:
    """The rows of `kind` made of `records`, in order."""
    for record in records:
        if kind == ExportKind.EDITS:
            yield from edit_rows(record, hindsight=hindsight)
        else:
            yield reflection_row(record)
