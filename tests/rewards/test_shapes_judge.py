"""Exact judges of the shapes world: worked cases on one scene, then generated tasks.

The scene: black background, a red square in the top-left cell (25 pixels) and a green disk in
the centre cell (13 pixels); the task "make the red square blue and remove the green circle"
(hybrid). Expected scores follow the mappings of `rewards.shapes_judge` (worked out per case).
"""

import re

import numpy as np
import pytest
from PIL import Image

from rewards.shapes_judge import DIMENSION_NAMES, JudgeNoise, ShapesReflector, ShapesScorer
from rewards.types import JudgeItem, ParseStatus, ReflectionTag, Scores
from rewards.verdict import decide_verdict, image_change
from store.taxonomy import EditType, Verdict
from worlds.shapes.language import parse_instruction
from worlds.shapes.operations import apply_operations
from worlds.shapes.pixels import recover_scene, render_scene
from worlds.shapes.tasks import generate_compound_tasks
from worlds.shapes.types import Operation, OpKind, Scene, Shape

SCENE = Scene("black", (Shape("red", "square", 0), Shape("green", "circle", 4)))
RECOLOUR = Operation(OpKind.RECOLOUR, "red", "blue")
REMOVE = Operation(OpKind.REMOVE, "green")
TO_WHITE = Operation(OpKind.BACKGROUND, new_colour="white")
COMPOUND = "make the red square blue and remove the green circle"
SOURCE = render_scene(SCENE)
TARGET = render_scene(apply_operations(SCENE, (RECOLOUR, REMOVE)))
ONLY_RECOLOURED = render_scene(apply_operations(SCENE, (RECOLOUR,)))
ONLY_REMOVED = render_scene(apply_operations(SCENE, (REMOVE,)))


def item(
    edited: Image.Image,
    instruction: str = COMPOUND,
    source: Image.Image = SOURCE,
    edit_type: EditType = EditType.HYBRID,
) -> JudgeItem:
    return JudgeItem(source=source, edited=edited, instruction=instruction, edit_type=edit_type)


def paint(image: Image.Image, rows: slice, cols: slice, rgb: tuple[int, int, int]) -> Image.Image:
    array = np.asarray(image).copy()
    array[rows, cols] = rgb
    return Image.fromarray(array, mode="RGB")


def values(scores: Scores) -> tuple[float | None, float | None, float | None]:
    return scores.following, scores.quality, scores.preservation


def score(edited: Image.Image, **kwargs) -> Scores:
    return ShapesScorer().score([item(edited, **kwargs)])[0]


def reflect(edited: Image.Image, **kwargs):
    return ShapesReflector().reflect([item(edited, **kwargs)])[0]


def test_the_exact_target_scores_5_5_5_and_is_a_success() -> None:
    scores = score(TARGET)
    assert values(scores) == (5, 5, 5) and scores.overall == 5
    assert scores.status is ParseStatus.OK and scores.model == "shapes-exact"
    assert scores.dimension_names == DIMENSION_NAMES[EditType.HYBRID]
    reflection = reflect(TARGET)
    assert reflection.tag is ReflectionTag.SUCCESS and reflection.new_instruction is None
    assert (
        reflection.target_description
        == "a black background with a blue square in the top-left corner"
    )
    assert re.fullmatch(r"<#Think> .+ <#Success>", reflection.raw_output)


def test_the_untouched_source_fails_instruction_following() -> None:
    # No operation done: following 1; quality and preservation (5) are capped to 1 (ImgEdit rule).
    scores = score(SOURCE)
    assert values(scores) == (1, 1, 1)
    assert scores.status is ParseStatus.CAPPED and "capped from 5 to 1" in scores.detail
    reflection = reflect(SOURCE)
    assert reflection.tag is ReflectionTag.FAILED and "Nothing was achieved" in reflection.think


def test_the_untouched_source_fails_single_operations_too() -> None:
    for instruction, edit_type in [
        ("turn the red shape blue", EditType.ALTER),
        ("delete the green shape", EditType.REMOVE),
        ("give it a white background", EditType.BACKGROUND),
    ]:
        scores = score(SOURCE, instruction=instruction, edit_type=edit_type)
        assert scores.following == 1 and scores.dimension_names == DIMENSION_NAMES[edit_type]
        reflection = reflect(SOURCE, instruction=instruction, edit_type=edit_type)
        assert reflection.tag is ReflectionTag.FAILED


