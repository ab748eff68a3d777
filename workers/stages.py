"""The work of the edit and judge tasks, as plain functions of a context and attempt ids.

Idempotent: each stage only acts on attempts still in the status it expects, and its row
updates are conditional on that status, so a redelivered or re-dispatched batch changes nothing
that was already done. Objects are written before the rows that point at them.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from PIL import Image
from sqlalchemy import ColumnElement, case, select, update
from sqlalchemy.orm import Session

from policies.types import EditRequest, EditResult
from rewards.judging import judge_items
from rewards.types import JudgeItem
from rewards.verdict import decide_verdict, image_change
from store.db import with_db_retry
from store.images import ImageError, decode_image, encode_png
from store.keys import EDIT_PREFIX
from store.models import (
    Attempt,
    AttemptStatus,
    Checkpoint,
    CheckpointRole,
    CheckpointStatus,
    Judgment,
    Round,
    Run,
    Task,
    TrainJob,
    utcnow,
)
from store.objects import ObjectNotFound, put_content
from store.taxonomy import EditType, Verdict
from workers.context import WorkerContext


def db_text(value: str | None) -> str | None:
    """Model output made storable as is: PostgreSQL text refuses NUL, which random models emit."""
    return value.replace("\x00", "\ufffd") if value else value


@dataclass(frozen=True)
class _EditWork:
    attempt_id: int
    input_key: str
    instruction: str
    seed: int
    checkpoint_id: int | None


def edit_attempts(
    context: WorkerContext, attempt_ids: list[int], batch: str | None = None
) -> list[int]:
    """Edit the dispatched attempts among `attempt_ids` that were sent in `batch` (None: any);
    returns the ids that are now edited."""

    def load() -> tuple[list[_EditWork], dict[int, Checkpoint]]:
        guard = _sent_in(attempt_ids, batch, AttemptStatus.DISPATCHED)
        with context.session_factory() as session, session.begin():
            rows = session.execute(
                select(
                    Attempt.id, Attempt.input_key, Attempt.instruction, Attempt.seed,
                    Attempt.checkpoint_id, Round.run_id, Round.started_at, Run.config,
                )
                .join(Round, Round.id == Attempt.round_id)
                .join(Run, Run.id == Round.run_id)
                .where(*guard)
                .order_by(Attempt.id)
            ).all()  # fmt: skip
            if not rows:
                return [], {}
            chosen = choose_checkpoints(
                session, [StartingAttempt(r.id, r.checkpoint_id, r.run_id, r.started_at,
                                          r.config) for r in rows]
            )  # fmt: skip
            started = set(
                session.scalars(
                    update(Attempt)
                    .where(*guard, Attempt.id.in_(list(chosen)))
                    .values(
                        worker=context.worker_name,
                        started_at=utcnow(),
                        dispatch_deadline=None,
                        checkpoint_id=_by_id({i: c for i, (c, _) in chosen.items()}),
                        staleness=_by_id({i: n for i, (_, n) in chosen.items()}),
                    )
                    .returning(Attempt.id)
                )
            )
            work = [
                _EditWork(r.id, r.input_key, r.instruction, r.seed, chosen[r.id][0])
                for r in rows
                if r.id in started
            ]
            ids = {w.checkpoint_id for w in work if w.checkpoint_id is not None}
            if not ids:
                return work, {}
            checkpoints = {
                c.id: c for c in session.scalars(select(Checkpoint).where(Checkpoint.id.in_(ids)))
            }
            return work, checkpoints

    work, checkpoints = with_db_retry(load, retries=context.retries, what="loading attempts")
    edited: list[int] = []
    for checkpoint_id in sorted({w.checkpoint_id or 0 for w in work}):
        group = [w for w in work if (w.checkpoint_id or 0) == checkpoint_id]
        editor = context.models.editor(checkpoints.get(checkpoint_id))
        edited += _edit_group(context, group, editor.edit, batch)
    return edited


def _sent_in(
    attempt_ids: list[int], batch: str | None, status: AttemptStatus
) -> list[ColumnElement[bool]]:
    """The attempts among `attempt_ids` in `status` that belong to the message `batch`: one sent
    before the controller sent them again (a redelivery of a dead worker's task) acts on none."""
    guard = [Attempt.id.in_(attempt_ids), Attempt.status == status]
    if batch is not None:
        guard.append(Attempt.batch == batch)
    return guard


def _mark_started(
    session: Session, context: WorkerContext, guard: list[ColumnElement[bool]]
) -> None:
    # Who holds them from now on: the controller leaves them alone while this worker beats.
    session.execute(
        update(Attempt)
        .where(*guard)
        .values(worker=context.worker_name, started_at=utcnow(), dispatch_deadline=None)
    )


@dataclass(frozen=True)
class StartingAttempt:
    """An attempt a worker is about to edit, as choosing its checkpoint needs it."""

    id: int
    checkpoint_id: int | None  # the round's (or the parent's)
    run_id: int
    round_started: datetime
    run_config: dict[str, Any]


def choose_checkpoints(
    session: Session, attempts: list[StartingAttempt]
) -> dict[int, tuple[int | None, int]]:
    """The checkpoint each starting attempt edits with, and its staleness, by attempt id.

    A pipelined run (`pipeline_depth` >= 1) edits with the latest promoted checkpoint, so batches
    not yet started switch to one promoted mid-round; other runs keep the round's. Staleness: the
    run's training jobs queued before the round opened whose result the checkpoint lacks.
    """
    latest = session.scalar(
        select(Checkpoint.id)
        .where(
            Checkpoint.status == CheckpointStatus.PROMOTED,
            # A promoted judge or reflector checkpoint is never the editor.
            Checkpoint.role == CheckpointRole.EDITOR.value,
        )
        .order_by(Checkpoint.id.desc())
        .limit(1)
    )
    jobs: dict[tuple[int, datetime], list[JobOutcome]] = {}
    chosen = {}
    for attempt in attempts:
        checkpoint_id = attempt.checkpoint_id
        depth = attempt.run_config.get("pipeline_depth")
        if depth is not None and depth >= 1 and latest is not None:
            checkpoint_id = latest
        key = (attempt.run_id, attempt.round_started)
        if key not in jobs:
            jobs[key] = [
                JobOutcome(status.value, job_checkpoint, promoted == CheckpointStatus.PROMOTED)
                for status, job_checkpoint, promoted in session.execute(
                    select(TrainJob.status, TrainJob.checkpoint_id, Checkpoint.status)
                    .outerjoin(Checkpoint, Checkpoint.id == TrainJob.checkpoint_id)
                    .where(TrainJob.run_id == attempt.run_id, TrainJob.created_at < key[1])
                )
            ]
        chosen[attempt.id] = (checkpoint_id, staleness(jobs[key], checkpoint_id))
    return chosen


@dataclass(frozen=True)
class JobOutcome:
    """A training job as staleness needs it."""

    status: str
    checkpoint_id: int | None
    promoted: bool  # its checkpoint is promoted


def staleness(jobs: list[JobOutcome], checkpoint_id: int | None) -> int:
    """How many of `jobs` (queued before the round opened) an edit with `checkpoint_id` does
    not reflect: still queued or running, or promoted a newer checkpoint than it (ids grow)."""
    return sum(
        1
        for job in jobs
        if job.status in ("queued", "running")
        or (job.promoted and (job.checkpoint_id or 0) > (checkpoint_id or 0))
    )


def _edit_group(
    context: WorkerContext, group: list[_EditWork], edit, batch: str | None
) -> list[int]:  # type: ignore[no-untyped-def]
    failures: dict[int, str] = {}
    requests: list[tuple[_EditWork, EditRequest]] = []
    for item in group:
        try:
            image = decode_image(context.store.get(item.input_key), context.image_limits)
        except (ObjectNotFound, ImageError) as exc:
            failures[item.attempt_id] = f"input image {item.input_key}: {exc}"
            continue
        requests.append((item, EditRequest(image, item.instruction, item.seed)))
    results: list[EditResult] = edit([request for _, request in requests]) if requests else []
    outputs: dict[int, tuple[str, float]] = {}
    for (item, _), result in zip(requests, results, strict=True):
        if result.image is None:
            failures[item.attempt_id] = f"editor: {result.error}"
            continue
        key = put_content(
            context.store,
            encode_png(result.image),
            prefix=EDIT_PREFIX,
            ext="png",
            content_type="image/png",
        )
        # The pipeline call's time is shared by its batch: GPU-seconds per attempt is a share.
        share = result.wall_time_s / float(result.params.get("batch_size", 1))
        outputs[item.attempt_id] = (key, share)

    def record() -> list[int]:
        if not outputs:
            return []
        now = utcnow()
        # One statement for the batch; it also claims the attempts for this message, so that its
        # judge message acts on them even if the controller sent them again meanwhile.
        moved = {"batch": batch} if batch is not None else {}
        with context.session_factory() as session, session.begin():
            return list(
                session.scalars(
                    update(Attempt)
                    .where(
                        Attempt.id.in_(list(outputs)), Attempt.status == AttemptStatus.DISPATCHED
                    )
                    .values(
                        status=AttemptStatus.EDITED,
                        output_key=_by_id({i: key for i, (key, _) in outputs.items()}),
                        edit_seconds=_by_id({i: seconds for i, (_, seconds) in outputs.items()}),
                        started_at=None,
                        dispatched_at=now,
                        dispatch_deadline=now + timedelta(seconds=context.judge_timeout_s),
                        **moved,
                    )
                    .returning(Attempt.id)
                )
            )

    done = with_db_retry(record, retries=context.retries, what="recording edits")
    if failures:
        _fail(context, failures, expected=AttemptStatus.DISPATCHED)
    return done


@dataclass(frozen=True)
class _JudgeWork:
    attempt_id: int
    output_key: str
    source_key: str
    instruction: str
    edit_type: EditType
    tries_left: int


def judge_attempts(
    context: WorkerContext, attempt_ids: list[int], batch: str | None = None
) -> list[int]:
    """Judge the edited attempts among `attempt_ids` sent in `batch` (None: any) against the
    original source and instruction. Returns the ids that are now judged.
    """

    def load() -> list[_JudgeWork]:
        guard = _sent_in(attempt_ids, batch, AttemptStatus.EDITED)
        with context.session_factory() as session, session.begin():
            _mark_started(session, context, guard)
            rows = session.execute(
                select(Attempt, Task, Run.config)
                .join(Task, Attempt.task_id == Task.id)
                .join(Round, Attempt.round_id == Round.id)
                .join(Run, Round.run_id == Run.id)
                .where(*guard)
                .order_by(Attempt.id)
            ).all()
            return [
                _JudgeWork(
                    attempt_id=attempt.id,
                    output_key=attempt.output_key or "",
                    source_key=task.source_key,
                    instruction=task.instruction,
                    edit_type=EditType(task.edit_type),
                    tries_left=max(0, int(config.get("max_reflections", 2)) - attempt.depth),
                )
                for attempt, task, config in rows
            ]

    loaded = with_db_retry(load, retries=context.retries, what="loading attempts")
    images: dict[str, Image.Image] = {}
    failures: dict[int, str] = {}
    work = []
    for item in loaded:
        try:
            for key in (item.source_key, item.output_key):
                if key not in images:
                    images[key] = decode_image(context.store.get(key), context.image_limits)
        except (ObjectNotFound, ImageError) as exc:
            failures[item.attempt_id] = f"image {key}: {exc}"
            continue
        work.append(item)
    items = [
        JudgeItem(
            source=images[w.source_key],
            edited=images[w.output_key],
            instruction=w.instruction,
            edit_type=w.edit_type,
        )
        for w in work
    ]
    scores, reflections = [], []
    if items:
        scorer, reflector = context.models.judges(*_judge_checkpoints(context))
        scores, reflections = judge_items(scorer, reflector, items)
    rows = []
    for item, judged, score, reflection in zip(work, items, scores, reflections, strict=True):
        decision = decide_verdict(
            score,
            reflection,
            tries_left=item.tries_left,
            change=image_change(judged.source, judged.edited),
            thresholds=context.thresholds,
        )
        latency = score.latency_s + (reflection.latency_s if reflection is not None else 0.0)
        rows.append(
            {
                "attempt_id": item.attempt_id,
                "score_following": score.following,
                "score_quality": score.quality,
                "score_preservation": score.preservation,
                "overall": score.overall,
                "dimension_names": {"names": list(score.dimension_names)},
                "parse_status": score.status.value,
                "verdict": decision.verdict,
                "reason": db_text(f"{decision.reason.value}: {decision.detail}"),
                "revised_instruction": db_text(decision.new_instruction),
                "reflector_tag": reflection.tag.value if reflection is not None else None,
                "proposed_instruction": db_text(reflection and reflection.new_instruction),
                "target_description": db_text(reflection and reflection.target_description),
                "think": db_text(reflection and reflection.think),
                "judge_model": score.model,
                "reflector_model": reflection.model if reflection else None,
                "raw_judge_output": db_text(score.raw_output),
                "raw_reflector_output": db_text(reflection and reflection.raw_output),
                "latency_s": latency,
                "created_at": utcnow(),
            }
        )

    def record() -> list[int]:
        if not rows:
            return []
        verdicts = {row["attempt_id"]: row["verdict"] for row in rows}
        with context.session_factory() as session, session.begin():
            done = list(
                session.scalars(
                    update(Attempt)
                    .where(Attempt.id.in_(list(verdicts)), Attempt.status == AttemptStatus.EDITED)
                    .values(status=AttemptStatus.JUDGED, verdict=_by_id(verdicts))
                    .returning(Attempt.id)
                )
            )
            judged = set(done)
            _insert_judgments(session, [row for row in rows if row["attempt_id"] in judged])
        return done

    done = with_db_retry(record, retries=context.retries, what="recording judgments")
    if failures:
        _fail(context, failures, expected=AttemptStatus.EDITED)
    return done


def _judge_checkpoints(context: WorkerContext) -> tuple[Checkpoint | None, Checkpoint | None]:
    """The latest promoted judge and reflector checkpoints (None: the configured models)."""

    def latest(role: CheckpointRole) -> Checkpoint | None:
        with context.session_factory() as session:
            return session.scalar(
                select(Checkpoint)
                .where(Checkpoint.status == CheckpointStatus.PROMOTED, Checkpoint.role == role)
                .order_by(Checkpoint.id.desc())
                .limit(1)
            )

    def load() -> tuple[Checkpoint | None, Checkpoint | None]:
        return latest(CheckpointRole.JUDGE), latest(CheckpointRole.REFLECTOR)

    return with_db_retry(load, retries=context.retries, what="loading judge checkpoints")


def _fail(context: WorkerContext, failures: dict[int, str], *, expected: AttemptStatus) -> None:
    """End the attempts in `failures` as Failed with their reason, if still in `expected`."""

    def record() -> None:
        with context.session_factory() as session, session.begin():
            session.execute(
                update(Attempt)
                .where(Attempt.id.in_(list(failures)), Attempt.status == expected)
                .values(status=AttemptStatus.FAILED, verdict=Verdict.FAILED, error=_by_id(failures))
            )

    with_db_retry(record, retries=context.retries, what="recording failures")


def _insert_judgments(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert judgments, skipping any that exist, as one executemany (a compiled statement that
    is cached, unlike a multi-row VALUES of as many parameters as the batch has rows)."""
    if not rows:
        return
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    statement = insert(Judgment).on_conflict_do_nothing(index_elements=["attempt_id"])
    session.execute(statement, rows)


def _by_id(values: Mapping[int, Any]) -> Any:
    """A per-attempt value in one UPDATE: CASE attempt.id WHEN 1 THEN ... END (the value itself
    when every attempt gets the same)."""
    distinct = set(values.values())
    if len(distinct) == 1:
        return distinct.pop()
    return case(dict(values), value=Attempt.id)
