"""The shapes world: geometry, task generation, instructions, scene recovery, pixel measurement."""

import json
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from store.taxonomy import EditType
from worlds.shapes.language import (
    JOINERS,
    MAX_CLAUSE_WORDS,
    TEMPLATES,
    VOCABULARY,
    describe_scene,
    instruction_clauses,
    parse_instruction,
    phrase_operation,
)
from worlds.shapes.measure import SuccessCriterion, is_success, measure_edit
from worlds.shapes.operations import apply_operations, check_operations
from worlds.shapes.partition import SHARES, Part, part_of, task_key
from worlds.shapes.pixels import image_to_array, recover_scene, render_scene, scene_classes
from worlds.shapes.tasks import (
    ShapesTask,
    generate_compound_tasks,
    generate_single_op_tasks,
    random_single_op_task,
    task_to_meta,
)
from worlds.shapes.types import Operation, OpKind, Scene, Shape

# Black background, a red square in the top-left cell (pixels 0-4 x 0-4), a green disk in the
# centre cell (pixels 5-9 x 5-9, 13 pixels around (7, 7)).
SCENE = Scene("black", (Shape("red", "square", 0), Shape("green", "circle", 4)))
RECOLOUR = Operation(OpKind.RECOLOUR, "red", "blue")
REMOVE = Operation(OpKind.REMOVE, "green")
TO_WHITE = Operation(OpKind.BACKGROUND, new_colour="white")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).copy()


def with_pixels(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array.astype(np.uint8), mode="RGB")


def test_render_draws_a_25_pixel_square_and_a_13_pixel_disk_in_their_cells() -> None:
    array = pixels(render_scene(SCENE))
    assert array.shape == (16, 16, 3)
    red = (array == (255, 0, 0)).all(-1)
    green = (array == (0, 255, 0)).all(-1)
    assert red.sum() == 25 and red[:5, :5].all()
    assert green.sum() == 13 and green[5:10, 5:10].sum() == 13 and green[7, 7]
    assert (array[~red & ~green] == 0).all()  # the rest is the black background


def test_generators_are_reproducible_per_seed_and_differ_across_seeds() -> None:
    assert generate_compound_tasks(30, seed=3) == generate_compound_tasks(30, seed=3)
    assert generate_single_op_tasks(30, seed=3) == generate_single_op_tasks(30, seed=3)
    assert generate_compound_tasks(30, seed=3) != generate_compound_tasks(30, seed=4)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32))
def test_every_generated_task_is_consistent(seed: int) -> None:
    for task in generate_single_op_tasks(5, seed=seed) + generate_compound_tasks(5, seed=seed):
        assert parse_instruction(task.instruction, task.scene) == task.operations
        assert recover_scene(task.source_image()) == task.scene
        assert task.target_image().tobytes() != task.source_image().tobytes()
        assert EditType(task.edit_type) is (
            EditType.HYBRID
            if len(task.operations) == 2
            else {
                OpKind.RECOLOUR: EditType.ALTER,
                OpKind.REMOVE: EditType.REMOVE,
                OpKind.BACKGROUND: EditType.BACKGROUND,
            }[task.operations[0].kind]
        )
        subjects = [op.colour or "background" for op in task.operations]
        assert len(set(subjects)) == len(subjects)  # different objects
        # The operations commute: either order gives the same target.
        assert apply_operations(task.scene, task.operations[::-1]) == task.target_scene


def test_instructions_use_every_template_and_the_vocabulary_covers_them() -> None:
    tasks = generate_single_op_tasks(600, seed=0) + generate_compound_tasks(300, seed=0)
    starts = {" ".join(words[:2]) for t in tasks for words in instruction_clauses(t.instruction)}
    for templates in TEMPLATES.values():
        for template in templates:
            assert " ".join(template.split()[:2]) in starts, template
    joined = [t.instruction for t in tasks if len(t.operations) == 2]
    for joiner in JOINERS:
        assert any(joiner in text for text in joined), joiner
    assert any(" shape" in t.instruction for t in tasks)  # the vaguer noun appears too
    words = {w for t in tasks for clause in instruction_clauses(t.instruction) for w in clause}
    assert words == set(VOCABULARY)
    assert max(len(c) for t in tasks for c in instruction_clauses(t.instruction)) == 6
    assert MAX_CLAUSE_WORDS == 6
    # Single-operation kinds are about equally frequent (a third each).
    kinds = [t.operations[0].kind for t in tasks[:600]]
    assert all(150 < kinds.count(kind) < 250 for kind in OpKind)