@pytest.mark.parametrize(
    ("edited", "missing"),
    [(ONLY_RECOLOURED, "remove the green circle"), (ONLY_REMOVED, "make the red square blue")],
)
def test_half_a_compound_edit_reflects_with_the_missing_operation(
    edited: Image.Image, missing: str
) -> None:
    # One of two operations: following 1 + 4 x 1/2 = 3; preservation 5 capped to 3.
    scores = score(edited)
    assert values(scores) == (3, 3, 3) and scores.status is ParseStatus.CAPPED
    reflection = reflect(edited)
    assert reflection.tag is ReflectionTag.REFLECTION
    assert reflection.new_instruction == missing
    assert reflection.raw_output.endswith(f"<#Reflection> {missing}")
    assert "is done" in reflection.think and "is not done" in reflection.think
    # The new instruction applies to the edited image alone (its scene), and completes the task.
    remaining = parse_instruction(missing, recover_scene(edited))
    assert render_scene(apply_operations(recover_scene(edited), remaining)).tobytes() == (
        TARGET.tobytes()
    )


def test_a_reflection_step_is_judged_against_the_original_source_and_instruction() -> None:
    # Depth 1: the loop judges (original source, new output, original compound instruction).
    assert reflect(TARGET).tag is ReflectionTag.SUCCESS  # the reflection step finished the job
    again = reflect(ONLY_RECOLOURED)  # the reflection step changed nothing: same advice again
    assert again.tag is ReflectionTag.REFLECTION
    assert again.new_instruction == "remove the green circle"
    # The reflection step removed the disk but undid the recolour: what is missing now is the
    # recolour, read against the original source, whatever the step was asked.
    undone = reflect(ONLY_REMOVED)
    assert undone.tag is ReflectionTag.REFLECTION
    assert undone.new_instruction == "make the red square blue"


def test_damage_elsewhere_lowers_preservation_and_fails() -> None:
    # The target plus a yellow 5x5 block in the empty bottom-right cell: 25 pixels changed
    # outside the edit (over the criterion, at most 50) → preservation 2.
    damaged = paint(TARGET, slice(10, 15), slice(10, 15), (255, 255, 0))
    scores = score(damaged)
    assert values(scores) == (5, 5, 2)
    reflection = reflect(damaged)
    assert reflection.tag is ReflectionTag.FAILED and reflection.new_instruction is None
    assert "25 pixels changed where nothing should change" in reflection.think
    # Half an edit plus damage is not repairable by the missing operation: Failed, not Reflection.
    half_damaged = paint(ONLY_RECOLOURED, slice(10, 15), slice(10, 15), (255, 255, 0))
    assert reflect(half_damaged).tag is ReflectionTag.FAILED
    assert values(score(half_damaged)) == (3, 3, 2)


def test_heavier_damage_scores_lower_preservation() -> None:
    # The last row and column (in no cell) turned gray: 16 + 15 = 31 pixels, at most 50 → 2;
    # with the yellow block as well, 56 → 1.
    gray = (128, 128, 128)
    damaged = paint(TARGET, slice(15, 16), slice(0, 16), gray)
    damaged = paint(damaged, slice(0, 16), slice(15, 16), gray)
    assert values(score(damaged)) == (5, 5, 2)
    more = paint(damaged, slice(10, 15), slice(10, 15), (255, 255, 0))
    assert values(score(more)) == (5, 5, 1)
    # All gray: no operation done, 256 - 38 = 218 background pixels changed → (1, 1, 1).
    everything = score(Image.new("RGB", (16, 16), gray))
    assert values(everything) == (1, 1, 1) and "Preservation" not in everything.detail


