"""The work of the edit and judge tasks, as plain functions of a context and attempt ids.

Idempotent: each stage only acts on attempts still in the status it expects, and its row
updates are conditional on that status, so a redelivered or re-dispatched batch changes nothing
that was already done. Objects are written before the rows that point at them.
"""

from dataclasses import dataclass
from datetime import timedelta

from PIL import Image
from sqlalchemy import select, update

from policies.types import EditRequest, EditResult
from rewards.types import JudgeItem
from rewards.verdict import decide_verdict, image_change
from store.db import insert_ignore, with_db_retry
from store.images import ImageError, decode_image, encode_png
from store.keys import EDIT_PREFIX
from store.models import Attempt, AttemptStatus, Checkpoint, Judgment, Round, Run, Task, utcnow
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


def edit_attempts(context: WorkerContext, attempt_ids: list[int]) -> list[int]:
    """Edit the dispatched attempts among `attempt_ids`; returns the ids that are now edited."""

    def load() -> tuple[list[_EditWork], dict[int, Checkpoint]]:
        with context.session_factory() as session, session.begin():
            session.execute(
                update(Attempt)
                .where(Attempt.id.in_(attempt_ids), Attempt.status == AttemptStatus.DISPATCHED)
                .values(worker=context.worker_name, started_at=utcnow())
            )
            rows = session.scalars(
                select(Attempt)
                .where(Attempt.id.in_(attempt_ids), Attempt.status == AttemptStatus.DISPATCHED)
                .order_by(Attempt.id)
            ).all()
            work = [
                _EditWork(a.id, a.input_key, a.instruction, a.seed, a.checkpoint_id) for a in rows
            ]
            ids = {w.checkpoint_id for w in work if w.checkpoint_id is not None}
            checkpoints = {
                c.id: c for c in session.scalars(select(Checkpoint).where(Checkpoint.id.in_(ids)))
            }
            return work, checkpoints

    work, checkpoints = with_db_retry(load, retries=context.retries, what="loading attempts")
    edited: list[int] = []
    for checkpoint_id in sorted({w.checkpoint_id or 0 for w in work}):
        group = [w for w in work if (w.checkpoint_id or 0) == checkpoint_id]
        editor = context.models.editor(checkpoints.get(checkpoint_id))
        edited += _edit_group(context, group, editor.edit)
    return edited


def _edit_group(context: WorkerContext, group: list[_EditWork], edit) -> list[int]:  # type: ignore[no-untyped-def]
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
        done = []
        deadline = utcnow() + timedelta(seconds=context.judge_timeout_s)
        with context.session_factory() as session, session.begin():
            for attempt_id, (key, seconds) in outputs.items():
                changed = session.execute(
                    update(Attempt)
                    .where(Attempt.id == attempt_id, Attempt.status == AttemptStatus.DISPATCHED)
                    .values(
                        status=AttemptStatus.EDITED,
                        output_key=key,
                        edit_seconds=seconds,
                        dispatch_deadline=deadline,
                    )
                ).rowcount
                if changed:
                    done.append(attempt_id)
        return done

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


def judge_attempts(context: WorkerContext, attempt_ids: list[int]) -> list[int]:
    """Judge the edited attempts among `attempt_ids` against the original source and instruction.

    Returns the ids that are now judged.
    """

    def load() -> list[_JudgeWork]:
        with context.session_factory() as session:
            rows = session.execute(
                select(Attempt, Task, Run.config)
                .join(Task, Attempt.task_id == Task.id)
                .join(Round, Attempt.round_id == Round.id)
                .join(Run, Round.run_id == Run.id)
                .where(Attempt.id.in_(attempt_ids), Attempt.status == AttemptStatus.EDITED)
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
    scorer, reflector = context.models.judges() if items else (None, None)
    scores = scorer.score(items) if scorer is not None else []
    reflections = reflector.reflect(items) if reflector is not None else [None] * len(items)
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
        done = []
        with context.session_factory() as session, session.begin():
            for row in rows:
                changed = session.execute(
                    update(Attempt)
                    .where(Attempt.id == row["attempt_id"], Attempt.status == AttemptStatus.EDITED)
                    .values(status=AttemptStatus.JUDGED, verdict=row["verdict"])
                ).rowcount
                if changed:
                    insert_ignore(session, Judgment, [row], conflict_columns=["attempt_id"])
                    done.append(row["attempt_id"])
        return done

    done = with_db_retry(record, retries=context.retries, what="recording judgments")
    if failures:
        _fail(context, failures, expected=AttemptStatus.EDITED)
    return done


def _fail(context: WorkerContext, failures: dict[int, str], *, expected: AttemptStatus) -> None:
    """End the attempts in `failures` as Failed with their reason, if still in `expected`."""

    def record() -> None:
        with context.session_factory() as session, session.begin():
            for attempt_id, error in failures.items():
                session.execute(
                    update(Attempt)
                    .where(Attempt.id == attempt_id, Attempt.status == expected)
                    .values(status=AttemptStatus.FAILED, verdict=Verdict.FAILED, error=error)
                )

    with_db_retry(record, retries=context.retries, what="recording failures")
