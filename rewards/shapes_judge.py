"""Exact judges of the shapes world: a scorer on ImgEdit's 1-5 scale and a rule reflector.

Both read everything from the item: the source image is an exact render, so the scene is
recovered from its pixels (`worlds.shapes.recover_scene`), the operations are parsed from the
instruction, and the target follows; no task metadata is needed. As every judge here, they judge
an attempt against the ORIGINAL source and instruction (docs/design.md), also for a reflection's
output, so "which operations are done" is always relative to the original task.

An item outside the world (a source that is not a rendered scene, an instruction the world cannot
parse, an edit type the world does not produce) cannot be judged: the scorer answers status
`unparseable` and the reflector tag `Invalid`, with the reason in `raw_output`, and the other
items of the batch are judged as usual.

Scores (each an integer 1-5, as ImgEdit-Judge answers; see `following_score`, `quality_score`,
`preservation_score`), then ImgEdit's rule that dimensions 2 and 3 are not higher than
dimension 1 (status `capped` where it lowered one), overall = their mean. The levels are chosen
so that the verdict rule's defaults (overall at least 4, every dimension at least 3) accept an
edit exactly when it meets the success criterion and its colours are clean (quality 3 or more):
a right edit scores (5, 3-5, 5), a wrong one has following or preservation at most 3 and 2.

A fallible variant (`JudgeNoise`, off by default) stands in for a real judge that disagrees with
people: with probability `rate` per item it is wrong, either way (`flip`: a right edit rejected, a
wrong one accepted) or only leniently (`lenient`: a half-done compound edit accepted). The draw is
a hash of the seed and the item (instruction, source and edited pixels), so the scorer and the
reflector agree, runs repeat, and a judge wrong about an image stays wrong about it, as a model
decoding greedily does.
"""

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

from rewards.prompts import DIMENSIONS
from rewards.types import (
    JudgeItem,
    ParseStatus,
    Reflection,
    ReflectionTag,
    Scores,
)
from store.taxonomy import EditType
from worlds.shapes.language import (
    describe_scene,
    parse_instruction,
    phrase_operation,
    phrase_operations,
)
from worlds.shapes.measure import EditMeasurement, SuccessCriterion, measure_edit
from worlds.shapes.operations import apply_operations
from worlds.shapes.pixels import recover_scene
from worlds.shapes.types import Operation, Scene

SCORER_MODEL = "shapes-exact"
REFLECTOR_MODEL = "shapes-rule"

# ImgEdit-Judge's dimension names (following, quality, preservation) for the edit types the
# shapes world produces.
DIMENSION_NAMES: dict[EditType, tuple[str, str, str]] = {
    edit_type: DIMENSIONS[edit_type]
    for edit_type in (EditType.ALTER, EditType.REMOVE, EditType.BACKGROUND, EditType.HYBRID)
}
_UNKNOWN_DIMENSIONS = ("Instruction Following", "Edit Quality", "Detail Preservation")


NOISE_MODES = ("flip", "lenient")


class NotJudgeable(ValueError):
    """An item outside the shapes world."""


@dataclass(frozen=True)
class JudgeNoise:
    """How a fallible shapes judge errs: on each item with probability `rate` (seeded).

    flip: the judgment is reversed, both ways (a right edit rejected, a wrong one accepted);
    lenient: only half-done compound edits (one of two operations done, nothing else changed)
    can be wrongly accepted, each with probability `rate`.
    """

    rate: float = 0.0
    mode: str = "flip"
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.rate <= 1:
            raise ValueError(f"judge noise rate={self.rate}: a probability in [0, 1]")
        if self.mode not in NOISE_MODES:
            raise ValueError(f"judge noise mode={self.mode!r}: one of {', '.join(NOISE_MODES)}")

    def draw(self, item: JudgeItem) -> float:
        """A uniform number in [0, 1) fixed by the seed and the item's content."""
        digest = hashlib.sha256(f"{self.seed}|{self.mode}|{item.instruction}|".encode())
        digest.update(item.source.tobytes())
        digest.update(item.edited.tobytes())
        return int.from_bytes(digest.digest()[:8], "big") / 2**64

    def wrong(self, item: JudgeItem, measurement: EditMeasurement) -> bool:
        """Whether the judge errs on this item (its true outcome is `measurement`)."""
        if self.rate == 0:
            return False
        if self.mode == "lenient" and not half_done(measurement):
            return False
        return self.draw(item) < self.rate


