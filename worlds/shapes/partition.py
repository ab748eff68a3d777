"""The task space split into disjoint parts by a hash of (scene, operations), for any seed.

A task's part depends on what it asks (its source scene and its set of operations), never on its
wording, a seed or a generator: two instructions for the same edit of the same scene fall in the
same part, so pre-training, the loop, the gate and the evaluation can never share an edit however
their tasks are drawn. Seeds only choose which tasks of a part are drawn.
"""

import hashlib
from enum import StrEnum

from worlds.shapes.types import Operation, Scene


class Part(StrEnum):
    PRETRAIN = "pretrain"  # single operations the editor is pre-trained on (and replayed)
    LOOP = "loop"  # tasks the loop edits and learns from
    GATE = "gate"  # held-out tasks the gate edits before promoting a checkpoint
    EVAL = "eval"  # held-out tasks every measurement edits


# Shares of the task space, in this order along the hash; the held-out parts are large enough for
# thousands of distinct tasks of each kind.
SHARES: tuple[tuple[Part, float], ...] = (
    (Part.PRETRAIN, 0.55),
    (Part.LOOP, 0.25),
    (Part.GATE, 0.10),
    (Part.EVAL, 0.10),
)
# Changing it reshuffles every part: a new version of the partition, not a new seed.
_SALT = "shapes-partition-v1"


def task_key(scene: Scene, operations: tuple[Operation, ...]) -> str:
    """What a task asks, as text: the scene (shapes in cell order) and its operations in a fixed
    order (they commute, so "A and B" and "B and A" are one task)."""
    shapes = ",".join(f"{s.colour}-{s.kind}-{s.cell}" for s in scene.shapes)
    ops = sorted(f"{op.kind.value}:{op.colour or ''}:{op.new_colour or ''}" for op in operations)
    return f"{scene.background}|{shapes}|{'+'.join(ops)}"


def part_of(scene: Scene, operations: tuple[Operation, ...]) -> Part:
    """The part of the task space this task belongs to."""
    digest = hashlib.sha256(f"{_SALT}|{task_key(scene, operations)}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    bound = 0.0
    for part, share in SHARES:
        bound += share
        if point < bound:
            return part
    return SHARES[-1][0]  # rounding of the shares' sum
