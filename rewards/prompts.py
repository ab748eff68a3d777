"""Judge prompts per edit type: editloop's own, or the user's ImgEdit `prompts.json`.

Both kinds follow the structure docs/design.md describes for ImgEdit-Judge: the instruction
substituted for `<edit_prompt>`, three named 1-5 dimensions with a rubric line per level, the cap
sentence (dimensions 2 and 3 not above dimension 1) and the answer format `Brief reasoning: ...`
followed by one `<Dimension>: <1-5>` line per dimension. The wording of editloop's prompts is our
own; a judge fine-tuned on ImgEdit's exact text should be given that file (`load_imgedit_prompts`).
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from store.taxonomy import EditType, parse_edit_type

PLACEHOLDER = "<edit_prompt>"

# The dimension names ImgEdit-Judge uses, by edit type (docs/design.md's table). The first one is
# instruction following, the second and third quality / preservation in the type's own terms;
# `Scores.following/quality/preservation` take them in this order. `visual-reference` and `other`
# have no ImgEdit prompt: they get editloop's generic triple.
GENERIC_DIMENSIONS = ("Instruction Compliance", "Visual Naturalness", "Content Preservation")
DIMENSIONS: Mapping[EditType, tuple[str, str, str]] = MappingProxyType(
    {
        EditType.REPLACE: (
            "Prompt Compliance",
            "Visual Naturalness",
            "Physical & Detail Integrity",
        ),
        EditType.ADD: ("Prompt Compliance", "Visual Naturalness", "Physical & Detail Coherence"),
        EditType.ALTER: ("Prompt Compliance", "Visual Seamlessness", "Physical & Detail Fidelity"),
        EditType.REMOVE: (
            "Prompt Compliance",
            "Visual Naturalness",
            "Physical & Detail Integrity",
        ),
        EditType.STYLE: ("Style Fidelity", "Content Preservation", "Rendering Quality"),
        EditType.ACTION: (
            "Action Fidelity",
            "Identity Preservation",
            "Visual & Anatomical Coherence",
        ),
        EditType.EXTRACT: ("Object Identity", "Mask Precision", "Visual Quality"),
        EditType.BACKGROUND: (
            "Instruction Compliance",
            "Visual Seamlessness",
            "Physical Consistency",
        ),
        EditType.HYBRID: (
            "Instruction Compliance",
            "Visual Naturalness",
            "Physical Consistency & Fine Detail",
        ),
        EditType.VISUAL_REFERENCE: GENERIC_DIMENSIONS,
        EditType.OTHER: GENERIC_DIMENSIONS,
    }
)

# ImgEdit-Judge rates the extracted object alone (docs/design.md): one image instead of a pair.
SINGLE_IMAGE_TYPES = frozenset({EditType.EXTRACT})


def dimension_names(edit_type: EditType) -> tuple[str, str, str]:
    """The three dimension names the judge answers with for `edit_type`."""
    return DIMENSIONS[edit_type]


def image_count(edit_type: EditType) -> int:
    """How many images the judge sees for `edit_type`: 1 (edited only) or 2 (source, edited)."""
    return 1 if edit_type in SINGLE_IMAGE_TYPES else 2


@dataclass(frozen=True)
class Dimension:
    """One rated dimension: its name, what it asks, and the rubric line for scores 1..5."""

    name: str
    question: str
    levels: tuple[str, str, str, str, str]


_NATURALNESS = Dimension(
    "Visual Naturalness",
    "does the changed content look like it belongs in the scene?",
    (
        "collapsed image, pasted-on look or broken textures",
        "clearly artificial: wrong lighting, scale or perspective",
        "plausible at a glance, but seams or mismatched lighting are visible",
        "natural, with small flaws only on close inspection",
        "indistinguishable from a real image of the edited scene",
    ),
)
_DETAIL_INTEGRITY = Dimension(
    "Physical & Detail Integrity",
    "are shadows, reflections, occlusions and every region the instruction did not mention intact?",
    (
        "large unrequested changes or heavy artifacts outside the edit",
        "noticeable damage to surrounding details or physically wrong result",
        "surroundings mostly kept; some details lost or shadows wrong",
        "surroundings kept, tiny inconsistencies only",
        "everything not mentioned is unchanged and the physics are consistent",
    ),
)
_COMPLIANCE = Dimension(
    "Instruction Compliance",
    "does the edit do what the instruction asks, all of it and nothing else?",
    (
        "nothing that was asked is done, or something else is changed instead",
        "a small part of the request is done, or it is done wrongly",
        "the main change is done but parts of the request are missing or off",
        "the request is met with small deviations",
        "the request is met exactly and completely",
    ),
)

_RUBRICS: Mapping[EditType, tuple[Dimension, Dimension, Dimension]] = MappingProxyType(
    {
        EditType.REPLACE: (
            Dimension(
                "Prompt Compliance",
                "is the named object replaced by the requested one, and only that object?",
                (
                    "nothing is replaced, or the wrong object is changed",
                    "a replacement is attempted but the new object is wrong or unrecognisable",
                    "the right object is replaced but the new one misses requested attributes",
                    "the replacement matches the request with small deviations",
                    "exactly the requested object now stands where the old one was",
                ),
            ),
            _NATURALNESS,
            _DETAIL_INTEGRITY,
        ),
        EditType.ADD: (
            Dimension(
                "Prompt Compliance",
                "is the requested object added, with the requested attributes, count and place?",
                (
                    "nothing is added, or something unrelated is",
                    "an object is added but of the wrong kind or badly malformed",
                    "the right object is added but attributes, count or position are off",
                    "the addition matches the request with small deviations",
                    "exactly the requested object, attributes and placement",
                ),
            ),
            _NATURALNESS,
            Dimension(
                "Physical & Detail Coherence",
                "does the new object sit in the scene correctly (scale, contact, shadow, "
                "occlusion) while the rest of the image stays as it was?",
                (
                    "floating, wrongly scaled or cut object, or the scene around it is damaged",
                    "clear physical errors such as missing contact or a wrong shadow",
                    "roughly right, with visible errors of scale, shadow or occlusion",
                    "coherent, tiny inconsistencies only",
                    "physically coherent and the rest of the image is untouched",
                ),
            ),
        ),
        EditType.ALTER: (
            Dimension(
                "Prompt Compliance",
                "is the requested attribute (colour, material, size, shape, ...) changed as "
                "asked, on the right object?",
                (
                    "the attribute is unchanged, or another object is altered",
                    "a change is made but to the wrong attribute or value",
                    "the right attribute changes but only partly or to a different value",
                    "the change matches the request with small deviations",
                    "exactly the requested attribute change on exactly the named object",
                ),
            ),
            Dimension(
                "Visual Seamlessness",
                "does the altered region blend into the image without seams, halos or bleeding?",
                (
                    "the altered region is broken or the image has collapsed",
                    "hard seams, halos or colour bleeding into the surroundings",
                    "visible seams or bleeding in places",
                    "seamless apart from small flaws on close inspection",
                    "perfectly seamless",
                ),
            ),
            Dimension(
                "Physical & Detail Fidelity",
                "apart from the requested attribute, are the object's shape, texture and the rest "
                "of the image preserved?",
                (
                    "the object or the scene is largely redrawn or destroyed",
                    "shape or texture clearly lost, or other regions changed",
                    "the object is recognisable but some detail or texture is lost",
                    "details preserved, tiny losses only",
                    "every detail except the requested attribute is preserved",
                ),
            ),
        ),
        EditType.REMOVE: (
            Dimension(
                "Prompt Compliance",
                "is the named object gone, completely, and nothing else removed?",
                (
                    "the object is still there, or a different object is removed",
                    "partly removed, clear remnants remain",
                    "removed, but traces or a ghost outline are visible",
                    "removed, with faint traces on close inspection only",
                    "completely removed, with its shadow and reflection, no trace left",
                ),
            ),
            _NATURALNESS,
            _DETAIL_INTEGRITY,
        ),
        EditType.STYLE: (
            Dimension(
                "Style Fidelity",
                "does the whole image show the requested style (palette, strokes, texture)?",
                (
                    "no trace of the requested style, or a different style",
                    "a faint or wrong rendition of the style",
                    "the style is recognisable but inconsistent or partial",
                    "the style is clear across the image with small lapses",
                    "a faithful and consistent rendition of the requested style",
                ),
            ),
            Dimension(
                "Content Preservation",
                "are the layout, objects and identities of the original kept under the new style?",
                (
                    "the content is lost or replaced",
                    "main objects are changed, moved or missing",
                    "the scene is recognisable but several objects are altered",
                    "content kept, small details altered",
                    "every object, position and identity is kept",
                ),
            ),
            Dimension(
                "Rendering Quality",
                "is the stylised image clean, coherent and free of artifacts?",
                (
                    "collapsed or noisy image",
                    "strong artifacts or incoherent regions",
                    "acceptable with visible artifacts",
                    "clean with minor artifacts",
                    "clean, coherent, high-quality rendering",
                ),
            ),
        ),
        EditType.ACTION: (
            Dimension(
                "Action Fidelity",
                "does the subject now perform the requested action or pose?",
                (
                    "the pose is unchanged or unrelated to the request",
                    "a change of pose that does not read as the requested action",
                    "the action is recognisable but incomplete or awkward",
                    "the action is clear with small deviations",
                    "exactly the requested action, clearly readable",
                ),
            ),
            Dimension(
                "Identity Preservation",
                "is the subject still recognisably the same (face, body, clothing)?",
                (
                    "a different subject",
                    "identity largely lost: face or clothing clearly changed",
                    "recognisable, with noticeable changes to face or clothing",
                    "the same subject with small differences",
                    "identity, clothing and surroundings fully kept",
                ),
            ),
            Dimension(
                "Visual & Anatomical Coherence",
                "are anatomy and physics plausible (limbs, joints, contact with objects)?",
                (
                    "broken anatomy or collapsed image",
                    "clearly wrong limbs, extra or missing parts",
                    "plausible overall with visible anatomical errors",
                    "coherent, minor flaws (mild hand artifacts may be ignored)",
                    "anatomically and physically convincing",
                ),
            ),
        ),
        EditType.EXTRACT: (
            Dimension(
                "Object Identity",
                "is this image the requested object, complete and recognisable?",
                (
                    "a different object, or no object",
                    "the right kind of object but badly incomplete or distorted",
                    "the requested object with missing parts or wrong attributes",
                    "the requested object with small deviations",
                    "exactly the requested object, complete",
                ),
            ),
            Dimension(
                "Mask Precision",
                "is the object cleanly cut out: no leftover background, no missing parts, clean "
                "edges?",
                (
                    "mostly background, or the object is cut badly",
                    "large leftovers of background or large missing parts",
                    "some leftovers or ragged edges",
                    "clean cut-out with small edge flaws",
                    "a precise cut-out with clean edges",
                ),
            ),
            Dimension(
                "Visual Quality",
                "is the extracted object sharp and free of artifacts?",
                (
                    "unusable: collapsed or unreadable",
                    "heavy blur or artifacts",
                    "usable with visible blur or artifacts",
                    "sharp with minor artifacts",
                    "sharp and clean",
                ),
            ),
        ),
        EditType.BACKGROUND: (
            Dimension(
                "Instruction Compliance",
                "is the background changed to what the instruction asks?",
                (
                    "the background is unchanged or changed to something unrelated",
                    "the new background only loosely matches the request",
                    "the requested background with missing or wrong elements",
                    "the requested background with small deviations",
                    "exactly the requested background",
                ),
            ),
            Dimension(
                "Visual Seamlessness",
                "does the foreground sit in the new background without halos, cut-out edges or "
                "seams?",
                (
                    "obvious cut-and-paste or collapsed image",
                    "hard halos or jagged edges around the foreground",
                    "visible edge artifacts in places",
                    "seamless apart from small flaws on close inspection",
                    "perfectly seamless",
                ),
            ),
            Dimension(
                "Physical Consistency",
                "do lighting, perspective, scale and shadows of the unchanged foreground match "
                "the new background?",
                (
                    "the foreground is altered or physically impossible in the scene",
                    "clearly wrong lighting, perspective or scale",
                    "roughly consistent with visible mismatches",
                    "consistent, tiny mismatches only",
                    "fully consistent, and the foreground is untouched",
                ),
            ),
        ),
        EditType.HYBRID: (
            Dimension(
                "Instruction Compliance",
                "are all the changes this multi-part instruction asks for made?",
                (
                    "none of the requested changes is made",
                    "only a small part of the request is made",
                    "some of the requested changes are made, others are missing or wrong",
                    "all changes are made with small deviations",
                    "every requested change is made exactly",
                ),
            ),
            _NATURALNESS,
            Dimension(
                "Physical Consistency & Fine Detail",
                "are the physics consistent and the fine details, including every region the "
                "instruction did not mention, preserved?",
                (
                    "physically impossible result or destroyed details",
                    "clear physical errors or widespread detail loss",
                    "mostly consistent with visible errors or detail loss",
                    "consistent, tiny losses only",
                    "consistent physics and every detail kept",
                ),
            ),
        ),
        EditType.VISUAL_REFERENCE: (
            _COMPLIANCE,
            _NATURALNESS,
            Dimension(
                "Content Preservation",
                "is everything the instruction did not mention unchanged?",
                (
                    "the image is largely redrawn",
                    "large unrequested changes",
                    "some unrequested changes",
                    "unchanged apart from tiny differences",
                    "everything not mentioned is unchanged",
                ),
            ),
        ),
    }
)


def _rubric(edit_type: EditType) -> tuple[Dimension, Dimension, Dimension]:
    # `other` shares the generic rubric written for `visual-reference`.
    return _RUBRICS[EditType.VISUAL_REFERENCE if edit_type == EditType.OTHER else edit_type]


def editloop_prompt(edit_type: EditType) -> str:
    """editloop's own rating prompt for `edit_type`, with the `<edit_prompt>` placeholder."""
    dims = _rubric(edit_type)
    if edit_type in SINGLE_IMAGE_TYPES:
        images = "The image shows the object extracted from a photo by following this instruction:"
    else:
        images = (
            "The first image is the original; the second is the result of editing it with "
            "this instruction:"
        )
    lines = [
        f'You are an expert judge of image edits of type "{edit_type.value}".',
        images,
        f'"{PLACEHOLDER}"',
        "",
        "Rate the result on three criteria, each with an integer from 1 (worst) to 5 (best).",
    ]
    for number, dim in enumerate(dims, start=1):
        lines += ["", f"{number}. {dim.name}: {dim.question}"]
        lines += [f"{level}: {text}." for level, text in enumerate(dim.levels, start=1)]
    lines += [
        "",
        f"{dims[1].name} and {dims[2].name} must not be higher than {dims[0].name}: a result "
        "that does not do what was asked earns no credit for looking good.",
        "",
        "Answer in exactly this format and nothing else:",
        "Brief reasoning: <at most 20 words>",
        *(f"{dim.name}: <1-5>" for dim in dims),
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class JudgePrompts:
    """Rating prompts by edit type, each with the `<edit_prompt>` placeholder, and their origin."""

    templates: Mapping[EditType, str]
    origin: str


def editloop_prompts() -> JudgePrompts:
    """editloop's own prompts for every edit type."""
    return JudgePrompts(
        templates=MappingProxyType({t: editloop_prompt(t) for t in EditType}), origin="editloop"
    )


def load_imgedit_prompts(path: Path) -> JudgePrompts:
    """Read an ImgEdit `prompts.json` ({edit_type: prompt}); types it lacks get editloop's prompt.

    ImgEdit's names `adjust` and `compose` map to `alter` and `hybrid`. Raises `ValueError` on a
    file that is not such an object, an unknown type, a prompt without `<edit_prompt>`, or a prompt
    that does not name its type's three dimensions (every answer would then be unparseable).
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"prompts file {path}: cannot read it as JSON ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"prompts file {path}: expected a non-empty object {{edit_type: prompt}}")
    templates = {t: editloop_prompt(t) for t in EditType}
    for key, text in data.items():
        try:
            edit_type = parse_edit_type(key)
        except ValueError as exc:
            raise ValueError(f"prompts file {path}: {exc}") from None
        if not isinstance(text, str) or PLACEHOLDER not in text:
            raise ValueError(
                f"prompts file {path}: prompt {key!r} has no {PLACEHOLDER} placeholder"
            )
        missing = [n for n in DIMENSIONS[edit_type] if n.lower() not in text.lower()]
        if missing:
            raise ValueError(
                f"prompts file {path}: prompt {key!r} does not name the dimension(s) "
                f"{', '.join(missing)} that the score parser expects for {edit_type.value}"
            )
        templates[edit_type] = text
    return JudgePrompts(templates=MappingProxyType(templates), origin=str(path))


def judge_prompt(prompts: JudgePrompts, edit_type: EditType, instruction: str) -> str:
    """The rating prompt for one item: the type's template with the instruction substituted."""
    return prompts.templates[edit_type].replace(PLACEHOLDER, instruction)
