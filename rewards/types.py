"""Plain records of the judge role: items to judge, scores, reflections."""

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from PIL import Image

from store.taxonomy import EditType


class ParseStatus(StrEnum):
    OK = "ok"
    CAPPED = "capped"  # parsed, and dimension 2 or 3 was lowered to dimension 1 (the judge's rule)
    UNPARSEABLE = "unparseable"


@dataclass(frozen=True)
class JudgeItem:
    """One edit to judge, always against the original source and instruction (docs/design.md)."""

    source: Image.Image
    edited: Image.Image
    instruction: str
    edit_type: EditType


@dataclass(frozen=True)
class Scores:
    """A scorer's answer for one item; scores are None when `status` is unparseable."""

    following: float | None
    quality: float | None
    preservation: float | None
    overall: float | None
    dimension_names: tuple[str, str, str]
    status: ParseStatus
    raw_output: str
    latency_s: float
    model: str
    detail: str = ""  # why the output is unparseable, or which dimension was capped


class ReflectionTag(StrEnum):
    SUCCESS = "Success"
    FAILED = "Failed"
    REFLECTION = "Reflection"
    INVALID = "Invalid"  # the reflector's answer broke the protocol after its retries


@dataclass(frozen=True)
class Reflection:
    """A reflector's answer for one item (ReasonEdit protocol)."""

    tag: ReflectionTag
    new_instruction: str | None
    think: str | None
    target_description: str | None
    raw_output: str
    tries: int
    model: str
    detail: str = ""  # why the last answer broke the protocol (tag `Invalid`)
    latency_s: float = 0.0


class Scorer(Protocol):
    """Scores edits on ImgEdit's three 1-5 dimensions."""

    def score(self, items: Sequence[JudgeItem]) -> list[Scores]:
        """One `Scores` per item, in order; never raises on model output."""


class Reflector(Protocol):
    """Decides Success / Failed / Reflection with a new instruction (ReasonEdit)."""

    def reflect(
        self, items: Sequence[JudgeItem], *, hints: Sequence[str | None] | None = None
    ) -> list[Reflection]:
        """One `Reflection` per item, in order; invalid output becomes tag `Invalid`. `hints`:
        each item's scores as a non-binding hint (`score_hint`), None where there is none."""
