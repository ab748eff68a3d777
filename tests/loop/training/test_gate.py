"""The evaluation gate: paired held-out evaluation, promote unless worse by more than a margin."""

from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from loop.checkpoints import latest_promoted
from loop.training.gate import EvalTask, evaluate, gate_checkpoint, gate_decision, load_eval_tasks
from migrations import upgrade
from policies.types import EditRequest, EditResult
from rewards.shapes_judge import ShapesScorer
from store.db import make_engine, make_session_factory
from store.models import Checkpoint, CheckpointStatus
from store.objects import LocalStore
from store.taxonomy import EditType
from tests.fixtures.loop import FirstOperationEditor
from tests.fixtures.training import seed_pool
from worlds.shapes.language import parse_instruction
from worlds.shapes.operations import apply_operations
from worlds.shapes.pixels import recover_scene, render_scene
from worlds.shapes.tasks import generate_compound_tasks


class OracleEditor:
    """Does every operation of the instruction exactly."""

    version = "oracle"

    def edit(self, requests: Sequence[EditRequest]) -> list[EditResult]:
        results = []
        for r in requests:
            scene = recover_scene(r.image)
            edited = apply_operations(scene, parse_instruction(r.instruction, scene))
            results.append(EditResult(render_scene(edited, r.image.width), None, r.seed, "o", 0.0))
        return results


class BrokenEditor:
    """Fails every request (as an editor does when its pipeline call raises)."""

    version = "broken"

    def edit(self, requests: Sequence[EditRequest]) -> list[EditResult]:
        return [EditResult(None, "pipeline call failed", r.seed, "b", 0.0) for r in requests]


def compound_tasks(n: int = 4) -> list[EvalTask]:
    return [
        EvalTask(i, t.source_image(), t.instruction, EditType(t.edit_type), seed=i)
        for i, t in enumerate(generate_compound_tasks(n, seed=7))
    ]


def test_decision_worked_examples() -> None:
    assert gate_decision(3.40, 3.50, margin=0.10)  # exactly at the margin: promote
    assert not gate_decision(3.39, 3.50, margin=0.10)
    assert gate_decision(3.6, 3.5, margin=0.0)
    assert not gate_decision(3.49, 3.5, margin=0.0)
    with pytest.raises(ValueError, match="margin=-1"):
        gate_decision(1, 1, margin=-1)


def test_evaluate_scores_edits_and_counts_failed_edits_as_the_lowest_score() -> None:
    tasks = compound_tasks()
    oracle = evaluate(OracleEditor(), ShapesScorer(), tasks)
    assert (oracle.mean_overall, oracle.tasks, oracle.failed_edits) == (5.0, 4, 0)
    # Half of each compound edit done: following 3, the other two capped at 3 (ImgEdit's rule).
    half = evaluate(FirstOperationEditor(), ShapesScorer(), tasks)
    assert half.mean_overall == 3.0
    broken = evaluate(BrokenEditor(), ShapesScorer(), tasks)
    assert (broken.mean_overall, broken.failed_edits, broken.scored) == (1.0, 4, 4)
    with pytest.raises(ValueError, match="held-out tasks"):
        evaluate(OracleEditor(), ShapesScorer(), [])


@pytest.fixture
def factory(tmp_path: Path) -> sessionmaker[Session]:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    return make_session_factory(make_engine(url))


def add_checkpoint(factory: sessionmaker[Session], version: str, status: CheckpointStatus,
                   parent_id: int | None = None) -> int:  # fmt: skip
    with factory() as session, session.begin():
        row = Checkpoint(version=version, parent_id=parent_id, kind="full",
                         object_prefix=f"checkpoints/{version}", status=status)  # fmt: skip
        session.add(row)
        session.flush()
        return row.id


