"""Judging by pixels: what an edited image achieved against the source scene and its operations,
and the criterion of success."""

from dataclasses import dataclass

import numpy as np
from PIL import Image

from worlds.shapes.operations import apply_operation, apply_operations, check_operations
from worlds.shapes.pixels import (
    cell_masks,
    image_classes,
    image_to_array,
    palette_classes,
    palette_distance,
    scene_classes,
)
from worlds.shapes.types import Operation, Scene


@dataclass(frozen=True)
class SuccessCriterion:
    """An edit is right when at most `max_wrong` pixels have the wrong palette class overall and at
    most `max_wrong_per_cell` in any grid cell (docs/design.md: a wrong shape, colour, position or
    background always fails; the target plus Gaussian noise of sigma 0.3 still passes)."""

    max_wrong: int = 10
    max_wrong_per_cell: int = 4

    def allows(self, wrong: np.ndarray) -> bool:
        """Whether a boolean (S, S) mask of wrong pixels is within the criterion."""
        if int(wrong.sum()) > self.max_wrong:
            return False
        per_cell = (cell_masks(wrong.shape[0]) & wrong[None]).sum(axis=(1, 2))
        return int(per_cell.max()) <= self.max_wrong_per_cell


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
