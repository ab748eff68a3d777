"""Working sizes: what size a source image is edited at, given the pipeline's multiple and a cap."""

import math


def working_size(width: int, height: int, *, multiple: int, max_pixels: int) -> tuple[int, int]:
    """The (width, height) to edit a `width` x `height` source at.

    Both sides are multiples of `multiple` (at least one multiple), the aspect ratio is kept as
    closely as rounding allows, and the area is at most `max_pixels`: a larger source is scaled
    down, a smaller one is only rounded to the nearest multiple (never upscaled to fill the cap).
    E.g. 100x60 at multiple 8 -> 104x64; 4000x3000 at multiple 16 with a 1 MiP cap -> 1184x880.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"size={width}x{height}: both sides must be positive")
    if multiple <= 0:
        raise ValueError(f"multiple={multiple}: must be positive")
    if max_pixels < multiple * multiple:
        raise ValueError(f"max_pixels={max_pixels}: smaller than one {multiple}x{multiple} block")
    scale = min(1.0, math.sqrt(max_pixels / (width * height)))
    target_w, target_h = width * scale, height * scale
    # Half rounds up (not Python's round-half-to-even): 100 px at multiple 8 -> 104, not 96.
    w = max(multiple, math.floor(target_w / multiple + 0.5) * multiple)
    h = max(multiple, math.floor(target_h / multiple + 0.5) * multiple)
    # Rounding up (or the one-multiple minimum on a very thin image) can overshoot the cap; then
    # shrink the side that is longest relative to its target, one multiple at a time.
    while w * h > max_pixels:
        if w > multiple and (h == multiple or w / target_w >= h / target_h):
            w -= multiple
        else:
            h -= multiple
    return w, h
