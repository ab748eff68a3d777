"""The verdict rule: scores + reflection + tries left → Success / Reflection / Failed, and why.

Also the no-op guard: an edited image (nearly) identical to its source is never `Success`, whatever
the judges say; returning the input unchanged is the cheapest way for an editor to hack a judge
that rewards preservation.
"""

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from PIL import Image

from rewards.types import ParseStatus, Reflection, ReflectionTag, Scores
from store.taxonomy import Verdict

# Both images are compared on this grid (cells of the image), whatever their sizes.
CHANGE_GRID = 32
# The change is the mean of the largest this-fraction of cell differences (see `image_change`).
CHANGE_TOP_FRACTION = 0.01


@dataclass(frozen=True)
class VerdictThresholds:
    """What the verdict rule requires; scores are on ImgEdit's 1-5 scale."""

    success_min_overall: float = 4.0  # Success: overall (mean of 3 dimensions) at least this
    success_min_dimension: float = 3.0  # Success: every dimension at least this
    # No-op guard: an `image_change` at most this counts as unchanged. Measured on synthetic
    # photos: copies (JPEG q75-90, rescaled, Gaussian noise sigma <= 8) give <= 0.02 at 128 px and
    # <= 0.007 at 512 px; an object over 0.2% of the image or +8 grey levels overall give >= 0.03.
    noop_max_change: float = 0.02

    def __post_init__(self) -> None:
        for name in ("success_min_overall", "success_min_dimension"):
            value = getattr(self, name)
            if not 1 <= value <= 5:
                raise ValueError(f"{name}={value}: expected a score between 1 and 5")
        if not 0 <= self.noop_max_change <= 1:
            raise ValueError(f"noop_max_change={self.noop_max_change}: expected 0..1")


class VerdictReason(StrEnum):
    """Why a verdict was given; `unparseable`: the judge's answer could not be read."""

    ACCEPTED = "accepted"
    REFLECT = "reflect"
    UNPARSEABLE = "unparseable"
    NO_OP = "no-op"
    REFLECTOR_FAILED = "reflector-failed"
    LOW_SCORE = "low-score"
    REFLECTOR_INVALID = "reflector-invalid"
    NO_TRIES_LEFT = "no-tries-left"


@dataclass(frozen=True)
class VerdictDecision:
    """A verdict, its reason code, a human-readable detail, and the instruction to retry with."""

    verdict: Verdict
    reason: VerdictReason
    detail: str
    new_instruction: str | None = None  # set only for `Reflection`


def image_change(source: Image.Image, edited: Image.Image) -> float:
    """How much `edited` differs from `source`, 0 (identical) to 1; sizes may differ.

    Both images are box-filtered to the same `CHANGE_GRID`² RGB grid, so a copy that was rescaled
    or re-encoded still measures ~0, while a crop, pad or shift shows up as change. Per cell the
    absolute difference is averaged over R, G, B (not grayscale, which misses a colour-only edit
    of equal luminance); the value is the mean over the `CHANGE_TOP_FRACTION` most-changed cells,
    because a plain mean would dilute a small local edit into the noise of a re-encoded copy.
    """
    size = (CHANGE_GRID, CHANGE_GRID)
    a = np.asarray(source.convert("RGB").resize(size, Image.Resampling.BOX), dtype=np.float32)
    b = np.asarray(edited.convert("RGB").resize(size, Image.Resampling.BOX), dtype=np.float32)
    cells = np.abs(a - b).mean(axis=2).ravel() / 255.0  # per cell, mean over RGB
    top = max(1, round(CHANGE_TOP_FRACTION * cells.size))
    return float(np.sort(cells)[-top:].mean())


def low_scores(
    names: tuple[str, ...], dims: tuple[float, ...], overall: float, thresholds: VerdictThresholds
) -> list[str]:
    """What keeps these scores from `Success` under `thresholds`, one phrase each; [] when none.

    The score half of the verdict rule, shared with the confirmed outcome of a stored judgment.
    """
    low = [
        f"{name} {value:g} < {thresholds.success_min_dimension:g}"
        for name, value in zip(names, dims, strict=True)
        if value < thresholds.success_min_dimension
    ]
    if overall < thresholds.success_min_overall:
        low.insert(0, f"overall {overall:.2f} < {thresholds.success_min_overall:g}")
    return low


def decide_verdict(
    scores: Scores,
    reflection: Reflection | None,
    *,
    tries_left: int,
    change: float,
    thresholds: VerdictThresholds = VerdictThresholds(),
) -> VerdictDecision:
    """Combine one item's scores, reflection (None: no reflector) and retry budget into a verdict.

    `change` is `image_change(source, edited)`. Order: an unparseable judge answer fails; a
    reflector `Failed` fails; Success needs the score thresholds, a real change (no-op guard) and
    no reflector veto (the judge is the scorer: a reflector asking for more, or breaking format,
    does not overrule good scores); Reflection needs a valid new instruction and tries left;
    everything else fails with the reason.
    """
    if tries_left < 0:
        raise ValueError(f"tries_left={tries_left}: expected 0 or more")
    if scores.status == ParseStatus.UNPARSEABLE:
        return VerdictDecision(Verdict.FAILED, VerdictReason.UNPARSEABLE, scores.detail)
    dims = (scores.following, scores.quality, scores.preservation)
    if scores.overall is None or any(d is None for d in dims):
        raise ValueError(f"scores with status {scores.status} lack a value: {scores}")
    tag = reflection.tag if reflection is not None else None
    if tag == ReflectionTag.FAILED:
        return VerdictDecision(Verdict.FAILED, VerdictReason.REFLECTOR_FAILED, "reflector: Failed")
    noop = change <= thresholds.noop_max_change
    low = low_scores(scores.dimension_names, dims, scores.overall, thresholds)
    if not low and not noop:
        return VerdictDecision(
            Verdict.SUCCESS, VerdictReason.ACCEPTED, f"overall {scores.overall:.2f}"
        )
    # Not acceptable as is: the reflector may still propose a fix.
    if tag == ReflectionTag.REFLECTION and reflection is not None and reflection.new_instruction:
        if tries_left > 0:
            return VerdictDecision(
                Verdict.REFLECTION,
                VerdictReason.REFLECT,
                "; ".join(low) if low else "no visible change",
                reflection.new_instruction,
            )
        return VerdictDecision(
            Verdict.FAILED, VerdictReason.NO_TRIES_LEFT, "reflection asked, no tries left"
        )
    if noop:
        return VerdictDecision(
            Verdict.FAILED,
            VerdictReason.NO_OP,
            f"change {change:.4f} <= {thresholds.noop_max_change:g}: edited image is the source",
        )
    if tag == ReflectionTag.INVALID:
        return VerdictDecision(
            Verdict.FAILED, VerdictReason.REFLECTOR_INVALID, "; ".join(low) + "; reflector invalid"
        )
    return VerdictDecision(Verdict.FAILED, VerdictReason.LOW_SCORE, "; ".join(low))
