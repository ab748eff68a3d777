"""The shapes world: small scenes, edit tasks with exact targets, and a pixel criterion of success.

A scene is a background colour and one or two shapes (a square or a disk), each in its own cell
of a 3x3 grid and named by its colour, which is unique in the scene (EXPERIMENTS.md, experiment 2:
shapes named by colour is what a 1.7 M-parameter editor learns in minutes). Operations are
recolour, remove and background; a task is one operation (single) or two operations on different
objects in one instruction (compound). Instructions are natural sentences drawn from templates;
`parse_instruction` reads any of them back.

Judging needs no side channel: a source image is an exact render, so `recover_scene` reads the
scene back from its pixels (nearest palette colour per pixel), `parse_instruction` gives the
operations, and the target follows. `task_to_meta` still gives a JSON-able record of a task for
the task row's `meta` (the scene in plain words, for people and exports), but judges do not use it.
"""

import random
import re
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from typing import Any

import numpy as np
from PIL import Image

# Colours as RGB in [0, 1]; shape colours and background colours are disjoint, so a shape is
# always distinguishable from any background (EXPERIMENTS.md, common set-up).
SHAPE_COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
}
BACKGROUND_COLOURS: dict[str, tuple[float, float, float]] = {
    "black": (0.0, 0.0, 0.0),
    "white": (1.0, 1.0, 1.0),
    "gray": (0.5, 0.5, 0.5),
}
KINDS: tuple[str, ...] = ("square", "circle")
PALETTE_NAMES: tuple[str, ...] = (*SHAPE_COLOURS, *BACKGROUND_COLOURS)
PALETTE = np.array([*SHAPE_COLOURS.values(), *BACKGROUND_COLOURS.values()], dtype=np.float32)
CELL_PHRASES: tuple[str, ...] = (
    "in the top-left corner",
    "at the top",
    "in the top-right corner",
    "on the left",
    "in the centre",
    "on the right",
    "in the bottom-left corner",
    "at the bottom",
    "in the bottom-right corner",
)
DEFAULT_SIZE = 16
MAX_OPERATIONS = 2

_CLASS = {name: index for index, name in enumerate(PALETTE_NAMES)}


class OpKind(StrEnum):
    RECOLOUR = "recolour"
    REMOVE = "remove"
    BACKGROUND = "background"


# ImgEdit edit type (the values of `store.taxonomy.EditType`) of a single operation; two or more
# operations in one instruction are "hybrid" (ImgEdit's "compose").
EDIT_TYPES: dict[OpKind, str] = {
    OpKind.RECOLOUR: "alter",
    OpKind.REMOVE: "remove",
    OpKind.BACKGROUND: "background",
}
COMPOUND_EDIT_TYPE = "hybrid"


@dataclass(frozen=True)
class Shape:
    """A shape of the scene: its colour (its name), kind and grid cell (0-8, row-major)."""

    colour: str
    kind: str
    cell: int

    def __post_init__(self) -> None:
        if self.colour not in SHAPE_COLOURS:
            raise ValueError(f"shape colour {self.colour!r} is not one of {list(SHAPE_COLOURS)}")
        if self.kind not in KINDS:
            raise ValueError(f"shape kind {self.kind!r} is not one of {list(KINDS)}")
        if not 0 <= self.cell < 9:
            raise ValueError(f"shape cell {self.cell!r} is not in 0..8")


@dataclass(frozen=True)
class Scene:
    """A background colour and shapes with distinct colours and cells, kept sorted by cell."""

    background: str
    shapes: tuple[Shape, ...] = ()

    def __post_init__(self) -> None:
        if self.background not in BACKGROUND_COLOURS:
            raise ValueError(
                f"background {self.background!r} is not one of {list(BACKGROUND_COLOURS)}"
            )
        colours = [shape.colour for shape in self.shapes]
        cells = [shape.cell for shape in self.shapes]
        if len(set(colours)) != len(colours):
            raise ValueError(f"shape colours must be distinct (shapes go by colour): {colours}")
        if len(set(cells)) != len(cells):
            raise ValueError(f"shape cells must be distinct: {cells}")
        # A canonical order makes equal scenes compare equal, whatever order they were built in.
        object.__setattr__(self, "shapes", tuple(sorted(self.shapes, key=lambda s: s.cell)))

    def shape(self, colour: str) -> Shape | None:
        """The shape of this colour, or None."""
        return next((shape for shape in self.shapes if shape.colour == colour), None)