def test_errors_scattered_over_the_criterion_fail_although_each_part_passes() -> None:
    # 4 pixels of the square left red, 4 of the disk left green, 3 yellow in the empty
    # bottom-right cell: each region and the outside are within the criterion, the total (11)
    # is not, so following is not 5.
    sloppy = paint(TARGET, slice(0, 1), slice(0, 4), (255, 0, 0))
    sloppy = paint(sloppy, slice(7, 8), slice(5, 9), (0, 255, 0))
    sloppy = paint(sloppy, slice(12, 13), slice(10, 13), (255, 255, 0))
    assert values(score(sloppy)) == (3, 3, 3)
    reflection = reflect(sloppy)
    assert reflection.tag is ReflectionTag.FAILED and "11 pixels still differ" in reflection.think


def test_noise_keeps_success_but_lowers_quality() -> None:
    rng = np.random.default_rng(0)
    array = np.asarray(TARGET, dtype=np.float32) / 255 + rng.normal(0, 0.15, (16, 16, 3))
    noisy = Image.fromarray((np.clip(array, 0, 1) * 255 + 0.5).astype(np.uint8), mode="RGB")
    scores = score(noisy)
    assert scores.following == 5 and scores.preservation == 5 and scores.quality == 3
    assert reflect(noisy).tag is ReflectionTag.SUCCESS


def test_background_and_removal_half_done_either_way() -> None:
    instruction = "remove the green circle and change the background to white"
    only_background = render_scene(apply_operations(SCENE, (TO_WHITE,)))
    reflection = reflect(only_background, instruction=instruction)
    assert reflection.tag is ReflectionTag.REFLECTION
    assert reflection.new_instruction == "remove the green circle"
    reflection = reflect(ONLY_REMOVED, instruction=instruction)
    assert reflection.new_instruction == "change the background to white"
    full = render_scene(apply_operations(SCENE, (REMOVE, TO_WHITE)))
    assert values(score(full, instruction=instruction)) == (5, 5, 5)


def test_a_half_done_operation_earns_half_credit() -> None:
    # Remove the red square, leaving its top two rows (10 of 25 pixels): 60% right → credit 0.5.
    half_removed = paint(SOURCE, slice(2, 5), slice(0, 5), (0, 0, 0))
    scores = score(half_removed, instruction="remove the red square", edit_type=EditType.REMOVE)
    assert scores.following == 3
    # Compound, half the square recoloured (rows 0-2: 15 of 25 right, credit 0.5), the disk
    # untouched (0): 1 + 4 x 0.25 = 2.
    assert score(paint(SOURCE, slice(0, 3), slice(0, 5), (0, 0, 255))).following == 2
    # Recolour done (1) + disk rows 5-6 cleared (4 of 13 pixels, credit 0) → 3.
    assert score(paint(ONLY_RECOLOURED, slice(5, 7), slice(5, 10), (0, 0, 0))).following == 3
    # Rows 5-6 and three pixels of row 7 cleared: 7 of 13 gone (54% right), 6 left (> 4).
    mostly_removed = paint(
        paint(ONLY_RECOLOURED, slice(5, 7), slice(5, 10), (0, 0, 0)),
        slice(7, 8),
        slice(5, 8),
        (0, 0, 0),
    )
    assert score(mostly_removed).following == 3  # 1 + 4 x 0.75 = 4, but short of 5 is at most 3
    # The disk mostly removed with the recolour done: still reflects with the missing removal.
    assert reflect(mostly_removed).new_instruction == "remove the green circle"


def test_items_outside_the_world_fail_alone() -> None:
    items = [
        item(TARGET),
        item(TARGET, instruction="make it look like a painting"),
        item(TARGET, source=Image.new("RGB", (16, 16), (10, 200, 30))),
        item(TARGET.resize((32, 32))),  # the editor returned another size
        item(TARGET, edit_type=EditType.STYLE),
    ]
    scores = ShapesScorer().score(items)
    assert [s.status for s in scores] == [
        ParseStatus.OK,
        ParseStatus.UNPARSEABLE,
        ParseStatus.UNPARSEABLE,
        ParseStatus.OK,
        ParseStatus.UNPARSEABLE,
    ]
    assert values(scores[0]) == (5, 5, 5) and values(scores[3]) == (1, 1, 1)
    assert values(scores[1]) == (None, None, None) and scores[1].overall is None
    assert "not an operation" in scores[1].raw_output and scores[1].detail
    assert "background colour" in scores[2].raw_output
    assert "style" in scores[4].raw_output
    reflections = ShapesReflector().reflect(items)
    assert [r.tag for r in reflections] == [
        ReflectionTag.SUCCESS,
        ReflectionTag.INVALID,
        ReflectionTag.INVALID,
        ReflectionTag.FAILED,
        ReflectionTag.INVALID,
    ]
    assert reflections[1].new_instruction is None and "cannot judge" in reflections[1].detail