EXACT = JudgeNoise()


def half_done(measurement: EditMeasurement) -> bool:
    """One of two operations done, the rest of the image as it was: what a lenient judge lets
    through."""
    done = measurement.operations_done
    return len(done) == 2 and sum(done) == 1 and measurement.preserved and not measurement.success


def read_task(item: JudgeItem) -> tuple[Scene, tuple[Operation, ...]]:
    """The source scene and the operations of an item; `NotJudgeable` if it is not a shapes task."""
    if item.edit_type not in DIMENSION_NAMES:
        raise NotJudgeable(f"edit type {item.edit_type.value!r} is not one of the shapes world")
    try:
        scene = recover_scene(item.source)
        operations = parse_instruction(item.instruction, scene)
    except ValueError as exc:
        raise NotJudgeable(str(exc)) from None
    return scene, operations


def measure_item(
    item: JudgeItem, criterion: SuccessCriterion
) -> tuple[Scene, tuple[Operation, ...], EditMeasurement | None]:
    """Scene, operations and measurement of an item; no measurement when the edited image does not
    have the source's size (an edit that failed outright). Raises `NotJudgeable`."""
    scene, operations = read_task(item)
    if item.edited.size != item.source.size or item.edited.mode != "RGB":
        return scene, operations, None
    size = item.source.size[0]
    return scene, operations, measure_edit(scene, operations, item.edited, size, criterion)


def following_score(measurement: EditMeasurement) -> int:
    """Instruction following: 5 when every operation is done (its region within the criterion),
    unless the only fault left is errors scattered over the edit beyond the whole-image criterion;
    otherwise 1 + 4 x the mean credit (an operation done 1, at least half right 0.5), rounded half
    up, at most 3. One of two done: 3; half of one of two: 2; nothing (the untouched source): 1.
    Level 4 is not given: a verifiable edit is right or measurably not, and a 4 would let a
    half-done edit pass a verdict rule of "overall at least 4"."""
    if all(measurement.operations_done) and (measurement.success or not measurement.preserved):
        return 5
    credits = [
        1.0 if done else 0.5 if right >= 0.5 else 0.0
        for done, right in zip(
            measurement.operations_done, measurement.operations_right, strict=True
        )
    ]
    return min(3, int(1 + 4 * sum(credits) / len(credits) + 0.5))


def preservation_score(measurement: EditMeasurement) -> int:
    """Detail preservation, from the pixels changed outside the edited regions: 5 within the
    success criterion; beyond it 2 up to 50 pixels (two shapes' worth), else 1. Never 3 or 4, so
    that damage elsewhere is never accepted by a verdict rule of "every dimension at least 3"."""
    if measurement.preserved:
        return 5
    return 2 if measurement.wrong_outside <= 50 else 1


def quality_score(measurement: EditMeasurement) -> int:
    """Visual quality, from the mean RGB distance (0-1 units) of the pixels to their nearest palette
    colour: up to 0.04 5, 0.1 4, 0.3 3, 0.45 2, more 1. An exact render is ~0.003; Gaussian noise of
    sigma 0.15 per channel (0.3 in the editor's [-1, 1] units, which the success criterion still
    accepts: docs/design.md) gives 0.13-0.25, so 3, and a Success passes a "every dimension at
    least 3" verdict rule."""
    return 5 - sum(measurement.palette_distance > bound for bound in (0.04, 0.1, 0.3, 0.45))