@dataclass(frozen=True)
class Operation:
    """One edit. recolour: shape `colour` → `new_colour`; remove: shape `colour`;
    background: the background becomes `new_colour`."""

    kind: OpKind
    colour: str | None = None
    new_colour: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", OpKind(self.kind))
        if self.kind is OpKind.BACKGROUND:
            ok = self.colour is None and self.new_colour in BACKGROUND_COLOURS
        elif self.kind is OpKind.REMOVE:
            ok = self.colour in SHAPE_COLOURS and self.new_colour is None
        else:
            ok = (
                self.colour in SHAPE_COLOURS
                and self.new_colour in SHAPE_COLOURS
                and self.colour != self.new_colour
            )
        if not ok:
            raise ValueError(f"invalid {self.kind.value} operation: {self!r}")


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

    def source_image(self) -> Image.Image:
        return render_scene(self.scene, self.size)

    def target_image(self) -> Image.Image:
        return render_scene(self.target_scene, self.size)


@dataclass(frozen=True)
class SuccessCriterion:
    """An edit is right when at most `max_wrong` pixels have the wrong palette class overall and at
    most `max_wrong_per_cell` in any grid cell (EXPERIMENTS.md: a wrong shape, colour, position or
    background always fails; the target plus Gaussian noise of sigma 0.3 still passes)."""

    max_wrong: int = 10
    max_wrong_per_cell: int = 4

    def allows(self, wrong: np.ndarray) -> bool:
        """Whether a boolean (S, S) mask of wrong pixels is within the criterion."""
        if int(wrong.sum()) > self.max_wrong:
            return False
        per_cell = (cell_masks(wrong.shape[0]) & wrong[None]).sum(axis=(1, 2))
        return int(per_cell.max()) <= self.max_wrong_per_cell


# ---------------------------------------------------------------------------------------------
# Geometry and rendering


def _check_size(size: int) -> None:
    # Below 3 pixels per cell a disk and a square are no longer told apart.
    if not isinstance(size, int) or size < 9:
        raise ValueError(f"size must be an int of at least 9 pixels, got {size!r}")


