"""The verdict rule and the no-op guard, with every expected outcome worked out here."""

import io

import numpy as np
import pytest
from PIL import Image

from rewards.types import ParseStatus, Reflection, ReflectionTag, Scores
from rewards.verdict import (
    VerdictReason,
    VerdictThresholds,
    decide_verdict,
    image_change,
)
from store.taxonomy import Verdict

NAMES = ("Prompt Compliance", "Visual Naturalness", "Physical & Detail Integrity")
CHANGED = 0.5  # an image_change well above the no-op threshold (0.02)


def scores(following: float, quality: float, preservation: float) -> Scores:
    overall = (following + quality + preservation) / 3
    return Scores(following, quality, preservation, overall, NAMES, ParseStatus.OK, "", 0.1, "j")


UNPARSEABLE = Scores(
    None, None, None, None, NAMES, ParseStatus.UNPARSEABLE, "gibberish", 0.1, "j", "empty output"
)


def reflection(tag: ReflectionTag, new_instruction: str | None = None) -> Reflection:
    return Reflection(tag, new_instruction, "think", "target", "raw", 1, "r")


SUCCESS = reflection(ReflectionTag.SUCCESS)
FAILED = reflection(ReflectionTag.FAILED)
INVALID = reflection(ReflectionTag.INVALID)
REFLECT = reflection(ReflectionTag.REFLECTION, "make the kite red")


def test_success_needs_overall_4_and_no_dimension_below_3() -> None:
    # (5, 4, 4): overall 13/3 = 4.33 >= 4, lowest 4 >= 3 -> Success.
    decision = decide_verdict(scores(5, 4, 4), SUCCESS, tries_left=2, change=CHANGED)
    assert (decision.verdict, decision.reason) == (Verdict.SUCCESS, VerdictReason.ACCEPTED)
    assert decision.detail == "overall 4.33" and decision.new_instruction is None
    # (5, 4, 3): overall exactly 4.00, lowest exactly 3 -> both bounds inclusive -> Success.
    assert decide_verdict(scores(5, 4, 3), SUCCESS, tries_left=0, change=CHANGED).verdict == (
        Verdict.SUCCESS
    )


def test_overall_high_but_one_dimension_below_3_fails() -> None:
    # (5, 5, 2): overall 12/3 = 4.00 passes, but Physical & Detail Integrity 2 < 3.
    decision = decide_verdict(scores(5, 5, 2), SUCCESS, tries_left=2, change=CHANGED)
    assert (decision.verdict, decision.reason) == (Verdict.FAILED, VerdictReason.LOW_SCORE)
    assert decision.detail == "Physical & Detail Integrity 2 < 3"


def test_low_overall_fails_with_the_numbers() -> None:
    # (4, 4, 3): overall 11/3 = 3.67 < 4; no dimension below 3.
    decision = decide_verdict(scores(4, 4, 3), SUCCESS, tries_left=2, change=CHANGED)
    assert (decision.verdict, decision.reason) == (Verdict.FAILED, VerdictReason.LOW_SCORE)
    assert decision.detail == "overall 3.67 < 4"


def test_success_without_a_reflector_and_despite_a_reflection_or_invalid_answer() -> None:
    # The judge is the scorer: good scores are accepted unless the reflector says Failed.
    for answer in (None, REFLECT, INVALID):
        decision = decide_verdict(scores(5, 5, 4), answer, tries_left=2, change=CHANGED)
        assert decision.verdict == Verdict.SUCCESS, answer


def test_reflector_failed_vetoes_good_scores() -> None:
    decision = decide_verdict(scores(5, 5, 5), FAILED, tries_left=2, change=CHANGED)
    assert (decision.verdict, decision.reason) == (Verdict.FAILED, VerdictReason.REFLECTOR_FAILED)


def test_reflection_needs_a_new_instruction_and_tries_left() -> None:
    # (4, 4, 3) is not good enough (3.67); the reflector proposes a fix; 1 try left -> Reflection.
    decision = decide_verdict(scores(4, 4, 3), REFLECT, tries_left=1, change=CHANGED)
    assert (decision.verdict, decision.reason) == (Verdict.REFLECTION, VerdictReason.REFLECT)
    assert decision.new_instruction == "make the kite red"
    assert decision.detail == "overall 3.67 < 4"
    # No try left -> Failed, saying so.
    decision = decide_verdict(scores(4, 4, 3), REFLECT, tries_left=0, change=CHANGED)
    assert (decision.verdict, decision.reason) == (Verdict.FAILED, VerdictReason.NO_TRIES_LEFT)
    assert decision.new_instruction is None
    # A Reflection record without an instruction is no proposal -> low-score Failed.
    empty = reflection(ReflectionTag.REFLECTION, None)
    decision = decide_verdict(scores(4, 4, 3), empty, tries_left=2, change=CHANGED)
    assert decision.reason == VerdictReason.LOW_SCORE


def test_invalid_reflector_with_low_scores() -> None:
    decision = decide_verdict(scores(3, 3, 3), INVALID, tries_left=2, change=CHANGED)
    assert (decision.verdict, decision.reason) == (Verdict.FAILED, VerdictReason.REFLECTOR_INVALID)
    assert decision.detail == "overall 3.00 < 4; reflector invalid"


