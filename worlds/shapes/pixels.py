"""Pixels of the shapes world: grid and shape masks, rendering, palette classes, and reading a
scene back from its render (so that judges need no side channel)."""

from collections import Counter
from functools import cache

import numpy as np
from PIL import Image

from worlds.shapes.types import (
    BACKGROUND_COLOURS,
    DEFAULT_SIZE,
    KINDS,
    PALETTE,
    PALETTE_NAMES,
    Scene,
    Shape,
)

_CLASS = {name: index for index, name in enumerate(PALETTE_NAMES)}


def check_size(size: int) -> None:
    # Below 3 pixels per cell a disk and a square are no longer told apart.
    if not isinstance(size, int) or size < 9:
        raise ValueError(f"size must be an int of at least 9 pixels, got {size!r}")


@cache
def _masks(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    check_size(size)
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
    check_size(width)
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
