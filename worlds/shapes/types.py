"""The shapes world's vocabulary: colours, kinds, grid cells, and the scene and operation types.

A scene is a background colour and one or two shapes (a square or a disk), each in its own cell
of a 3x3 grid and named by its colour, which is unique in the scene (a world a 1.7 M-parameter
editor learns in minutes: docs/design.md, "The shapes world"). Operations are recolour, remove
and background. The bottom of the package: every other module of it builds on these types.
"""

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

# Colours as RGB in [0, 1]; shape colours and background colours are disjoint, so a shape is
# always distinguishable from any background (docs/design.md, "Learning from judged edits").
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
