"""Helpers of the training tests: a judged shapes-world pool in the database, trainer parts.

`seed_pool` writes what rounds would have left behind, without running them: per single-operation
task one accepted attempt at depth 0; per compound task a depth-0 attempt that did the first
operation (Reflection, with the missing operation as the revised instruction) and its child that
edited that output into the target (Success); plus held-out tasks (origin `heldout`).
"""

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from loop.trainer import TrainerParts
from policies.checkpoints import fetch_checkpoint
from policies.editor import InstructionEditor
from policies.settings import EditorSettings
from policies.training.data import Example, write_manifest
from policies.training.settings import TrainingSettings
from rewards.shapes_judge import ShapesScorer
from store.images import encode_png
from store.models import (
    Attempt,
    AttemptStatus,
    Checkpoint,
    Judgment,
    Round,
    RoundStatus,
    Run,
    Task,
)
from store.objects import ObjectStore, put_content
from store.taxonomy import Verdict
from worlds.shapes.language import phrase_operation
from worlds.shapes.operations import apply_operation
from worlds.shapes.pixels import render_scene
from worlds.shapes.tasks import generate_compound_tasks, generate_single_op_tasks

# Toy recipe knobs: 32x32 training, batches of 4, a high learning rate so 20-60 steps show.
TINY_RECIPE: dict[str, Any] = {
    "resolution": 32,
    "micro_batch_size": 4,
    "learning_rate": 1e-3,
    "num_workers": 0,
    "progress_bar": False,
}
# Every subprocess of a test: one thread per rank (two cores, shared).
SUBPROCESS_ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@dataclass(frozen=True)
class SeededPool:
    run_id: int
    single_task_ids: list[int]
    compound_task_ids: list[int]
    heldout_task_ids: list[int]
    accepted_attempt_ids: list[int]


def _put_image(store: ObjectStore, image: Any) -> str:
    return put_content(
        store, encode_png(image), prefix="edits", ext="png", content_type="image/png"
    )


def _task(session: Session, store: ObjectStore, source: Any, instruction: str, edit_type: str,
          origin: str) -> Task:  # fmt: skip
    task = Task(
        source_key=_put_image(store, source),
        instruction=instruction,
        instruction_sha256=hashlib.sha256(instruction.encode()).hexdigest(),
        edit_type=edit_type,
        origin=origin,
        width=source.width,
        height=source.height,
    )
    session.add(task)
    session.flush()
    return task


def _judged(session: Session, attempt: Attempt, verdict: Verdict, overall: float,
            revised: str | None = None) -> None:  # fmt: skip
    attempt.status = AttemptStatus.JUDGED
    attempt.verdict = verdict
    session.add(attempt)
    session.flush()
    session.add(
        Judgment(
            attempt_id=attempt.id,
            score_following=overall,
            score_quality=overall,
            score_preservation=overall,
            overall=overall,
            parse_status="ok",
            verdict=verdict,
            revised_instruction=revised,
            judge_model="test",
        )
    )


