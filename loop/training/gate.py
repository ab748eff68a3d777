"""The evaluation gate: a `ready` checkpoint is promoted unless it edits a held-out set worse.

Parent and candidate edit the same held-out tasks with the same seeds and are scored by the same
scorer (a paired comparison); the candidate is `promoted` if its mean overall score is at least
the parent's minus a margin, else `rejected`. Both figures go into `eval_metrics`. The controller
starts every round with the latest promoted checkpoint, so a rejected one is never used.

Scoring rules: an edit that failed counts as the lowest score (1, ImgEdit's scale), since it is
the editor's failure; an unparseable judgment is left out of the mean and counted, since it is
the judge's.
"""

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from PIL import Image
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from policies.types import Editor, EditRequest
from rewards.types import JudgeItem, Scorer
from store.images import decode_image
from store.models import Checkpoint, CheckpointStatus, Task, utcnow
from store.objects import ObjectStore
from store.taxonomy import EditType, parse_edit_type

LOWEST_SCORE = 1.0


@dataclass(frozen=True)
class EvalTask:
    """One held-out task, with the seed every checkpoint edits it with."""

    task_id: int
    source: Image.Image
    instruction: str
    edit_type: EditType
    seed: int


@dataclass(frozen=True)
class EvalFigures:
    """How one checkpoint did on the held-out set."""

    mean_overall: float  # 1-5, failed edits counted as 1, unparseable judgments left out
    tasks: int
    scored: int  # judgments in the mean (failed edits included)
    failed_edits: int
    unparseable: int


def load_eval_tasks(
    session: Session, store: ObjectStore, *, origin: str, limit: int, seed: int
) -> list[EvalTask]:
    """The first `limit` tasks (by id) ingested with `origin`; seed of task i = seed + its id."""
    tasks = session.scalars(
        select(Task).where(Task.origin == origin).order_by(Task.id).limit(limit)
    ).all()
    return [
        EvalTask(
            task_id=task.id,
            source=decode_image(store.get(task.source_key)),
            instruction=task.instruction,
            edit_type=parse_edit_type(task.edit_type),
            seed=seed + task.id,
        )
        for task in tasks
    ]


def evaluate(editor: Editor, scorer: Scorer, tasks: Sequence[EvalTask]) -> EvalFigures:
    """Edit every task with `editor`, judge against the source and instruction, and average."""
    if not tasks:
        raise ValueError("tasks is empty: the gate needs held-out tasks to compare on")
    results = editor.edit([EditRequest(t.source, t.instruction, t.seed) for t in tasks])
    items = [
        JudgeItem(t.source, r.image, t.instruction, t.edit_type)
        for t, r in zip(tasks, results, strict=True)
        if r.image is not None
    ]
    scores = scorer.score(items) if items else []
    failed = len(tasks) - len(items)
    overall = [s.overall for s in scores if s.overall is not None]
    values = overall + [LOWEST_SCORE] * failed
    return EvalFigures(
        mean_overall=sum(values) / len(values) if values else LOWEST_SCORE,
        tasks=len(tasks),
        scored=len(values),
        failed_edits=failed,
        unparseable=len(scores) - len(overall),
    )


def gate_decision(candidate: float, parent: float, margin: float) -> bool:
    """Promote when the candidate's mean is not below the parent's by more than `margin`.

    E.g. parent 3.50, margin 0.10: candidate 3.40 → promote; 3.39 → reject.
    """
    if margin < 0:
        raise ValueError(f"margin={margin}: must be >= 0")
    # A tolerance for float noise: 3.5 - 0.1 is 3.4000000000000004 in binary.
    return candidate >= parent - margin - 1e-9


def gate_checkpoint(
    *,
    factory: sessionmaker[Session],
    checkpoint_id: int,
    editor_for: Callable[[Checkpoint | None], Editor],
    scorer: Scorer,
    tasks: Sequence[EvalTask],
    margin: float,
) -> CheckpointStatus:
    """Evaluate a `ready` checkpoint against its parent and promote or reject it (idempotent:
    an already decided checkpoint keeps its status). `editor_for(None)` is the base model."""
    with factory() as session:
        checkpoint = session.get_one(Checkpoint, checkpoint_id)
        if checkpoint.status in (CheckpointStatus.PROMOTED, CheckpointStatus.REJECTED):
            return checkpoint.status
        if checkpoint.status != CheckpointStatus.READY:
            raise ValueError(
                f"checkpoint {checkpoint.version} is {checkpoint.status.value}: only a ready "
                "checkpoint is gated"
            )
        parent = (
            session.get_one(Checkpoint, checkpoint.parent_id)
            if checkpoint.parent_id is not None
            else None
        )
    parent_figures = evaluate(editor_for(parent), scorer, tasks)
    candidate_figures = evaluate(editor_for(checkpoint), scorer, tasks)
    promote = gate_decision(candidate_figures.mean_overall, parent_figures.mean_overall, margin)
    status = CheckpointStatus.PROMOTED if promote else CheckpointStatus.REJECTED
    metrics = {
        **{f"eval/candidate/{k}": v for k, v in asdict(candidate_figures).items()},
        **{f"eval/parent/{k}": v for k, v in asdict(parent_figures).items()},
        "eval/parent_version": parent.version if parent is not None else "base",
        "eval/margin": margin,
        "eval/delta_overall": candidate_figures.mean_overall - parent_figures.mean_overall,
    }
    with factory() as session, session.begin():
        # Conditional: a concurrent gate of the same checkpoint decides once.
        done = session.execute(
            update(Checkpoint)
            .where(Checkpoint.id == checkpoint_id, Checkpoint.status == CheckpointStatus.READY)
            .values(
                status=status,
                eval_metrics=metrics,
                decided_by="gate",
                decided_at=utcnow(),
                decision_reason=(
                    f"mean overall {candidate_figures.mean_overall:.3f} vs the parent's "
                    f"{parent_figures.mean_overall:.3f} (margin {margin:g})"
                ),
            )
        )
        if done.rowcount == 0:
            return session.get_one(Checkpoint, checkpoint_id).status
    return status
