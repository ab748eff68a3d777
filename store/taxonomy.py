"""The ImgEdit edit-type taxonomy shared by ingest, judges and metrics."""

from enum import StrEnum


class EditType(StrEnum):
    """The ImgEdit taxonomy (ImgEdit says "adjust" for alter and "compose" for hybrid)."""

    ADD = "add"
    REMOVE = "remove"
    REPLACE = "replace"
    ALTER = "alter"
    ACTION = "action"
    EXTRACT = "extract"
    BACKGROUND = "background"
    STYLE = "style"
    HYBRID = "hybrid"
    VISUAL_REFERENCE = "visual-reference"
    OTHER = "other"


# Names used by the ImgEdit and ImgEdit-Bench releases for the same types.
EDIT_TYPE_ALIASES: dict[str, EditType] = {
    "adjust": EditType.ALTER,
    "compose": EditType.HYBRID,
    "visual_reference": EditType.VISUAL_REFERENCE,
}


def parse_edit_type(value: str) -> EditType:
    """Map a user-given edit type (case-insensitive, ImgEdit aliases allowed) to `EditType`."""
    name = value.strip().lower()
    if name in EDIT_TYPE_ALIASES:
        return EDIT_TYPE_ALIASES[name]
    try:
        return EditType(name)
    except ValueError:
        valid = ", ".join(t.value for t in EditType)
        raise ValueError(f"unknown edit type {value!r}; expected one of: {valid}") from None


class Verdict(StrEnum):
    """The label of an edit (ReasonEdit): accept, retry with a new instruction, or reject."""

    SUCCESS = "Success"
    REFLECTION = "Reflection"
    FAILED = "Failed"
