"""A rule judge for synthetic domains: did the masked region change, and did the rest stay?

No model: it compares pixels against the item's known mask (`JudgeItem.mask`), so tests and
synthetic worlds get a judge that is exact, fast and free of hub downloads.
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from rewards.parsing import cap_scores
from rewards.types import JudgeItem, ParseStatus, Scores

PIXEL_DIMENSIONS = ("Region Change", "Region Coverage", "Outside Preservation")


@dataclass(frozen=True)
class PixelJudge:
    """Scores 1-5 from pixel differences inside and outside each item's mask.

    Region Change: mean difference inside the mask, 5 at `full_change` or more. Region Coverage:
    share of mask pixels that changed by more than `pixel_tolerance`, 5 when all did. Outside
    Preservation: 5 when nothing outside the mask changed, 1 at a mean difference of
    `outside_tolerance` or more. Differences are per pixel, the largest RGB channel, over 0..1.
    ImgEdit-Judge's cap applies too (2 and 3 not above 1), so a no-op scores 1.
    """

    full_change: float = 0.25
    pixel_tolerance: float = 0.05
    outside_tolerance: float = 0.05
    name: str = "pixel-judge"

    def score(self, items: Sequence[JudgeItem]) -> list[Scores]:
        """One `Scores` per item; each needs a non-empty mask of its source's size (ValueError)."""
        masks = []
        for i, item in enumerate(items):
            if item.mask is None:
                raise ValueError(f"items[{i}].mask is None: the pixel judge needs the edit region")
            if item.mask.size != item.source.size:
                raise ValueError(
                    f"items[{i}].mask is {item.mask.size}, its source {item.source.size}"
                )
            inside = np.asarray(item.mask.convert("L")) > 0
            if not inside.any():
                raise ValueError(f"items[{i}].mask is empty: no region to edit")
            masks.append(inside)
        return [self._score_one(item, inside) for item, inside in zip(items, masks, strict=True)]

    def _score_one(self, item: JudgeItem, inside: np.ndarray) -> Scores:
        start = time.perf_counter()
        source = np.asarray(item.source.convert("RGB"), dtype=np.float32)
        # An editor may return another size: compare at the source's size, where the mask lives
        # (area average, so a 2x copy maps back exactly).
        edited_image = item.edited.convert("RGB")
        if edited_image.size != item.source.size:
            edited_image = edited_image.resize(item.source.size, Image.Resampling.BOX)
        edited = np.asarray(edited_image, dtype=np.float32)
        diff = np.abs(source - edited).max(axis=2) / 255.0
        change_in = float(diff[inside].mean())
        coverage = float((diff[inside] > self.pixel_tolerance).mean())
        # A mask covering the whole image leaves nothing to preserve.
        change_out = float(diff[~inside].mean()) if (~inside).any() else 0.0
        emitted = (
            1 + 4 * min(change_in / self.full_change, 1.0),
            1 + 4 * coverage,
            5 - 4 * min(change_out / self.outside_tolerance, 1.0),
        )
        values, capped = cap_scores(emitted)
        detail = (
            f"change inside {change_in:.3f}, coverage {coverage:.2f}, "
            f"change outside {change_out:.3f}"
        )
        return Scores(
            following=values[0],
            quality=values[1],
            preservation=values[2],
            overall=sum(values) / 3,
            dimension_names=PIXEL_DIMENSIONS,
            status=ParseStatus.CAPPED if capped else ParseStatus.OK,
            raw_output=detail,
            latency_s=time.perf_counter() - start,
            model=self.name,
            detail=detail,
        )
