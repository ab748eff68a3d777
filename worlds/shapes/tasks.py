"""Edit tasks of the shapes world: a source scene, its operations and an instruction; seeded
generators of single-operation and compound (two-operation) tasks, from the whole task space or
from one part of it (`worlds.shapes.partition`); a JSON-able record of a task."""

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from worlds.shapes.language import describe_scene, phrase_operation, phrase_operations
from worlds.shapes.operations import apply_operations, edit_type_of
from worlds.shapes.partition import Part, part_of, task_key
from worlds.shapes.pixels import render_scene
from worlds.shapes.types import (
    BACKGROUND_COLOURS,
    DEFAULT_SIZE,
    KINDS,
    SHAPE_COLOURS,
    Operation,
    OpKind,
    Scene,
    Shape,
)


@dataclass(frozen=True)
class ShapesTask:
    """An edit task: the source scene, its operations, the instruction and the image size."""

    scene: Scene
    operations: tuple[Operation, ...]
    instruction: str
    size: int = DEFAULT_SIZE

    @property
    def edit_type(self) -> str:
        """The ImgEdit edit type (a `store.taxonomy.EditType` value)."""
        return edit_type_of(self.operations)

    @property
    def target_scene(self) -> Scene:
        return apply_operations(self.scene, self.operations)

    @property
    def key(self) -> str:
        """What the task asks, whatever its wording (`partition.task_key`)."""
        return task_key(self.scene, self.operations)

    @property
    def part(self) -> Part:
        """The part of the task space it belongs to (`partition.part_of`)."""
        return part_of(self.scene, self.operations)

    def source_image(self) -> Image.Image:
        return render_scene(self.scene, self.size)

    def target_image(self) -> Image.Image:
        return render_scene(self.target_scene, self.size)


def random_scene(rng: random.Random, shape_count: int | None = None) -> Scene:
    """A scene of `shape_count` shapes (default: 1 or 2 at random), distinct colours and cells."""
    count = shape_count if shape_count is not None else rng.choice([1, 2])
    cells = rng.sample(range(9), count)
    colours = rng.sample(list(SHAPE_COLOURS), count)
    shapes = tuple(Shape(c, rng.choice(KINDS), p) for c, p in zip(colours, cells, strict=True))
    return Scene(rng.choice(list(BACKGROUND_COLOURS)), shapes)


def random_operation(
    rng: random.Random,
    scene: Scene,
    kind: OpKind,
    avoid: tuple[Operation, ...] = (),
) -> Operation | None:
    """A random operation of `kind` on `scene` that edits an object `avoid` does not and gives no
    colour `avoid` gives; None if there is none."""
    if kind is OpKind.BACKGROUND:
        if any(op.kind is OpKind.BACKGROUND for op in avoid):
            return None
        return Operation(
            kind, new_colour=rng.choice([b for b in BACKGROUND_COLOURS if b != scene.background])
        )
    taken = {op.colour for op in avoid}
    candidates = [shape.colour for shape in scene.shapes if shape.colour not in taken]
    if not candidates:
        return None
    colour = rng.choice(candidates)
    if kind is OpKind.REMOVE:
        return Operation(kind, colour)
    used = {shape.colour for shape in scene.shapes} | {op.new_colour for op in avoid}
    free = [c for c in SHAPE_COLOURS if c not in used]
    if not free:
        return None
    return Operation(kind, colour, rng.choice(free))


def random_single_op_task(
    rng: random.Random, size: int = DEFAULT_SIZE, part: Part | None = None
) -> ShapesTask:
    """A task of one operation (recolour, remove or background, equally likely), from `part` of
    the task space (None: anywhere)."""
    while True:
        scene = random_scene(rng)
        operation = random_operation(rng, scene, rng.choice(list(OpKind)))
        if operation is None or (part is not None and part_of(scene, (operation,)) != part):
            continue
        return ShapesTask(scene, (operation,), phrase_operation(operation, scene, rng), size)


def random_compound_task(
    rng: random.Random, size: int = DEFAULT_SIZE, part: Part | None = None
) -> ShapesTask:
    """A task of two operations on different objects in one instruction, from `part` of the task
    space (None: anywhere)."""
    while True:
        # As in docs/design.md, "Learning from judged edits": two different kinds three times in
        # four, else two recolours or two removals (which need two shapes).
        scene = random_scene(rng, rng.choice([1, 2, 2]))
        if rng.random() < 0.75:
            kinds = rng.sample(list(OpKind), 2)
        else:
            kinds = [rng.choice([OpKind.RECOLOUR, OpKind.REMOVE])] * 2
        first = random_operation(rng, scene, kinds[0])
        if first is None:
            continue
        second = random_operation(rng, scene, kinds[1], avoid=(first,))
        if second is None:
            continue
        operations = (first, second)
        if part is not None and part_of(scene, operations) != part:
            continue
        return ShapesTask(scene, operations, phrase_operations(operations, scene, rng), size)


def _generate(
    draw: Callable[[random.Random, int, Part | None], ShapesTask],
    n: int,
    seed: int,
    size: int,
    part: Part | None,
    distinct: bool,
) -> list[ShapesTask]:
    rng = random.Random(seed)
    tasks: list[ShapesTask] = []
    seen: set[str] = set()
    for _ in range(100 * n + 1000):  # a part holds thousands of tasks: never reached in practice
        if len(tasks) == n:
            return tasks
        task = draw(rng, size, part)
        if distinct:
            if task.key in seen:
                continue
            seen.add(task.key)
        tasks.append(task)
    if len(tasks) == n:
        return tasks
    raise ValueError(f"found only {len(tasks)} distinct tasks of {n} in part {part}")


def generate_single_op_tasks(
    n: int,
    *,
    seed: int,
    size: int = DEFAULT_SIZE,
    part: Part | None = None,
    distinct: bool = False,
) -> list[ShapesTask]:
    """`n` single-operation tasks, the same for the same seed; from `part` of the task space
    (None: anywhere); `distinct`: no two ask the same edit (`ShapesTask.key`)."""
    return _generate(random_single_op_task, n, seed, size, part, distinct)


def generate_compound_tasks(
    n: int,
    *,
    seed: int,
    size: int = DEFAULT_SIZE,
    part: Part | None = None,
    distinct: bool = False,
) -> list[ShapesTask]:
    """`n` compound (two-operation) tasks, the same for the same seed; from `part` of the task
    space (None: anywhere); `distinct`: no two ask the same edit (`ShapesTask.key`)."""
    return _generate(random_compound_task, n, seed, size, part, distinct)


def task_to_meta(task: ShapesTask) -> dict[str, Any]:
    """A JSON-able record of a task for the task row's `meta`."""
    return {
        "world": "shapes",
        "part": task.part.value,
        "size": task.size,
        "scene": {
            "background": task.scene.background,
            "shapes": [
                {"colour": s.colour, "kind": s.kind, "cell": s.cell} for s in task.scene.shapes
            ],
        },
        "operations": [
            {"kind": op.kind.value, "colour": op.colour, "new_colour": op.new_colour}
            for op in task.operations
        ],
        "instruction": task.instruction,
        "description": describe_scene(task.scene),
        "target_description": describe_scene(task.target_scene),
    }
