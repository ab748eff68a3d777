"""Instructions of the shapes world: templates, phrasing operations as sentences, and parsing any
of them back (`parse_instruction`), plus a sentence describing a scene."""

import random
import re

from worlds.shapes.operations import check_operations
from worlds.shapes.types import (
    BACKGROUND_COLOURS,
    CELL_PHRASES,
    KINDS,
    SHAPE_COLOURS,
    Operation,
    OpKind,
    Scene,
)

# Slots: {colour} the shape's colour, {noun} its kind or "shape", {new} a shape colour,
# {background} a background colour. In every template the shape's current colour comes before
# the new one, so the order of the two colour words carries the meaning.
TEMPLATES: dict[OpKind, tuple[str, ...]] = {
    OpKind.RECOLOUR: (
        "make the {colour} {noun} {new}",
        "turn the {colour} {noun} {new}",
        "change the {colour} {noun} to {new}",
        "paint the {colour} {noun} {new}",
        "recolour the {colour} {noun} {new}",
    ),
    OpKind.REMOVE: (
        "remove the {colour} {noun}",
        "delete the {colour} {noun}",
        "erase the {colour} {noun}",
        "take away the {colour} {noun}",
        "get rid of the {colour} {noun}",
    ),
    OpKind.BACKGROUND: (
        "change the background to {background}",
        "make the background {background}",
        "set the background to {background}",
        "turn the background {background}",
        "replace the background with {background}",
        "give it a {background} background",
    ),
}
JOINERS: tuple[str, ...] = (" and ", " and then ", ", then ", ", and ")
_SEPARATORS = frozenset({"and", "then", ",", ";"})
_NOUNS = (*KINDS, "shape")
_SLOT_WORDS: dict[str, tuple[str, ...]] = {
    "{colour}": tuple(SHAPE_COLOURS),
    "{noun}": _NOUNS,
    "{new}": tuple(SHAPE_COLOURS),
    "{background}": tuple(BACKGROUND_COLOURS),
}


def _template_words() -> set[str]:
    words: set[str] = set()
    for templates in TEMPLATES.values():
        for template in templates:
            for word in template.split():
                words.update(_SLOT_WORDS.get(word, (word,)))
    return words


# Every word an instruction of this world can contain, separators aside (editors' vocabulary).
VOCABULARY: tuple[str, ...] = tuple(sorted(_template_words()))
MAX_CLAUSE_WORDS: int = max(len(t.split()) for ts in TEMPLATES.values() for t in ts)


def phrase_operation(operation: Operation, scene: Scene, rng: random.Random | None = None) -> str:
    """One clause for `operation` on `scene`: a random template and noun with `rng`, else the
    plain form (first template, the shape's kind), as the rule reflector phrases it."""
    templates = TEMPLATES[operation.kind]
    template = templates[0] if rng is None else rng.choice(templates)
    noun = "shape"
    if operation.kind is not OpKind.BACKGROUND:
        shape = scene.shape(str(operation.colour))
        if shape is None:
            raise ValueError(f"the scene has no {operation.colour} shape")
        # The kind is named two times in three: "the red shape" is the vaguer, rarer wording.
        noun = shape.kind if rng is None or rng.random() < 2 / 3 else "shape"
    return template.format(
        colour=operation.colour,
        noun=noun,
        new=operation.new_colour,
        background=operation.new_colour,
    )


def phrase_operations(
    operations: tuple[Operation, ...], scene: Scene, rng: random.Random | None = None
) -> str:
    """An instruction for the operations on `scene` (plain "A and B" without `rng`)."""
    clauses = [phrase_operation(op, scene, rng) for op in operations]
    instruction = clauses[0]
    for clause in clauses[1:]:
        instruction += (JOINERS[0] if rng is None else rng.choice(JOINERS)) + clause
    return instruction


def instruction_clauses(instruction: str) -> list[list[str]]:
    """Split an instruction into clauses of lower-case words ("and", "then", commas separate);
    other punctuation is ignored, e.g. "Make the red square blue, then remove the green circle."
    → [["make", "the", "red", "square", "blue"], ["remove", "the", "green", "circle"]]."""
    clauses: list[list[str]] = [[]]
    for token in re.findall(r"[a-z]+|[,;]", instruction.lower()):
        if token in _SEPARATORS:
            if clauses[-1]:
                clauses.append([])
        else:
            clauses[-1].append(token)
    return [clause for clause in clauses if clause]


def _match_clause(words: list[str]) -> tuple[Operation, str | None] | None:
    for kind, templates in TEMPLATES.items():
        for template in templates:
            pattern = template.split()
            if len(pattern) != len(words):
                continue
            slots: dict[str, str] = {}
            for slot, word in zip(pattern, words, strict=True):
                if slot in _SLOT_WORDS:
                    if word not in _SLOT_WORDS[slot]:
                        break
                    slots[slot] = word
                elif slot != word:
                    break
            else:
                if kind is OpKind.BACKGROUND:
                    return Operation(kind, new_colour=slots["{background}"]), None
                noun = slots["{noun}"]
                operation = Operation(kind, slots["{colour}"], slots.get("{new}"))
                return operation, (None if noun == "shape" else noun)
    return None


def parse_instruction(instruction: str, scene: Scene | None = None) -> tuple[Operation, ...]:
    """The operations of an instruction of this world; ValueError if it is not one. With `scene`,
    also check that they fit it (shapes by colour and named kind, `check_operations`)."""
    clauses = instruction_clauses(instruction)
    if not clauses:
        raise ValueError(f"instruction {instruction!r} has no words")
    operations = []
    for words in clauses:
        match = _match_clause(words)
        if match is None:
            raise ValueError(f"{' '.join(words)!r} is not an operation of the shapes world")
        operation, noun = match
        if scene is not None and noun is not None:
            shape = scene.shape(str(operation.colour))
            if shape is not None and shape.kind != noun:
                raise ValueError(f"the {operation.colour} shape is a {shape.kind}, not a {noun}")
        operations.append(operation)
    if scene is not None:
        check_operations(scene, tuple(operations))
    return tuple(operations)


def describe_scene(scene: Scene) -> str:
    """A sentence describing the scene, e.g. "a black background with a red square in the
    top-left corner and a green circle in the centre"."""
    if not scene.shapes:
        return f"a plain {scene.background} background with no shapes"
    parts = [f"a {s.colour} {s.kind} {CELL_PHRASES[s.cell]}" for s in scene.shapes]
    return f"a {scene.background} background with " + " and ".join(parts)
