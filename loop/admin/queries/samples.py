"""Reads of samples: the filtered, paginated grid, a sample's whole chain, referenced keys."""

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import Integer, Select, bindparam, func, select
from sqlalchemy.orm import Session

from loop.admin.queries.common import BadValue, NotFound, _value, effective_verdict
from loop.admin.queries.runs import get_run
from loop.admin.records import (
    ChainStep,
    JudgmentView,
    SampleCard,
    SampleDetail,
    SamplePage,
    TaskSourceView,
    TaskView,
)
from loop.metrics import VERDICTS
from store.models import (
    Attempt,
    Checkpoint,
    Judgment,
    Round,
    Run,
    Task,
    TaskSource,
)
from store.taxonomy import parse_edit_type


@dataclass(frozen=True)
class SampleFilter:
    """What the samples grid shows; every set field must hold."""

    run_id: int | None = None
    round_number: int | None = None
    verdict: str | None = None  # effective verdict
    edit_type: str | None = None
    depth: int | None = None
    min_score: float | None = None  # overall, 1-5
    max_score: float | None = None
    text: str | None = None  # case-insensitive substring of the task's instruction

    def __post_init__(self) -> None:
        if self.verdict is not None and self.verdict not in VERDICTS:
            raise BadValue("verdict", f"{self.verdict!r} is not one of {', '.join(VERDICTS)}")
        if self.edit_type is not None:
            try:
                canonical = parse_edit_type(self.edit_type).value
            except ValueError as exc:
                raise BadValue("edit_type", str(exc)) from None
            object.__setattr__(self, "edit_type", canonical)
        for name in ("min_score", "max_score"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= 5:
                raise BadValue(name, f"{value:g} is outside the judge's 1-5 scale")
        if (
            self.min_score is not None
            and self.max_score is not None
            and self.min_score > self.max_score
        ):
            raise BadValue("min_score", f"{self.min_score:g} > max_score {self.max_score:g}")
        for name in ("round_number", "depth"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise BadValue(name, f"{value} is negative")
        if self.round_number is not None and self.run_id is None:
            raise BadValue("round", "a round number needs a run: give run_id too")
        if self.text is not None and not self.text.strip():
            object.__setattr__(self, "text", None)


@dataclass(frozen=True)
class SampleQuery:
    """The two statements of a samples page and their parameters: one page of cards (newest
    first, `limit + 1` rows to know whether there is a next page) and the count of every match."""

    page: Select[Any]
    count: Select[Any]
    params: dict[str, Any]


def sample_queries(
    sample_filter: SampleFilter, *, limit: int, before: int | None = None
) -> SampleQuery:
    """The statements of a samples page for `sample_filter`. Statements are built once per set
    of filters in use and the values bound as parameters, so that a page view skips building
    them and their cache keys again."""
    f = sample_filter
    values: dict[str, Any] = {
        "run_id": f.run_id,
        "round_number": f.round_number,
        "verdict": f.verdict,
        "edit_type": f.edit_type,
        "depth": f.depth,
        "min_score": f.min_score,
        "max_score": f.max_score,
        "pattern": _like_pattern(f.text) if f.text is not None else None,
        "before": before,
    }
    used = {name: value for name, value in values.items() if value is not None}
    page, count = _sample_statements(frozenset(used))
    return SampleQuery(page, count, {**used, "limit": limit + 1})


def _like_pattern(text: str) -> str:
    escaped = text.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@lru_cache(maxsize=256)
def _sample_statements(used: frozenset[str]) -> tuple[Select[Any], Select[Any]]:
    conditions: list[Any] = []
    # On the attempt's own round_id (a subquery, not the joined round's columns), so that
    # PostgreSQL walks the (round_id, id) index of migration 0004 for one round.
    if "round_number" in used:
        one_round = select(Round.id).where(
            Round.run_id == bindparam("run_id"), Round.number == bindparam("round_number")
        )
        conditions.append(Attempt.round_id == one_round.scalar_subquery())
    elif "run_id" in used:
        runs_rounds = select(Round.id).where(Round.run_id == bindparam("run_id"))
        conditions.append(Attempt.round_id.in_(runs_rounds))
    if "verdict" in used:
        conditions.append(effective_verdict() == bindparam("verdict"))
    if "edit_type" in used:
        conditions.append(Task.edit_type == bindparam("edit_type"))
    if "depth" in used:
        conditions.append(Attempt.depth == bindparam("depth"))
    if "min_score" in used:
        conditions.append(Judgment.overall >= bindparam("min_score"))
    if "max_score" in used:
        conditions.append(Judgment.overall <= bindparam("max_score"))
    if "pattern" in used:
        conditions.append(Task.instruction.ilike(bindparam("pattern"), escape="\\"))
    page = (
        select(
            Attempt.id,
            Round.run_id,
            Run.name,
            Round.number,
            Attempt.task_id,
            Attempt.sample_index,
            Attempt.depth,
            Task.edit_type,
            Task.instruction,
            Attempt.instruction,
            Task.source_key,
            Attempt.input_key,
            Attempt.output_key,
            Attempt.status,
            Attempt.verdict,
            Judgment.override_verdict,
            Judgment.score_following,
            Judgment.score_quality,
            Judgment.score_preservation,
            Judgment.overall,
        )
        .select_from(Attempt)
        .join(Round, Round.id == Attempt.round_id)
        .join(Run, Run.id == Round.run_id)
        .join(Task, Task.id == Attempt.task_id)
        .outerjoin(Judgment, Judgment.attempt_id == Attempt.id)
        .where(*conditions, *([Attempt.id < bindparam("before")] if "before" in used else []))
        .order_by(Attempt.id.desc())
        .limit(bindparam("limit", type_=Integer))
    )
    # The count joins only what its conditions need.
    count = select(func.count()).select_from(Attempt)
    if used & {"edit_type", "pattern"}:
        count = count.join(Task, Task.id == Attempt.task_id)
    if used & {"verdict", "min_score", "max_score"}:
        count = count.outerjoin(Judgment, Judgment.attempt_id == Attempt.id)
    return page, count.where(*conditions)


def list_samples(
    session: Session, *, sample_filter: SampleFilter, limit: int, before: int | None = None
) -> SamplePage:
    """One page of the samples grid and the number of matches."""
    query = sample_queries(sample_filter, limit=limit, before=before)
    rows = session.execute(query.page, query.params).all()
    if not rows and sample_filter.run_id is not None:
        # No match: say so if the run or the round does not exist.
        get_run(session, sample_filter.run_id)
        if sample_filter.round_number is not None and not session.scalar(
            select(Round.id).where(
                Round.run_id == sample_filter.run_id, Round.number == sample_filter.round_number
            )
        ):
            raise NotFound(
                f"round {sample_filter.round_number} of run {sample_filter.run_id} not found"
            )
    cards = [
        SampleCard(
            attempt_id=r[0],
            run_id=r[1],
            run_name=r[2],
            round_number=r[3],
            task_id=r[4],
            sample_index=r[5],
            depth=r[6],
            edit_type=r[7],
            task_instruction=r[8],
            instruction=r[9],
            source_key=r[10],
            input_key=r[11],
            output_key=r[12],
            status=r[13].value,
            judge_verdict=_value(r[14]),
            override_verdict=_value(r[15]),
            verdict=_value(r[15] or r[14]),
            following=r[16],
            quality=r[17],
            preservation=r[18],
            overall=r[19],
        )
        for r in rows[:limit]
    ]
    return SamplePage(
        items=cards,
        total=session.scalar(query.count, query.params) or 0,
        next_before=cards[-1].attempt_id if len(rows) > limit else None,
    )


def sample_detail(session: Session, *, attempt_id: int) -> SampleDetail:
    """An attempt's whole chain (every attempt of its task's sample in its round, by depth), each
    with its judgment: images, instructions, scores, the reflector's reasoning and raw text."""
    attempt = session.get(Attempt, attempt_id)
    if attempt is None:
        raise NotFound(f"attempt {attempt_id} not found")
    round_ = session.get_one(Round, attempt.round_id)
    run = session.get_one(Run, round_.run_id)
    task = session.get_one(Task, attempt.task_id)
    steps = session.execute(
        select(Attempt, Judgment, Checkpoint.version)
        .outerjoin(Judgment, Judgment.attempt_id == Attempt.id)
        .outerjoin(Checkpoint, Checkpoint.id == Attempt.checkpoint_id)
        .where(
            Attempt.round_id == attempt.round_id,
            Attempt.task_id == attempt.task_id,
            Attempt.sample_index == attempt.sample_index,
        )
        .order_by(Attempt.depth)
    ).all()
    sources = session.scalars(
        select(TaskSource).where(TaskSource.task_id == task.id).order_by(TaskSource.id)
    )
    return SampleDetail(
        attempt_id=attempt_id,
        run_id=run.id,
        run_name=run.name,
        round_number=round_.number,
        sample_index=attempt.sample_index,
        task=TaskView(
            id=task.id,
            instruction=task.instruction,
            edit_type=task.edit_type,
            source_key=task.source_key,
            origin=task.origin,
            width=task.width,
            height=task.height,
            sources=[TaskSourceView(s.dataset, s.licence) for s in sources],
        ),
        chain=[_chain_step(a, j, version) for a, j, version in steps],
    )


def _chain_step(attempt: Attempt, judgment: Judgment | None, version: str | None) -> ChainStep:
    return ChainStep(
        attempt_id=attempt.id,
        depth=attempt.depth,
        parent_id=attempt.parent_id,
        instruction=attempt.instruction,
        input_key=attempt.input_key,
        output_key=attempt.output_key,
        seed=attempt.seed,
        status=attempt.status.value,
        verdict=_value(
            judgment.override_verdict if judgment and judgment.override_verdict else attempt.verdict
        ),
        error=attempt.error,
        checkpoint_version=version,
        edit_seconds=attempt.edit_seconds,
        dispatch_count=attempt.dispatch_count,
        judgment=_judgment_view(judgment) if judgment is not None else None,
    )


def _judgment_view(j: Judgment) -> JudgmentView:
    names = j.dimension_names.get("names", []) if isinstance(j.dimension_names, dict) else []
    return JudgmentView(
        following=j.score_following,
        quality=j.score_quality,
        preservation=j.score_preservation,
        overall=j.overall,
        dimension_names=[str(name) for name in names],
        parse_status=j.parse_status,
        verdict=j.verdict.value,
        reason=j.reason,
        reflector_tag=j.reflector_tag,
        think=j.think,
        target_description=j.target_description,
        revised_instruction=j.revised_instruction,
        proposed_instruction=j.proposed_instruction,
        judge_model=j.judge_model,
        reflector_model=j.reflector_model,
        raw_judge_output=j.raw_judge_output,
        raw_reflector_output=j.raw_reflector_output,
        latency_s=j.latency_s,
        override_verdict=_value(j.override_verdict),
        override_reviewer=j.override_reviewer,
        override_reason=j.override_reason,
        override_at=j.override_at,
    )


def referenced_key_query(key: str) -> Select[Any]:
    """Whether a row points at `key`, as one statement: a task's source or an attempt's output.
    (An attempt's input is always one of those: the source, or its parent's output.)"""
    source = select(Task.id).where(Task.source_key == key).exists()
    output = select(Attempt.id).where(Attempt.output_key == key).exists()
    return select(source | output)


def referenced_key(session: Session, *, key: str) -> bool:
    """Whether a row points at `key` (only such keys are served)."""
    return bool(session.scalar(referenced_key_query(key)))