@pytest.mark.parametrize(
    ("instruction", "expected"),
    [
        ("make the red square blue", (RECOLOUR,)),
        ("Turn the red shape blue.", (RECOLOUR,)),
        ("change the red square to blue", (RECOLOUR,)),
        ("get rid of the green circle", (REMOVE,)),
        ("delete the green shape", (REMOVE,)),
        ("change the background to white", (TO_WHITE,)),
        ("give it a white background", (TO_WHITE,)),
        ("make the red square blue and remove the green circle", (RECOLOUR, REMOVE)),
        ("Remove the green circle, then make the red square blue", (REMOVE, RECOLOUR)),
        ("erase the green circle and then set the background to white", (REMOVE, TO_WHITE)),
    ],
)
def test_parse_reads_natural_instructions(instruction: str, expected: tuple) -> None:
    assert parse_instruction(instruction) == expected
    assert parse_instruction(instruction, SCENE) == expected


@pytest.mark.parametrize(
    ("instruction", "reason"),
    [
        ("make it pretty", "not an operation"),
        ("remove the purple circle", "not an operation"),
        ("remove the red circle", "is a square"),  # the red shape is a square
        ("remove the yellow square", "no yellow shape"),
        ("make the red square green", "already has a green shape"),
        ("change the background to black", "already black"),
        ("make the red square blue and remove the red square", "same object"),
        ("make the red square blue and remove the blue square", "same object|no blue shape"),
        ("", "no words"),
    ],
)
def test_parse_rejects_what_the_scene_cannot_do(instruction: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_instruction(instruction, SCENE)


def test_plain_phrasing_names_the_shape_by_colour_and_kind() -> None:
    assert phrase_operation(REMOVE, SCENE) == "remove the green circle"
    assert phrase_operation(RECOLOUR, SCENE) == "make the red square blue"
    assert phrase_operation(TO_WHITE, SCENE) == "change the background to white"


def test_describe_scene() -> None:
    assert describe_scene(SCENE) == (
        "a black background with a red square in the top-left corner "
        "and a green circle in the centre"
    )
    assert describe_scene(Scene("gray")) == "a plain gray background with no shapes"


def test_meta_records_the_task_in_plain_json() -> None:
    for task in generate_compound_tasks(10, seed=1) + generate_single_op_tasks(10, seed=1):
        meta = json.loads(json.dumps(task_to_meta(task)))
        scene = Scene(
            meta["scene"]["background"],
            tuple(Shape(s["colour"], s["kind"], s["cell"]) for s in meta["scene"]["shapes"]),
        )
        operations = tuple(
            Operation(OpKind(op["kind"]), op["colour"], op["new_colour"])
            for op in meta["operations"]
        )
        assert (scene, operations, meta["size"]) == (task.scene, task.operations, task.size)
        assert parse_instruction(meta["instruction"], scene) == operations
        assert meta["target_description"] == describe_scene(task.target_scene)


def test_scene_records_are_validated() -> None:
    with pytest.raises(ValueError, match="distinct"):
        Scene("black", (Shape("red", "square", 0), Shape("red", "circle", 1)))
    with pytest.raises(ValueError, match="cells"):
        Scene("black", (Shape("red", "square", 0), Shape("blue", "circle", 0)))
    with pytest.raises(ValueError, match="background"):
        Scene("red")
    with pytest.raises(ValueError, match="invalid recolour"):
        Operation(OpKind.RECOLOUR, "red", "red")
    with pytest.raises(ValueError, match="no operation"):
        check_operations(SCENE, ())


def test_recover_scene_reads_renders_back_and_rejects_other_images() -> None:
    assert recover_scene(render_scene(SCENE)) == SCENE
    assert recover_scene(render_scene(SCENE, 32)) == SCENE
    noisy = pixels(render_scene(SCENE))
    noisy[12, 12] = (255, 255, 0)  # one yellow pixel in an empty cell
    with pytest.raises(ValueError, match="cell 8"):
        recover_scene(with_pixels(noisy))
    outside = pixels(render_scene(SCENE))
    outside[15, 15] = (0, 0, 255)  # the last row and column belong to no cell
    with pytest.raises(ValueError, match="1 pixels lie off it"):
        recover_scene(with_pixels(outside))
    with pytest.raises(ValueError, match="square"):
        recover_scene(Image.new("RGB", (16, 12)))
    with pytest.raises(ValueError, match="background colour"):
        recover_scene(Image.new("RGB", (16, 16), (255, 0, 0)))


def test_success_criterion_counts_all_pixels_and_each_cell() -> None:
    criterion = SuccessCriterion()
    wrong = np.zeros((16, 16), dtype=bool)
    wrong[0, 0:4] = wrong[0, 5:9] = wrong[0, 10:12] = True  # 10 wrong, at most 4 per cell
    assert criterion.allows(wrong)
    wrong[15, 15] = True  # an 11th, outside every cell
    assert not criterion.allows(wrong)
    one_cell = np.zeros((16, 16), dtype=bool)
    one_cell[6, 5:10] = True  # 5 in the centre cell
    assert not criterion.allows(one_cell)


def test_measure_edit_tells_which_operations_are_done() -> None:
    operations = (RECOLOUR, REMOVE)
    target = render_scene(apply_operations(SCENE, operations))
    exact = measure_edit(SCENE, operations, target, 16)
    assert exact.success and exact.preserved and exact.operations_done == (True, True)
    assert exact.wrong_total == 0 and exact.palette_distance < 0.01

    untouched = measure_edit(SCENE, operations, render_scene(SCENE), 16)
    assert untouched.operations_done == (False, False) and untouched.operations_right == (0, 0)
    assert untouched.preserved and not untouched.success and untouched.wrong_total == 25 + 13

    half = measure_edit(SCENE, operations, render_scene(apply_operations(SCENE, (RECOLOUR,))), 16)
    assert half.operations_done == (True, False) and half.preserved and not half.success


def test_a_removed_shape_is_right_under_either_background() -> None:
    # Remove the green disk and turn the background white: the disk's pixels are right in the
    # old background colour (the removal alone) as in the new one (the full target).
    operations = (REMOVE, TO_WHITE)
    only_removed = render_scene(apply_operations(SCENE, (REMOVE,)))
    measured = measure_edit(SCENE, operations, only_removed, 16)
    assert measured.operations_done == (True, False) and measured.preserved
    only_background = render_scene(apply_operations(SCENE, (TO_WHITE,)))
    measured = measure_edit(SCENE, operations, only_background, 16)
    assert measured.operations_done == (False, True) and measured.preserved


def test_noise_below_half_the_palette_spacing_still_succeeds() -> None:
    # docs/design.md: the target plus Gaussian noise of sigma 0.3 (in [-1, 1]) still passes.
    rng = np.random.default_rng(0)
    for task in generate_compound_tasks(20, seed=2):
        array = image_to_array(task.target_image()) + rng.normal(0, 0.15, (16, 16, 3))
        noisy = with_pixels(np.clip(array, 0, 1) * 255 + 0.5)
        assert is_success(noisy, task.target_image())
        assert not is_success(task.source_image(), task.target_image())


def test_scene_classes_match_the_render() -> None:
    classes = scene_classes(SCENE)
    assert classes.shape == (16, 16)
    assert (classes == scene_classes(recover_scene(render_scene(SCENE)))).all()


# ---- the partition of the task space ---------------------------------------------------------


def test_a_task_key_is_what_it_asks_not_how_it_says_it() -> None:
    one = task_key(SCENE, (RECOLOUR, REMOVE))
    assert one == task_key(SCENE, (REMOVE, RECOLOUR))  # the operations commute
    assert one != task_key(SCENE, (RECOLOUR,)) and one != task_key(
        Scene("white", SCENE.shapes), (RECOLOUR, REMOVE)
    )
    # Two wordings of one edit: one key, one part.
    plain = ShapesTask(
        SCENE, (RECOLOUR, REMOVE), "make the red square blue and remove the green circle"
    )
    other = ShapesTask(
        SCENE, (REMOVE, RECOLOUR), "erase the green shape, then paint the red square blue"
    )
    assert plain.key == other.key and plain.part == other.part
    # The partition is fixed (not seeded): this task is in the same part on every machine.
    assert part_of(SCENE, (RECOLOUR, REMOVE)) is plain.part
    assert {part for part, _ in SHARES} == set(Part) and sum(s for _, s in SHARES) == pytest.approx(
        1
    )


def test_parts_hold_their_share_of_the_task_space() -> None:
    tasks = generate_compound_tasks(4000, seed=5) + generate_single_op_tasks(4000, seed=5)
    shares = dict(SHARES)
    for part in Part:
        observed = sum(task.part is part for task in tasks) / len(tasks)
        assert abs(observed - shares[part]) < 0.03, (part, observed)


@pytest.mark.parametrize("seed", [0, 1, 7, 123, 99991])
def test_tasks_drawn_from_different_parts_are_disjoint_for_any_seed(seed: int) -> None:
    drawn = {
        part: generate_compound_tasks(150, seed=seed, part=part, distinct=True)
        + generate_single_op_tasks(150, seed=seed + 1, part=part, distinct=True)
        for part in Part
    }
    keys = {part: {task.key for task in tasks} for part, tasks in drawn.items()}
    for part, tasks in drawn.items():
        assert all(task.part is part for task in tasks)
        assert len(keys[part]) == len(tasks) == 300  # distinct: no edit twice
    for a in Part:
        for b in Part:
            assert a == b or not keys[a] & keys[b], (a, b)
    # The same part and seed draw the same tasks; the pre-training stream stays in its part.
    again = generate_compound_tasks(20, seed=seed, part=Part.EVAL, distinct=True)
    assert again == drawn[Part.EVAL][:20]
    stream = random.Random(seed)
    assert all(
        random_single_op_task(stream, part=Part.PRETRAIN).part is Part.PRETRAIN for _ in range(200)
    )