def test_a_worse_checkpoint_is_rejected_and_the_next_round_keeps_the_parent(
    factory: sessionmaker[Session],
) -> None:
    parent = add_checkpoint(factory, "parent", CheckpointStatus.PROMOTED)
    worse = add_checkpoint(factory, "worse", CheckpointStatus.READY, parent)
    editors = {"parent": OracleEditor(), "worse": FirstOperationEditor()}
    asked: list[str] = []

    def editor_for(checkpoint: Checkpoint | None):  # type: ignore[no-untyped-def]
        assert checkpoint is not None
        asked.append(checkpoint.version)
        return editors[checkpoint.version]

    status = gate_checkpoint(
        factory=factory, checkpoint_id=worse, editor_for=editor_for, scorer=ShapesScorer(),
        tasks=compound_tasks(), margin=0.5,
    )  # fmt: skip
    assert status == CheckpointStatus.REJECTED
    assert asked == ["parent", "worse"]
    with factory() as session:
        row = session.get_one(Checkpoint, worse)
        assert row.eval_metrics["eval/candidate/mean_overall"] == 3.0
        assert row.eval_metrics["eval/parent/mean_overall"] == 5.0
        assert row.eval_metrics["eval/parent_version"] == "parent"
        assert row.decided_by == "gate" and row.decided_at is not None
        assert row.decision_reason == "mean overall 3.000 vs the parent's 5.000 (margin 0.5)"
        assert latest_promoted(session).id == parent

    # Decided once: gating it again evaluates nothing and keeps the verdict.
    again = gate_checkpoint(
        factory=factory, checkpoint_id=worse, editor_for=editor_for, scorer=ShapesScorer(),
        tasks=compound_tasks(), margin=0.5,
    )  # fmt: skip
    assert again == CheckpointStatus.REJECTED and asked == ["parent", "worse"]

    # A candidate as good as its parent is promoted, and the next round edits with it.
    editors["equal"] = OracleEditor()
    equal = add_checkpoint(factory, "equal", CheckpointStatus.READY, parent)
    status = gate_checkpoint(
        factory=factory, checkpoint_id=equal, editor_for=editor_for, scorer=ShapesScorer(),
        tasks=compound_tasks(), margin=0.0,
    )  # fmt: skip
    assert status == CheckpointStatus.PROMOTED
    with factory() as session:
        assert latest_promoted(session).id == equal


def test_only_a_ready_checkpoint_is_gated_and_base_is_the_parent_of_a_first_fine_tune(
    factory: sessionmaker[Session],
) -> None:
    training = add_checkpoint(factory, "busy", CheckpointStatus.TRAINING)
    with pytest.raises(ValueError, match="busy is training"):
        gate_checkpoint(
            factory=factory, checkpoint_id=training, editor_for=lambda c: OracleEditor(),
            scorer=ShapesScorer(), tasks=compound_tasks(), margin=0.0,
        )  # fmt: skip
    first = add_checkpoint(factory, "first", CheckpointStatus.READY)
    seen: list[Checkpoint | None] = []

    def editor_for(checkpoint: Checkpoint | None):  # type: ignore[no-untyped-def]
        seen.append(checkpoint)
        return BrokenEditor() if checkpoint is None else OracleEditor()

    status = gate_checkpoint(
        factory=factory, checkpoint_id=first, editor_for=editor_for, scorer=ShapesScorer(),
        tasks=compound_tasks(), margin=0.0,
    )  # fmt: skip
    assert status == CheckpointStatus.PROMOTED and seen[0] is None
    with factory() as session:
        assert session.get_one(Checkpoint, first).eval_metrics["eval/parent_version"] == "base"


def test_held_out_tasks_come_from_their_origin_with_fixed_seeds(
    factory: sessionmaker[Session], tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "objects")
    seeded = seed_pool(factory, store, single=2, compound=2, heldout=3)
    with factory() as session:
        tasks = load_eval_tasks(session, store, origin="heldout", limit=2, seed=100)
    assert [t.task_id for t in tasks] == seeded.heldout_task_ids[:2]
    assert [t.seed for t in tasks] == [100 + i for i in seeded.heldout_task_ids[:2]]
    assert tasks[0].source.mode == "RGB" and tasks[0].edit_type == EditType.HYBRID
