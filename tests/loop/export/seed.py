"""What rounds leave behind, written straight into a database and a store, for the export tests.

Every chain shape an export has to get right, one per task (`task_index % 6`):

0. a first edit accepted at depth 0;
1. a reflection chain: depth 0 half done (Reflection, with a proposed instruction), its child
   edits that output with the proposal and succeeds (a hindsight triple, a confirmed reflection);
2. the same, but the child fails (an unconfirmed reflection);
3. depth 0 Failed, then a restart from the source with the original instruction that succeeds
   (direct and hindsight coincide: no hindsight row);
4. depth 0 Reflection with no retry left: verdict Failed, the proposal kept, no child;
5. depth 0 accepted by the judge and overruled to Failed by a reviewer.

Task 8 (shape 2) is overruled the other way: its failed child made Success by a reviewer.
Tasks come from three datasets with licences (task 0 from two), plus one held-out task with an
accepted edit; attempts fall in runs `alpha` (rounds 0 and 1, round 1 with checkpoint `ckpt-a`)
and `beta` (round 0).
"""

import hashlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from store.images import encode_png
from store.models import (
    Attempt,
    AttemptStatus,
    Checkpoint,
    CheckpointStatus,
    Judgment,
    Round,
    RoundStatus,
    Run,
    Task,
    TaskSource,
)
from store.objects import ObjectStore, put_content
from store.taxonomy import Verdict

DATASETS = [("imgedit", "CC-BY-4.0"), ("seed-edit", "CC-BY-NC-4.0"), ("legacy", "")]
EDIT_TYPES = ["add", "remove", "replace", "alter", "background", "style"]
NAMES = ["Prompt Compliance", "Visual Naturalness", "Physical & Detail Integrity"]


@dataclass
class Seeded:
    task_ids: list[int] = field(default_factory=list)
    heldout_task_id: int = 0
    # attempt ids by role
    overruled_to_failed: list[int] = field(default_factory=list)
    overruled_to_success: list[int] = field(default_factory=list)
    confirmed: list[int] = field(default_factory=list)  # reflections whose proposal succeeded
    unconfirmed: list[int] = field(default_factory=list)  # ... and failed
    no_retry_left: list[int] = field(default_factory=list)  # proposal kept, no child
    hindsight_of: list[int] = field(default_factory=list)  # accepted reflection steps
    keys: dict[int, tuple[str, str]] = field(default_factory=dict)  # attempt → (input, output)


def image_bytes(label: str, size: int = 12) -> bytes:
    """A distinct small PNG per label."""
    seed = int.from_bytes(hashlib.sha256(label.encode()).digest()[:4], "big")
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return encode_png(Image.fromarray(pixels))


def _put(store: ObjectStore, label: str, prefix: str) -> str:
    return put_content(
        store, image_bytes(label), prefix=prefix, ext="png", content_type="image/png"
    )


class _Writer:
    def __init__(self, session: Session, store: ObjectStore, seeded: Seeded) -> None:
        self.session, self.store, self.seeded = session, store, seeded

    def task(self, index: int, origin: str, sources: list[tuple[str, str]]) -> Task:
        instruction = f"do edit number {index}"
        task = Task(
            source_key=_put(self.store, f"source-{index}", "sources"),
            instruction=instruction,
            instruction_sha256=hashlib.sha256(instruction.encode()).hexdigest(),
            edit_type=EDIT_TYPES[index % len(EDIT_TYPES)],
            origin=origin,
            width=12,
            height=12,
        )
        self.session.add(task)
        self.session.flush()
        for dataset, licence in sources:
            self.session.add(TaskSource(task_id=task.id, dataset=dataset, licence=licence))
        return task

    def attempt(
        self,
        round_: Round,
        task: Task,
        *,
        depth: int,
        verdict: Verdict,
        tag: str | None,
        instruction: str | None = None,
        input_key: str | None = None,
        parent: Attempt | None = None,
        proposed: str | None = None,
        revised: str | None = None,
        override: Verdict | None = None,
    ) -> Attempt:
        attempt = Attempt(
            round_id=round_.id,
            task_id=task.id,
            sample_index=0,
            depth=depth,
            parent_id=parent.id if parent else None,
            instruction=instruction or task.instruction,
            input_key=input_key or task.source_key,
            seed=1000 * task.id + depth,
            checkpoint_id=round_.checkpoint_id,
            output_key=_put(self.store, f"edit-{task.id}-{depth}", "edits"),
            status=AttemptStatus.JUDGED,
            verdict=verdict,
        )
        self.session.add(attempt)
        self.session.flush()
        score = {Verdict.SUCCESS: 4.5, Verdict.REFLECTION: 3.0, Verdict.FAILED: 1.5}[verdict]
        self.session.add(
            Judgment(
                attempt_id=attempt.id,
                score_following=score,
                score_quality=score - 0.5,
                score_preservation=score,
                overall=score - 0.25,
                dimension_names={"names": NAMES},
                parse_status="ok",
                verdict=verdict,
                revised_instruction=revised,
                reflector_tag=tag,
                proposed_instruction=proposed,
                target_description=f"the target of task {task.id}" if tag else None,
                think=f"reasoning about attempt {attempt.id}" if tag else None,
                judge_model="judge-x",
                reflector_model="reflector-y" if tag else None,
                override_verdict=override,
                override_reviewer="ann" if override else None,
                override_reason="checked by hand" if override else None,
            )
        )
        self.seeded.keys[attempt.id] = (attempt.input_key, attempt.output_key or "")
        return attempt


