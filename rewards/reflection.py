"""The ReasonEdit reflection protocol as plain text: editloop's prompts and a strict validator.

ReasonEdit (Step1X-Edit v1.2) evaluates one image against a target description, which its paper
found better than comparing two images: (1) describe the target from source + instruction, (2)
judge the edited image against that description, (3) answer `<#Think> ... <#Success>`,
`<#Think> ... <#Failed>` or `<#Think> ... <#Reflection> <new instruction>` (docs/design.md). The
prompt wording here is our own.
"""

import re
from dataclasses import dataclass

from rewards.types import ReflectionTag, Scores

THINK = "<#Think>"
ENDING_TAGS = {
    "<#Success>": ReflectionTag.SUCCESS,
    "<#Failed>": ReflectionTag.FAILED,
    "<#Reflection>": ReflectionTag.REFLECTION,
}
# A new instruction longer than this is not an instruction but a runaway generation.
MAX_INSTRUCTION_CHARS = 1000

_TAG = re.compile(r"<#[^<>\s]*>")


def describe_target_prompt(instruction: str) -> str:
    """Step 1: ask for the target image described from the source image and the instruction."""
    return (
        "The image is the original. Someone wants to edit it with this instruction:\n"
        f'"{instruction}"\n'
        "Describe in at most three sentences what the image should show once the instruction is "
        "carried out: what changes, and what must stay as it is. Describe the target image only; "
        "do not judge anything."
    )


def reflect_prompt(
    instruction: str, target_description: str, hint: str | None = None, retry_note: str = ""
) -> str:
    """Steps 2 and 3: judge the edited image against the description and answer with tags.

    `hint` is an earlier judgment (a score and its reason) shown as non-binding, as ReasonEdit
    allows; `retry_note` tells the model why its previous answer was rejected.
    """
    description = target_description.strip() or "(no description was produced)"
    lines = [
        "The image is the result of editing a picture with this instruction:",
        f'"{instruction}"',
        "The intended result, described from the original picture:",
        description,
        "",
        "Check the image against that description.",
        "- Is everything the instruction asks for done?",
        "- Flag a collapsed image and visible artifacts; ignore mild artifacts on hands.",
        "- Regions the instruction did not mention must stay unchanged. If they changed too much "
        "to repair with another edit, the edit has failed.",
    ]
    if hint:
        lines.append(f"- An earlier judge said: {hint.strip()} (a hint only; decide yourself).")
    lines += [
        "",
        "Answer in this format: start with <#Think> and your reasoning in a few sentences, then "
        "end with exactly one of:",
        "<#Success> if the edit is done and clean;",
        "<#Failed> if another edit of this image cannot repair it;",
        "<#Reflection> followed by a new instruction to apply to this image to finish the edit. "
        "The new instruction must differ clearly from the original one, leave out what is "
        "already achieved, and make sense applied to this image alone.",
    ]
    if retry_note:
        lines += ["", retry_note]
    return "\n".join(lines)


def retry_note(reason: str) -> str:
    """What a retry tells the reflector: its previous answer broke the format, and how."""
    return (
        f"Your previous answer was rejected ({reason}). Answer again: start with <#Think> and end "
        "with exactly one of <#Success>, <#Failed> or <#Reflection> <new instruction>."
    )


@dataclass(frozen=True)
class ReflectionCheck:
    """The validator's reading of one reflector answer; `tag` is `Invalid` with a `reason`."""

    tag: ReflectionTag
    think: str | None
    new_instruction: str | None
    reason: str


def normalize_instruction(text: str) -> str:
    """Instruction text to compare: case folded, whitespace collapsed, end punctuation dropped."""
    return " ".join(text.casefold().split()).strip(" .!;:\"'`")


def _invalid(reason: str, think: str | None = None) -> ReflectionCheck:
    return ReflectionCheck(ReflectionTag.INVALID, think, None, reason)


def validate_reflection(
    text: str, instruction: str, max_instruction_chars: int = MAX_INSTRUCTION_CHARS
) -> ReflectionCheck:
    """Check one reflector answer against the protocol; never raises on any `text`.

    Valid: starts with `<#Think>` (surrounding whitespace aside), one `<#Think>`, a non-empty think
    part, exactly one ending tag after it and no other `<#...>` tag; after `<#Success>` and
    `<#Failed>` nothing follows; after `<#Reflection>` a new instruction that is non-empty, at most
    `max_instruction_chars` long and different from `instruction` once normalised.
    """
    body = text.strip()
    if not body:
        return _invalid("empty answer")
    if not body.startswith(THINK):
        return _invalid(f"does not start with {THINK}")
    tags = _TAG.findall(body)
    unknown = sorted({t for t in tags if t != THINK and t not in ENDING_TAGS})
    if unknown:
        return _invalid(f"unknown tag {unknown[0]}")
    if tags.count(THINK) != 1:
        return _invalid(f"{tags.count(THINK)} {THINK} tags")
    endings = [t for t in tags if t in ENDING_TAGS]
    if len(endings) != 1:
        return _invalid(f"{len(endings)} ending tags, expected exactly one")
    ending = endings[0]
    think, _, after = body[len(THINK) :].partition(ending)
    think = think.strip()
    if not think:
        return _invalid("empty think part")
    tag = ENDING_TAGS[ending]
    after = after.strip()
    if tag != ReflectionTag.REFLECTION:
        if after:
            return _invalid(f"text after {ending}", think)
        return ReflectionCheck(tag, think, None, "")
    new_instruction = " ".join(after.split()).strip("\"'`“”")
    new_instruction = new_instruction.strip()
    if not new_instruction:
        return _invalid("empty new instruction", think)
    if len(new_instruction) > max_instruction_chars:
        return _invalid(f"new instruction longer than {max_instruction_chars} characters", think)
    if normalize_instruction(new_instruction) == normalize_instruction(instruction):
        return _invalid("new instruction repeats the original", think)
    return ReflectionCheck(tag, think, new_instruction, "")


def score_hint(scores: Scores) -> str | None:
    """A judge's scores as the reflector's non-binding hint; None when they were unparseable."""
    dims = (scores.following, scores.quality, scores.preservation)
    if scores.overall is None or any(d is None for d in dims):
        return None
    parts = ", ".join(f"{n} {d:g}" for n, d in zip(scores.dimension_names, dims, strict=True))
    return f"overall {scores.overall:.2f} ({parts})"