def _answer(reasoning: str, names: tuple[str, str, str], values: tuple[int, int, int]) -> str:
    # The same form as ImgEdit-Judge's answer, so raw outputs read and export alike.
    lines = [f"Brief reasoning: {reasoning}"]
    lines += [f"{name}: {value}" for name, value in zip(names, values, strict=True)]
    return "\n".join(lines)


def score_item(
    item: JudgeItem, criterion: SuccessCriterion = SuccessCriterion(), noise: JudgeNoise = EXACT
) -> Scores:
    """Scores of one item (never raises for an item outside the world: status unparseable); with
    `noise`, the scores of the reversed judgment where the judge errs (`JudgeNoise`)."""
    started = time.perf_counter()
    names = DIMENSION_NAMES.get(item.edit_type, _UNKNOWN_DIMENSIONS)
    try:
        _, operations, measurement = measure_item(item, criterion)
    except NotJudgeable as exc:
        return Scores(
            following=None,
            quality=None,
            preservation=None,
            overall=None,
            dimension_names=names,
            status=ParseStatus.UNPARSEABLE,
            raw_output=f"cannot judge: {exc}",
            latency_s=time.perf_counter() - started,
            model=SCORER_MODEL,
            detail=f"cannot judge: {exc}",
        )
    detail = ""
    if measurement is None:
        values = (1, 1, 1)
        width, height = item.edited.size
        reasoning = f"the edited image is {width}x{height} {item.edited.mode}, unlike the source."
    elif noise.wrong(item, measurement):
        values, reasoning = _wrong_values(measurement, len(operations))
        detail = f"judge noise ({noise.mode}, rate {noise.rate:g}): judgment reversed"
    else:
        following = following_score(measurement)
        uncapped = (quality_score(measurement), preservation_score(measurement))
        # ImgEdit's rubric: dimensions 2 and 3 are not higher than dimension 1.
        values = (following, *(min(value, following) for value in uncapped))
        detail = ", ".join(
            f"{name} capped from {was} to {now}"
            for name, was, now in zip(names[1:], uncapped, values[1:], strict=True)
            if was != now
        )
        reasoning = (
            f"{sum(measurement.operations_done)} of {len(operations)} operations done, "
            f"{measurement.wrong_outside} pixels changed elsewhere, "
            f"palette distance {measurement.palette_distance:.3f}."
        )
    following, quality, preservation = (float(v) for v in values)
    return Scores(
        following=following,
        quality=quality,
        preservation=preservation,
        overall=(following + quality + preservation) / 3,
        dimension_names=names,
        status=ParseStatus.CAPPED if "capped" in detail else ParseStatus.OK,
        raw_output=_answer(reasoning, names, values),
        latency_s=time.perf_counter() - started,
        model=SCORER_MODEL,
        detail=detail,
    )


def _wrong_values(
    measurement: EditMeasurement, operations: int
) -> tuple[tuple[int, int, int], str]:
    """Scores and reasoning of the reversed judgment: a right edit is said to miss an operation
    (3, 3, 3: below the verdict rule's overall 4); a wrong one is said to be right (5, at least 3,
    5: accepted)."""
    if measurement.success:
        return (3, 3, 3), f"{operations - 1} of {operations} operations done."
    quality = max(3, quality_score(measurement))
    return (5, quality, 5), f"{operations} of {operations} operations done, nothing else changed."