def test_raw_output_reads_like_imgedit_judge() -> None:
    scores = score(ONLY_RECOLOURED)
    lines = scores.raw_output.splitlines()
    assert lines[0].startswith("Brief reasoning: 1 of 2 operations done")
    parsed = dict(line.rsplit(": ", 1) for line in lines[1:])
    assert list(parsed) == list(DIMENSION_NAMES[EditType.HYBRID])
    assert [float(v) for v in parsed.values()] == list(values(scores))


def test_on_generated_tasks_one_step_done_reflects_into_the_target() -> None:
    # For every compound task and either half done alone, the reflector's new instruction,
    # applied to the half-done image, gives the full target, and the target is a Success.
    reflector, scorer = ShapesReflector(), ShapesScorer()
    for task in generate_compound_tasks(40, seed=11):
        source = task.source_image()
        for done in task.operations:
            half = render_scene(apply_operations(task.scene, (done,)))
            judge_item = JudgeItem(source, half, task.instruction, EditType(task.edit_type))
            reflection = reflector.reflect([judge_item])[0]
            assert reflection.tag is ReflectionTag.REFLECTION, (task, reflection)
            after = apply_operations(
                apply_operations(task.scene, (done,)),
                parse_instruction(reflection.new_instruction or "", recover_scene(half)),
            )
            assert after == task.target_scene
        full = JudgeItem(source, task.target_image(), task.instruction, EditType.HYBRID)
        assert reflector.reflect([full])[0].tag is ReflectionTag.SUCCESS
        assert values(scorer.score([full])[0]) == (5, 5, 5)


def test_the_project_verdict_rule_accepts_exactly_the_right_edits() -> None:
    # The default thresholds (overall >= 4, every dimension >= 3) on these scores, with this
    # reflector, give the exact judgment: right edits Success, half edits Reflection, the rest
    # Failed, whatever the reflector would have said on its own.
    sloppy = paint(TARGET, slice(0, 1), slice(0, 4), (255, 0, 0))
    sloppy = paint(sloppy, slice(7, 8), slice(5, 9), (0, 255, 0))
    sloppy = paint(sloppy, slice(12, 13), slice(10, 13), (255, 255, 0))
    # Recolour done, disk 54% removed: "following" credit 1 + 0.5, which a 4 would have accepted.
    mostly = paint(ONLY_RECOLOURED, slice(5, 7), slice(5, 10), (0, 0, 0))
    mostly = paint(mostly, slice(7, 8), slice(5, 8), (0, 0, 0))
    cases = {
        "target": (TARGET, Verdict.SUCCESS),
        "source": (SOURCE, Verdict.FAILED),
        "recoloured only": (ONLY_RECOLOURED, Verdict.REFLECTION),
        "removed only": (ONLY_REMOVED, Verdict.REFLECTION),
        "mostly done": (mostly, Verdict.REFLECTION),
        "damaged": (paint(TARGET, slice(10, 15), slice(10, 15), (255, 255, 0)), Verdict.FAILED),
        "sloppy": (sloppy, Verdict.FAILED),
    }
    for name, (edited, expected) in cases.items():
        decision = decide_verdict(
            score(edited), reflect(edited), tries_left=2, change=image_change(SOURCE, edited)
        )
        assert decision.verdict is expected, (name, decision)


# ---- the fallible judge --------------------------------------------------------------------