def seed_pool(
    factory: sessionmaker[Session],
    store: ObjectStore,
    *,
    single: int = 4,
    compound: int = 4,
    heldout: int = 4,
    run_name: str = "pool",
) -> SeededPool:
    """Write a judged round of shapes tasks (see the module docstring) and held-out tasks."""
    with factory() as session, session.begin():
        run = Run(name=run_name)
        session.add(run)
        session.flush()
        round_ = Round(run_id=run.id, number=0, status=RoundStatus.FINISHED)
        session.add(round_)
        session.flush()
        singles, compounds, accepted = [], [], []
        for index, shapes in enumerate(generate_single_op_tasks(single, seed=1)):
            task = _task(session, store, shapes.source_image(), shapes.instruction,
                         shapes.edit_type, "shapes")  # fmt: skip
            attempt = Attempt(
                round_id=round_.id, task_id=task.id, sample_index=0, depth=0,
                instruction=task.instruction, input_key=task.source_key, seed=index,
                output_key=_put_image(store, shapes.target_image()),
            )  # fmt: skip
            _judged(session, attempt, Verdict.SUCCESS, 5.0)
            singles.append(task.id)
            accepted.append(attempt.id)
        for index, shapes in enumerate(generate_compound_tasks(compound, seed=2)):
            task = _task(session, store, shapes.source_image(), shapes.instruction,
                         shapes.edit_type, "shapes")  # fmt: skip
            halfway = apply_operation(shapes.scene, shapes.operations[0])
            revised = phrase_operation(shapes.operations[1], halfway)
            parent = Attempt(
                round_id=round_.id, task_id=task.id, sample_index=0, depth=0,
                instruction=task.instruction, input_key=task.source_key, seed=100 + index,
                output_key=_put_image(store, render_scene(halfway, shapes.size)),
            )  # fmt: skip
            _judged(session, parent, Verdict.REFLECTION, 3.0, revised)
            child = Attempt(
                round_id=round_.id, task_id=task.id, sample_index=0, depth=1,
                parent_id=parent.id, instruction=revised, input_key=parent.output_key,
                seed=200 + index, output_key=_put_image(store, shapes.target_image()),
            )  # fmt: skip
            _judged(session, child, Verdict.SUCCESS, 4.0)
            compounds.append(task.id)
            accepted.append(child.id)
        held = [
            _task(
                session,
                store,
                shapes.source_image(),
                shapes.instruction,
                shapes.edit_type,
                "heldout",
            ).id  # fmt: skip
            for shapes in generate_compound_tasks(heldout, seed=3)
        ]
        return SeededPool(run.id, singles, compounds, held, accepted)


def tiny_editor(model_dir: Path) -> InstructionEditor:
    """The tiny InstructPix2Pix as the gate edits with it (2 steps)."""
    return InstructionEditor.from_settings(
        EditorSettings(steps=2, max_pixels=64 * 64, batch_size=8), model=model_dir
    )


def ip2p_parts(
    *,
    factory: sessionmaker[Session],
    store: ObjectStore,
    work_dir: Path,
    store_root: Path,
    model_dir: Path,
    settings: TrainingSettings,
) -> TrainerParts:
    """Trainer parts with the real tiny editor (loaded on first use) and the exact shapes scorer;
    the launched ranks read the store at `store_root` (their settings come from the env)."""
    cache_dir = work_dir / "checkpoint-cache"
    editor = functools.cache(lambda: tiny_editor(model_dir))

    def editor_for(checkpoint: Checkpoint | None) -> InstructionEditor:
        if checkpoint is None:
            editor().use_base()
        else:
            assert checkpoint.object_prefix is not None
            folder = fetch_checkpoint(store, checkpoint.object_prefix, cache_dir)
            editor().use_checkpoint(checkpoint.version, folder)
        return editor()

    def verify(folder: Path) -> None:
        editor().use_checkpoint("under-verification", folder)
        editor().use_base()

    return TrainerParts(
        factory=factory,
        store=store,
        settings=settings,
        work_dir=work_dir,
        model=str(model_dir),
        cache_dir=cache_dir,
        editor_for=editor_for,
        verify=verify,
        load_scorer=ShapesScorer,
        env=SUBPROCESS_ENV | {"EDITLOOP_STORE__LOCAL_ROOT": str(store_root)},
    )


def put_fixed_set(store: ObjectStore, manifest: Path, count: int = 8) -> Path:
    """`count` single-operation shapes edits (16x16) in `store`, listed in `manifest`."""
    examples = []
    for index, task in enumerate(generate_single_op_tasks(count, seed=5)):
        source, target = f"fixed/{index}-source.png", f"fixed/{index}-target.png"
        store.put(source, encode_png(task.source_image()))
        store.put(target, encode_png(task.target_image()))
        examples.append(Example(source, task.instruction, target, "direct"))
    write_manifest(manifest, examples)
    return manifest