@cache
def _masks(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    _check_size(size)
    cell = size // 3
    offset = (size - 3 * cell) // 2
    yy, xx = np.mgrid[0:size, 0:size]
    cells, squares, circles = [], [], []
    for index in range(9):
        row, col = divmod(index, 3)
        y0, x0 = offset + row * cell, offset + col * cell
        square = (yy >= y0) & (yy < y0 + cell) & (xx >= x0) & (xx < x0 + cell)
        cy, cx = y0 + (cell - 1) / 2, x0 + (cell - 1) / 2
        # 0.72 of the inscribed radius squared gives the 13-pixel disk of a 5-pixel cell (vs 25).
        circle = (yy - cy) ** 2 + (xx - cx) ** 2 <= (cell / 2) ** 2 * 0.72
        cells.append(square)
        squares.append(square)
        circles.append(circle)
    out = tuple(np.stack(m) for m in (cells, squares, circles))
    for array in out:
        array.flags.writeable = False
    return out


def cell_masks(size: int) -> np.ndarray:
    """Boolean (9, size, size) masks of the grid cells (read-only)."""
    return _masks(size)[0]


def shape_mask(kind: str, cell: int, size: int) -> np.ndarray:
    """Boolean (size, size) mask of a shape of `kind` in `cell` (read-only)."""
    _, squares, circles = _masks(size)
    return {"square": squares, "circle": circles}[kind][cell]


def scene_classes(scene: Scene, size: int = DEFAULT_SIZE) -> np.ndarray:
    """The (size, size) palette-class map of a scene (indices into `PALETTE_NAMES`)."""
    classes = np.full((size, size), _CLASS[scene.background], dtype=np.int64)
    for shape in scene.shapes:
        classes[shape_mask(shape.kind, shape.cell, size)] = _CLASS[shape.colour]
    return classes


def render_scene(scene: Scene, size: int = DEFAULT_SIZE) -> Image.Image:
    """Render a scene as an RGB image of `size` x `size` pixels."""
    pixels = np.round(PALETTE[scene_classes(scene, size)] * 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def image_to_array(image: Image.Image) -> np.ndarray:
    """An RGB image as a float32 (H, W, 3) array in [0, 1]."""
    if image.mode != "RGB":
        raise ValueError(f"image mode must be RGB, got {image.mode!r}")
    return np.asarray(image, dtype=np.float32) / 255.0


def palette_classes(pixels: np.ndarray) -> np.ndarray:
    """Nearest palette colour of each pixel: (..., 3) floats in [0, 1] → (...) class indices."""
    return ((pixels[..., None, :] - PALETTE) ** 2).sum(-1).argmin(-1)


def palette_distance(pixels: np.ndarray) -> np.ndarray:
    """Euclidean RGB distance of each pixel to its nearest palette colour, (..., 3) → (...)."""
    return np.sqrt(((pixels[..., None, :] - PALETTE) ** 2).sum(-1).min(-1))


def image_classes(image: Image.Image) -> np.ndarray:
    """The (H, W) palette-class map of an RGB image."""
    return palette_classes(image_to_array(image))


def recover_scene(image: Image.Image) -> Scene:
    """Read the scene back from an exact render (a task's source image); ValueError otherwise."""
    width, height = image.size
    if width != height:
        raise ValueError(f"a shapes scene is square, got a {width}x{height} image")
    _check_size(width)
    classes = image_classes(image)
    counts = Counter(classes.ravel().tolist())
    # The background covers most of the image: at most 2 of 9 cells hold a shape.
    background = PALETTE_NAMES[counts.most_common(1)[0][0]]
    if background not in BACKGROUND_COLOURS:
        raise ValueError(f"the most common colour, {background}, is not a background colour")
    shapes = []
    for cell, cell_mask in enumerate(cell_masks(width)):
        found = cell_mask & (classes != _CLASS[background])
        if not found.any():
            continue
        colours = {PALETTE_NAMES[c] for c in classes[found].tolist()}
        kind = next((k for k in KINDS if np.array_equal(found, shape_mask(k, cell, width))), None)
        if len(colours) != 1 or kind is None:
            raise ValueError(f"cell {cell} holds no clean square or disk: {sorted(colours)}")
        shapes.append(Shape(colours.pop(), kind, cell))
    scene = Scene(background, tuple(shapes))
    wrong = int((scene_classes(scene, width) != classes).sum())
    if wrong:
        raise ValueError(f"the image is not a rendered shapes scene: {wrong} pixels lie off it")
    return scene


# ---------------------------------------------------------------------------------------------
# Operations


def apply_operation(scene: Scene, operation: Operation) -> Scene:
    """The scene after one operation; ValueError if it does not apply (missing shape, no change)."""
    if operation.kind is OpKind.BACKGROUND:
        if operation.new_colour == scene.background:
            raise ValueError(f"the background is already {scene.background}")
        return Scene(str(operation.new_colour), scene.shapes)
    shape = scene.shape(str(operation.colour))
    if shape is None:
        raise ValueError(f"the scene has no {operation.colour} shape")
    others = tuple(s for s in scene.shapes if s is not shape)
    if operation.kind is OpKind.REMOVE:
        return Scene(scene.background, others)
    if scene.shape(str(operation.new_colour)) is not None:
        raise ValueError(f"the scene already has a {operation.new_colour} shape")
    recoloured = Shape(str(operation.new_colour), shape.kind, shape.cell)
    return Scene(scene.background, (*others, recoloured))


def apply_operations(scene: Scene, operations: tuple[Operation, ...]) -> Scene:
    """The scene after the operations, in order."""
    for operation in operations:
        scene = apply_operation(scene, operation)
    return scene


def check_operations(scene: Scene, operations: tuple[Operation, ...]) -> None:
    """ValueError unless the operations refer to the source scene's objects, each to a different
    one, and apply together; then their order does not matter (they commute)."""
    if not operations:
        raise ValueError("no operation")
    subjects = [op.colour or "background" for op in operations]
    if len(set(subjects)) != len(subjects):
        raise ValueError(f"two operations edit the same object: {subjects}")
    new_colours = [op.new_colour for op in operations if op.kind is OpKind.RECOLOUR]
    if len(set(new_colours)) != len(new_colours):
        raise ValueError(f"two shapes would get the same colour: {new_colours}")
    for operation in operations:
        apply_operation(scene, operation)  # each refers to the source scene
    apply_operations(scene, operations)  # and they apply together


def edit_type_of(operations: tuple[Operation, ...]) -> str:
    """ImgEdit edit type of an instruction made of these operations."""
    if len(operations) == 1:
        return EDIT_TYPES[operations[0].kind]
    return COMPOUND_EDIT_TYPE


# ---------------------------------------------------------------------------------------------
# Instructions: templates, phrasing, parsing

# Slots: {colour} the shape's colour, {noun} its kind or "shape", {new} a shape colour,
# {background} a background colour. In every template the shape's current colour comes before
# the new one, so the order of the two colour words carries the meaning.
TEMPLATES: dict[OpKind, tuple[str, ...]] = {
    OpKind.RECOLOUR: (
        "make the {colour} {noun} {new}",
        "turn the {colour} {noun} {new}",
        "change the {colour} {noun} to {new}",
        "paint the {colour} {noun} {new}",
        "recolour the {colour} {noun} {new}",
    ),
    OpKind.REMOVE: (
        "remove the {colour} {noun}",
        "delete the {colour} {noun}",
        "erase the {colour} {noun}",
        "take away the {colour} {noun}",
        "get rid of the {colour} {noun}",
    ),
    OpKind.BACKGROUND: (
        "change the background to {background}",
        "make the background {background}",
        "set the background to {background}",
        "turn the background {background}",
        "replace the background with {background}",
        "give it a {background} background",
    ),
}
JOINERS: tuple[str, ...] = (" and ", " and then ", ", then ", ", and ")
_SEPARATORS = frozenset({"and", "then", ",", ";"})
_NOUNS = (*KINDS, "shape")
_SLOT_WORDS: dict[str, tuple[str, ...]] = {
    "{colour}": tuple(SHAPE_COLOURS),
    "{noun}": _NOUNS,
    "{new}": tuple(SHAPE_COLOURS),
    "{background}": tuple(BACKGROUND_COLOURS),
}


def _template_words() -> set[str]:
    words: set[str] = set()
    for templates in TEMPLATES.values():
        for template in templates:
            for word in template.split():
                words.update(_SLOT_WORDS.get(word, (word,)))
    return words


# Every word an instruction of this world can contain, separators aside (editors' vocabulary).
VOCABULARY: tuple[str, ...] = tuple(sorted(_template_words()))
MAX_CLAUSE_WORDS: int = max(len(t.split()) for ts in TEMPLATES.values() for t in ts)


def phrase_operation(operation: Operation, scene: Scene, rng: random.Random | None = None) -> str:
    """One clause for `operation` on `scene`: a random template and noun with `rng`, else the
    plain form (first template, the shape's kind), as the rule reflector phrases it."""
    templates = TEMPLATES[operation.kind]
    template = templates[0] if rng is None else rng.choice(templates)
    noun = "shape"
    if operation.kind is not OpKind.BACKGROUND:
        shape = scene.shape(str(operation.colour))
        if shape is None:
            raise ValueError(f"the scene has no {operation.colour} shape")
        # The kind is named two times in three: "the red shape" is the vaguer, rarer wording.
        noun = shape.kind if rng is None or rng.random() < 2 / 3 else "shape"
    return template.format(
        colour=operation.colour,
        noun=noun,
        new=operation.new_colour,
        background=operation.new_colour,
    )


def phrase_operations(
    operations: tuple[Operation, ...], scene: Scene, rng: random.Random | None = None
) -> str:
    """An instruction for the operations on `scene` (plain "A and B" without `rng`)."""
    clauses = [phrase_operation(op, scene, rng) for op in operations]
    instruction = clauses[0]
    for clause in clauses[1:]:
        instruction += (JOINERS[0] if rng is None else rng.choice(JOINERS)) + clause
    return instruction


def instruction_clauses(instruction: str) -> list[list[str]]:
    """Split an instruction into clauses of lower-case words ("and", "then", commas separate);
    other punctuation is ignored, e.g. "Make the red square blue, then remove the green circle."
    → [["make", "the", "red", "square", "blue"], ["remove", "the", "green", "circle"]]."""
    clauses: list[list[str]] = [[]]
    for token in re.findall(r"[a-z]+|[,;]", instruction.lower()):
        if token in _SEPARATORS:
            if clauses[-1]:
                clauses.append([])
        else:
            clauses[-1].append(token)
    return [clause for clause in clauses if clause]


def _match_clause(words: list[str]) -> tuple[Operation, str | None] | None:
    for kind, templates in TEMPLATES.items():
        for template in templates:
            pattern = template.split()
            if len(pattern) != len(words):
                continue
            slots: dict[str, str] = {}
            for slot, word in zip(pattern, words, strict=True):
                if slot in _SLOT_WORDS:
                    if word not in _SLOT_WORDS[slot]:
                        break
                    slots[slot] = word
                elif slot != word:
                    break
            else:
                if kind is OpKind.BACKGROUND:
                    return Operation(kind, new_colour=slots["{background}"]), None
                noun = slots["{noun}"]
                operation = Operation(kind, slots["{colour}"], slots.get("{new}"))
                return operation, (None if noun == "shape" else noun)
    return None


def parse_instruction(instruction: str, scene: Scene | None = None) -> tuple[Operation, ...]:
    """The operations of an instruction of this world; ValueError if it is not one. With `scene`,
    also check that they fit it (shapes by colour and named kind, `check_operations`)."""
    clauses = instruction_clauses(instruction)
    if not clauses:
        raise ValueError(f"instruction {instruction!r} has no words")
    operations = []
    for words in clauses:
        match = _match_clause(words)
        if match is None:
            raise ValueError(f"{' '.join(words)!r} is not an operation of the shapes world")
        operation, noun = match
        if scene is not None and noun is not None:
            shape = scene.shape(str(operation.colour))
            if shape is not None and shape.kind != noun:
                raise ValueError(f"the {operation.colour} shape is a {shape.kind}, not a {noun}")
        operations.append(operation)
    if scene is not None:
        check_operations(scene, tuple(operations))
    return tuple(operations)


def describe_scene(scene: Scene) -> str:
    """A sentence describing the scene, e.g. "a black background with a red square in the
    top-left corner and a green circle in the centre"."""
    if not scene.shapes:
        return f"a plain {scene.background} background with no shapes"
    parts = [f"a {s.colour} {s.kind} {CELL_PHRASES[s.cell]}" for s in scene.shapes]
    return f"a {scene.background} background with " + " and ".join(parts)


# ---------------------------------------------------------------------------------------------
# Task generation (seeded, reproducible)


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


def random_single_op_task(rng: random.Random, size: int = DEFAULT_SIZE) -> ShapesTask:
    """A task of one operation (recolour, remove or background, equally likely)."""
    while True:
        scene = random_scene(rng)
        operation = random_operation(rng, scene, rng.choice(list(OpKind)))
        if operation is not None:
            return ShapesTask(scene, (operation,), phrase_operation(operation, scene, rng), size)


def random_compound_task(rng: random.Random, size: int = DEFAULT_SIZE) -> ShapesTask:
    """A task of two operations on different objects in one instruction."""
    while True:
        # As in EXPERIMENTS.md, experiment 2: two different kinds three times in four, else two
        # recolours or two removals (which need two shapes).
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
        return ShapesTask(scene, operations, phrase_operations(operations, scene, rng), size)


def generate_single_op_tasks(n: int, *, seed: int, size: int = DEFAULT_SIZE) -> list[ShapesTask]:
    """`n` single-operation tasks, the same for the same seed."""
    rng = random.Random(seed)
    return [random_single_op_task(rng, size) for _ in range(n)]


def generate_compound_tasks(n: int, *, seed: int, size: int = DEFAULT_SIZE) -> list[ShapesTask]:
    """`n` compound (two-operation) tasks, the same for the same seed."""
    rng = random.Random(seed)
    return [random_compound_task(rng, size) for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# Judging by pixels


@dataclass(frozen=True)
class EditMeasurement:
    """What an edited image achieved, against the source scene and its operations.

    Each operation's region is where applying it alone changes the palette class; there a pixel
    is right if it shows the operation's own result or the full target's (a removed shape under a
    new background is right in either background colour). Outside every region the source must
    stay as it was.
    """

    operations_done: tuple[bool, ...]  # region within the criterion
    operations_right: tuple[float, ...]  # share of each region that is right, 0-1
    wrong_outside: int  # pixels outside every region whose class changed
    wrong_total: int  # pixels whose class differs from the full target
    preserved: bool  # `wrong_outside` within the criterion
    success: bool  # the whole image within the criterion of the full target
    palette_distance: float  # mean RGB distance to the nearest palette colour, 0-1.73


def measure_edit(
    scene: Scene,
    operations: tuple[Operation, ...],
    edited: Image.Image,
    size: int,
    criterion: SuccessCriterion = SuccessCriterion(),
) -> EditMeasurement:
    """Measure `edited` against `scene` edited by `operations` (checked with `check_operations`)."""
    check_operations(scene, operations)
    if edited.size != (size, size):
        width, height = edited.size
        raise ValueError(f"edited image is {width}x{height}, expected {size}x{size}")
    pixels = image_to_array(edited)
    out = palette_classes(pixels)
    source = scene_classes(scene, size)
    target = scene_classes(apply_operations(scene, operations), size)
    done, right = [], []
    touched = np.zeros_like(out, dtype=bool)
    for operation in operations:
        own = scene_classes(apply_operation(scene, operation), size)
        region = own != source
        wrong = region & (out != own) & (out != target)
        done.append(criterion.allows(wrong))
        right.append(1.0 - float(wrong.sum()) / float(region.sum()))
        touched |= region
    wrong_outside = ~touched & (out != source)
    wrong_total = out != target
    return EditMeasurement(
        operations_done=tuple(done),
        operations_right=tuple(right),
        wrong_outside=int(wrong_outside.sum()),
        wrong_total=int(wrong_total.sum()),
        preserved=criterion.allows(wrong_outside),
        success=criterion.allows(wrong_total),
        palette_distance=float(palette_distance(pixels).mean()),
    )


def is_success(
    edited: Image.Image, target: Image.Image, criterion: SuccessCriterion = SuccessCriterion()
) -> bool:
    """Whether `edited` matches the target image within the criterion (same size required)."""
    if edited.size != target.size:
        raise ValueError(f"edited image is {edited.size}, target is {target.size}")
    return criterion.allows(image_classes(edited) != image_classes(target))


# ---------------------------------------------------------------------------------------------
# Storable form


def task_to_meta(task: ShapesTask) -> dict[str, Any]:
    """A JSON-able record of a task for the task row's `meta`."""
    return {
        "world": "shapes",
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


def task_from_meta(meta: dict[str, Any]) -> ShapesTask:
    """The task of a `task_to_meta` record; ValueError if it is not a valid shapes task."""
    if meta.get("world") != "shapes":
        raise ValueError(f"meta is not of the shapes world: world={meta.get('world')!r}")
    try:
        scene = Scene(
            meta["scene"]["background"],
            tuple(Shape(s["colour"], s["kind"], s["cell"]) for s in meta["scene"]["shapes"]),
        )
        operations = tuple(
            Operation(OpKind(op["kind"]), op["colour"], op["new_colour"])
            for op in meta["operations"]
        )
        task = ShapesTask(scene, operations, meta["instruction"], meta["size"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed shapes task meta: {exc!r}") from None
    _check_size(task.size)
    if parse_instruction(task.instruction, scene) != operations:
        raise ValueError(f"instruction {task.instruction!r} does not say {operations}")
    return task
