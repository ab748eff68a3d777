"""Plain records of the editor role: what is asked of an editor and what it gives back."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image


@dataclass(frozen=True)
class EditRequest:
    """One edit: an RGB source image, the instruction to apply, and the seed of its generator."""

    image: Image.Image
    instruction: str
    seed: int


@dataclass(frozen=True)
class EditResult:
    """The outcome of one request: an image (source size) or an error, and what produced it."""

    image: Image.Image | None
    error: str | None
    seed: int
    checkpoint_version: str
    wall_time_s: float
    params: dict[str, float | int | str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


class Editor(Protocol):
    """Every editor: the same `edit` call, results in request order, failures per request."""

    @property
    def version(self) -> str:
        """The checkpoint version currently loaded."""

    def edit(self, requests: Sequence[EditRequest]) -> list[EditResult]:
        """Edit a batch; a bad request gives a result with `error` set, never an exception."""