def reflect_item(
    item: JudgeItem, criterion: SuccessCriterion = SuccessCriterion(), noise: JudgeNoise = EXACT
) -> Reflection:
    """The rule reflection of one item (ReasonEdit protocol, docs/design.md):

    - `Success`: the whole image matches the target within the criterion;
    - `Reflection`: nothing outside the edited regions changed (within the criterion), at least
      one operation is done and at least one is not: the new instruction is the operations not
      done, phrased plainly on the shapes they name (still valid on the edited image, since each
      operation edits a different object); the loop applies it to this attempt's output;
    - `Failed`: damage elsewhere, nothing done, an image unlike the source in size or mode, or
      every operation done but the image not clean enough (no instruction would repair it).
    This contains the hindsight experiment's rule (output = one operation's own target) and reflects
    when the missing operation was half done, which the same instruction repairs. Where `noise`
    errs, the tag is reversed: `Success` for a wrong edit, `Failed` (a restart) for a right one.
    """
    started = time.perf_counter()
    try:
        tag, think, instruction, target = _decide(item, criterion, noise)
    except NotJudgeable as exc:
        tag, think, instruction, target = ReflectionTag.INVALID, None, None, None
        raw, detail = f"cannot judge: {exc}", f"cannot judge: {exc}"
    else:
        # ReasonEdit's answer form: one <#Think>, then exactly one ending tag.
        raw = f"<#Think> {think} <#{tag.value}>" + (f" {instruction}" if instruction else "")
        detail = ""
    return Reflection(
        tag=tag,
        new_instruction=instruction,
        think=think,
        target_description=target,
        raw_output=raw,
        tries=1,
        model=REFLECTOR_MODEL,
        detail=detail,
        latency_s=time.perf_counter() - started,
    )


def _decide(
    item: JudgeItem, criterion: SuccessCriterion, noise: JudgeNoise = EXACT
) -> tuple[ReflectionTag, str, str | None, str]:
    """Tag, think text, new instruction and target description of `reflect_item`."""
    scene, operations, measurement = measure_item(item, criterion)
    target = describe_scene(apply_operations(scene, operations))
    if measurement is None:
        width, height = item.edited.size
        think = f"The edited image is {width}x{height} {item.edited.mode}, unlike the source."
        return ReflectionTag.FAILED, think, None, target
    if noise.wrong(item, measurement):
        if measurement.success:
            think = f"The target shows {target}. The edit misses part of the instruction."
            return ReflectionTag.FAILED, think, None, target
        think = f"The target shows {target}. The edit shows it."
        return ReflectionTag.SUCCESS, think, None, target
    done = [op for op, ok in zip(operations, measurement.operations_done, strict=True) if ok]
    missing = tuple(op for op in operations if op not in done)
    think = f"The target shows {target}. " + " ".join(
        f"'{phrase_operation(op, scene)}' is {'done' if op in done else 'not done'}."
        for op in operations
    )
    if measurement.success:
        return ReflectionTag.SUCCESS, think, None, target
    if not measurement.preserved:
        think += f" {measurement.wrong_outside} pixels changed where nothing should change."
        return ReflectionTag.FAILED, think, None, target
    if done and missing:
        return ReflectionTag.REFLECTION, think, phrase_operations(missing, scene), target
    if done:
        think += f" {measurement.wrong_total} pixels still differ from the target."
    else:
        think += " Nothing was achieved."
    return ReflectionTag.FAILED, think, None, target


class ShapesScorer:
    """`Scorer` of the shapes world: exact scores from palette classes (see `score_item`), or a
    fallible judge's with `noise`."""

    def __init__(
        self, criterion: SuccessCriterion = SuccessCriterion(), noise: JudgeNoise = EXACT
    ) -> None:
        self.criterion = criterion
        self.noise = noise

    def score(self, items: Sequence[JudgeItem]) -> list[Scores]:
        """One `Scores` per item, in order."""
        return [score_item(item, self.criterion, self.noise) for item in items]


class ShapesReflector:
    """`Reflector` of the shapes world: the rule reflection of `reflect_item`, or a fallible
    judge's with `noise` (the same noise as the scorer's, so that the two agree)."""

    def __init__(
        self, criterion: SuccessCriterion = SuccessCriterion(), noise: JudgeNoise = EXACT
    ) -> None:
        self.criterion = criterion
        self.noise = noise

    def reflect(
        self, items: Sequence[JudgeItem], *, hints: Sequence[str | None] | None = None
    ) -> list[Reflection]:
        """One `Reflection` per item, in order; an exact rule needs no `hints` and ignores them."""
        return [reflect_item(item, self.criterion, self.noise) for item in items]