def test_unparseable_scores_fail_as_unparseable_whatever_the_reflector_says() -> None:
    for answer in (None, SUCCESS, REFLECT, FAILED):
        decision = decide_verdict(UNPARSEABLE, answer, tries_left=2, change=CHANGED)
        assert (decision.verdict, decision.reason.value) == (Verdict.FAILED, "unparseable")
        assert decision.detail == "empty output"


def test_noop_guard_blocks_success_whatever_the_judges_say() -> None:
    # Perfect scores and a reflector Success, but the edited image is the source (change 0).
    decision = decide_verdict(scores(5, 5, 5), SUCCESS, tries_left=2, change=0.0)
    assert (decision.verdict, decision.reason) == (Verdict.FAILED, VerdictReason.NO_OP)
    # At the threshold it still counts as unchanged (<=); just above it, Success.
    at = decide_verdict(scores(5, 5, 5), SUCCESS, tries_left=2, change=0.02)
    above = decide_verdict(scores(5, 5, 5), SUCCESS, tries_left=2, change=0.0201)
    assert (at.verdict, above.verdict) == (Verdict.FAILED, Verdict.SUCCESS)


def test_noop_with_a_proposed_fix_reflects() -> None:
    # Nothing changed yet, the reflector says what to do and a try is left -> edit again.
    decision = decide_verdict(scores(5, 5, 5), REFLECT, tries_left=1, change=0.0)
    assert decision.verdict == Verdict.REFLECTION
    assert decision.detail == "no visible change"


def test_thresholds_are_configurable_and_checked() -> None:
    lenient = VerdictThresholds(success_min_overall=3.5, success_min_dimension=2.0)
    # (4, 4, 3): 3.67 >= 3.5 and 3 >= 2 -> Success under the lenient rule.
    assert decide_verdict(
        scores(4, 4, 3), None, tries_left=0, change=CHANGED, thresholds=lenient
    ).verdict == (Verdict.SUCCESS)
    strict_noop = VerdictThresholds(noop_max_change=0.6)
    assert decide_verdict(
        scores(5, 5, 5), None, tries_left=0, change=CHANGED, thresholds=strict_noop
    ).reason == (VerdictReason.NO_OP)
    with pytest.raises(ValueError, match="success_min_overall=6"):
        VerdictThresholds(success_min_overall=6)
    with pytest.raises(ValueError, match="noop_max_change"):
        VerdictThresholds(noop_max_change=-0.1)
    with pytest.raises(ValueError, match="tries_left=-1"):
        decide_verdict(scores(5, 5, 5), None, tries_left=-1, change=CHANGED)


def test_continuous_scores_compare_as_numbers() -> None:
    # (4.2, 3.9, 3.9): overall 12/3 = 4.0 and lowest 3.9 -> Success; (4.2, 3.9, 2.95) -> no.
    assert decide_verdict(scores(4.2, 3.9, 3.9), None, tries_left=0, change=1).verdict == (
        Verdict.SUCCESS
    )
    decision = decide_verdict(scores(4.2, 3.9, 2.95), None, tries_left=0, change=1)
    assert decision.detail == "overall 3.68 < 4; Physical & Detail Integrity 2.95 < 3"


# --- the no-op distance --------------------------------------------------------------------


def textured(size: int = 128, seed: int = 0) -> Image.Image:
    """A photo-like image: smooth gradients plus noise, so re-encoding really changes pixels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([x * 200, y * 180 + 30, (x + y) * 90], axis=2)
    noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy, "RGB")


def test_identical_and_copied_images_measure_no_change() -> None:
    source = textured(256)
    assert image_change(source, source.copy()) == 0.0
    buffer = io.BytesIO()
    source.save(buffer, format="JPEG", quality=80)
    jpeg = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    assert np.abs(np.asarray(jpeg, float) - np.asarray(source, float)).max() > 10  # really differs
    assert image_change(source, jpeg) < 0.02
    # A copy at another resolution is still a copy.
    assert image_change(source, source.resize((192, 192), Image.Resampling.BICUBIC)) < 0.02
    assert image_change(source, source.resize((512, 512), Image.Resampling.BICUBIC)) < 0.02


def test_a_small_local_edit_is_a_change() -> None:
    source = Image.new("RGB", (128, 128), (0, 0, 0))
    edited = source.copy()
    edited.paste((255, 255, 255), (32, 32, 40, 40))  # an 8x8 white square, 0.4% of the image
    # On the 32x32 grid (4x4-pixel cells) the square is 2x2 = 4 cells of difference 1.0; the top
    # 1% are round(0.01 * 1024) = 10 cells: 4 ones and 6 zeros -> 0.4.
    assert image_change(source, edited) == pytest.approx(0.4)


def test_a_colour_only_edit_is_a_change() -> None:
    # Pure red and this grey have the same 8-bit luma in PIL (299R/1000 + 587G/1000 + 114B/1000):
    # a grayscale distance would call this edit a no-op.
    source = Image.new("RGB", (64, 64), (255, 0, 0))
    edited = Image.new("RGB", (64, 64), (76, 76, 76))
    assert source.convert("L").getpixel((0, 0)) == edited.convert("L").getpixel((0, 0))
    # Every cell changes by (179 + 76 + 76) / 3 = 110.33 grey levels -> 0.4327.
    assert image_change(source, edited) == pytest.approx(331 / 3 / 255)


def test_a_padded_copy_is_a_change() -> None:
    source = textured(96)
    canvas = Image.new("RGB", (128, 128), (255, 255, 255))
    canvas.paste(source, (16, 16))
    assert image_change(source, canvas) > 0.3