def labelled_items(count: int) -> list[tuple[JudgeItem, bool, bool]]:
    """(item, right, half done) for generated compound tasks: the target (right), the untouched
    source (wrong, not half done) and each half done alone."""
    items = []
    for task in generate_compound_tasks(count, seed=21):
        source, edit_type = task.source_image(), EditType(task.edit_type)
        items.append(
            (JudgeItem(source, task.target_image(), task.instruction, edit_type), True, False)
        )
        items.append((JudgeItem(source, source, task.instruction, edit_type), False, False))
        for done in task.operations:
            half = render_scene(apply_operations(task.scene, (done,)))
            items.append((JudgeItem(source, half, task.instruction, edit_type), False, True))
    return items


ITEMS = labelled_items(120)  # 480 items: 120 right, 120 untouched, 240 half done


def accepted(noise: JudgeNoise, items: list[JudgeItem]) -> list[bool]:
    """Whether the judges' answers make the verdict rule say Success on each item (no tries
    left; the no-op guard, which is not the judge's, left out)."""
    scores = ShapesScorer(noise=noise).score(items)
    reflections = ShapesReflector(noise=noise).reflect(items)
    return [
        decide_verdict(s, r, tries_left=0, change=1.0).verdict is Verdict.SUCCESS
        for s, r in zip(scores, reflections, strict=True)
    ]


def within(observed: float, rate: float, n: int) -> bool:
    """`observed` within four binomial standard errors of `rate`."""
    return abs(observed - rate) <= 4 * (rate * (1 - rate) / n) ** 0.5


def test_no_noise_is_the_exact_judge() -> None:
    items = [item for item, _, _ in ITEMS[:40]]
    noisy, exact = (
        ShapesScorer(noise=JudgeNoise(0.0, seed=3)).score(items),
        ShapesScorer().score(items),
    )
    assert [s.raw_output for s in noisy] == [s.raw_output for s in exact]
    exact = [right for _, right, _ in ITEMS]
    assert accepted(JudgeNoise(0.0), [item for item, _, _ in ITEMS]) == exact


@pytest.mark.parametrize("rate", [0.1, 0.25])
def test_flips_reverse_the_verdict_both_ways_at_the_rate(rate: float) -> None:
    items = [item for item, _, _ in ITEMS]
    got = accepted(JudgeNoise(rate, "flip", seed=0), items)
    right = [(ok, r) for ok, (_, r, _) in zip(got, ITEMS, strict=True) if r]
    wrong = [(ok, r) for ok, (_, r, _) in zip(got, ITEMS, strict=True) if not r]
    rejected_right = sum(not ok for ok, _ in right) / len(right)
    accepted_wrong = sum(ok for ok, _ in wrong) / len(wrong)
    assert within(rejected_right, rate, len(right)), rejected_right
    assert within(accepted_wrong, rate, len(wrong)), accepted_wrong
    assert rejected_right > 0 and accepted_wrong > 0  # both directions happen


def test_lenient_noise_only_lets_half_done_edits_through() -> None:
    rate = 0.25
    items = [item for item, _, _ in ITEMS]
    got = accepted(JudgeNoise(rate, "lenient", seed=0), items)
    half = [ok for ok, (_, _, h) in zip(got, ITEMS, strict=True) if h]
    others = [(ok, right) for ok, (_, right, h) in zip(got, ITEMS, strict=True) if not h]
    assert within(sum(half) / len(half), rate, len(half))
    assert all(ok == right for ok, right in others)  # right ones kept, untouched ones refused


def test_noise_is_seeded_and_the_scorer_and_reflector_agree() -> None:
    items = [item for item, _, _ in ITEMS[:160]]
    first = accepted(JudgeNoise(0.25, seed=1), items)
    assert accepted(JudgeNoise(0.25, seed=1), items) == first
    assert accepted(JudgeNoise(0.25, seed=2), items) != first
    noise = JudgeNoise(0.25, seed=1)
    tags = [r.tag for r in ShapesReflector(noise=noise).reflect(items)]
    assert [tag is ReflectionTag.SUCCESS for tag in tags] == first  # as the scores decide
    flipped = [s for s in ShapesScorer(noise=noise).score(items) if "judge noise" in s.detail]
    assert flipped and all(s.status is ParseStatus.OK for s in flipped)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"rate": 1.5}, "probability"), ({"rate": -0.1}, "probability"), ({"mode": "odd"}, "one of")],
)
def test_noise_settings_are_checked(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        JudgeNoise(**kwargs)