def seed_export_data(
    factory: sessionmaker[Session], store: ObjectStore, *, tasks: int = 24
) -> Seeded:
    """Write `tasks` tasks' chains (see the module docstring) and one held-out task."""
    seeded = Seeded()
    with factory() as session, session.begin():
        checkpoint = Checkpoint(version="ckpt-a", kind="full", status=CheckpointStatus.PROMOTED)
        alpha, beta = Run(name="alpha"), Run(name="beta")
        session.add_all([checkpoint, alpha, beta])
        session.flush()
        rounds = [
            Round(run_id=alpha.id, number=0, status=RoundStatus.FINISHED),
            Round(
                run_id=alpha.id, number=1, checkpoint_id=checkpoint.id, status=RoundStatus.FINISHED
            ),
            Round(run_id=beta.id, number=0, status=RoundStatus.FINISHED),
        ]
        session.add_all(rounds)
        session.flush()
        w = _Writer(session, store, seeded)
        for index in range(tasks):
            sources = [DATASETS[index % 3]] + ([DATASETS[1]] if index == 0 else [])
            task = w.task(index, sources[0][0], sources)
            seeded.task_ids.append(task.id)
            round_ = rounds[(index // 2) % 3]
            shape = index % 6
            proposal = f"finish edit number {index}"
            if shape == 0:
                w.attempt(round_, task, depth=0, verdict=Verdict.SUCCESS, tag="Success")
            elif shape in (1, 2):
                parent = w.attempt(
                    round_, task, depth=0, verdict=Verdict.REFLECTION, tag="Reflection",
                    proposed=proposal, revised=proposal,
                )  # fmt: skip
                succeeds = shape == 1
                override = Verdict.SUCCESS if index == 8 else None
                child = w.attempt(
                    round_, task, depth=1, parent=parent, instruction=proposal,
                    input_key=parent.output_key,
                    verdict=Verdict.SUCCESS if succeeds else Verdict.FAILED,
                    tag="Success" if succeeds else "Failed", override=override,
                )  # fmt: skip
                # The reviewer's Success counts as the child's verdict.
                effective = succeeds or override is not None
                (seeded.confirmed if effective else seeded.unconfirmed).append(parent.id)
                if effective:
                    seeded.hindsight_of.append(child.id)
                if override is not None:
                    seeded.overruled_to_success.append(child.id)
            elif shape == 3:
                parent = w.attempt(round_, task, depth=0, verdict=Verdict.FAILED, tag="Failed")
                w.attempt(round_, task, depth=1, parent=parent, verdict=Verdict.SUCCESS,
                          tag="Success")  # fmt: skip
            elif shape == 4:
                parent = w.attempt(
                    round_, task, depth=0, verdict=Verdict.FAILED, tag="Reflection",
                    proposed=proposal,
                )  # fmt: skip
                seeded.no_retry_left.append(parent.id)
            else:
                attempt = w.attempt(
                    round_, task, depth=0, verdict=Verdict.SUCCESS, tag="Success",
                    override=Verdict.FAILED,
                )  # fmt: skip
                seeded.overruled_to_failed.append(attempt.id)
        heldout = w.task(tasks, "heldout", [("heldout", "")])
        seeded.heldout_task_id = heldout.id
        w.attempt(rounds[0], heldout, depth=0, verdict=Verdict.SUCCESS, tag="Success")
    return seeded
