"""Golden and property tests of the score parser: realistic judge answers, good and bad."""

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards.parsing import cap_scores, parse_scores
from rewards.prompts import DIMENSIONS, dimension_names
from rewards.types import ParseStatus
from store.taxonomy import EditType

OK, CAPPED, BAD = ParseStatus.OK, ParseStatus.CAPPED, ParseStatus.UNPARSEABLE
R = EditType.REPLACE  # Prompt Compliance / Visual Naturalness / Physical & Detail Integrity

WELL_FORMED = (
    "Brief reasoning: The cat became a dog; lighting and fur look right.\n"
    "Prompt Compliance: 5\nVisual Naturalness: 4\nPhysical & Detail Integrity: 4"
)

# (answer, edit type, status, scores as emitted or None, a phrase of the detail)
GOLDEN: list[tuple[str, EditType, ParseStatus, tuple[int, int, int] | None, str]] = [
    # --- well-formed and the forms real models emit -------------------------------------
    (WELL_FORMED, R, OK, (5, 4, 4), ""),
    (
        "Brief reasoning:   dog added\nPrompt   Compliance :   4\n"
        "Visual Naturalness  :4\nPhysical & Detail Integrity:    3   ",
        R, OK, (4, 4, 3), "",
    ),
    (
        "prompt compliance: 4\nvisual naturalness: 3\nphysical & detail integrity: 3",
        R, OK, (4, 3, 3), "",
    ),
    (
        "PROMPT COMPLIANCE: 3\nVISUAL NATURALNESS: 3\nPHYSICAL & DETAIL INTEGRITY: 2",
        R, OK, (3, 3, 2), "",
    ),
    (
        "Prompt Compliance: 4.\nVisual Naturalness: 4.\nPhysical & Detail Integrity: 3.",
        R, OK, (4, 4, 3), "",
    ),
    (
        "Prompt Compliance: 4/5\nVisual Naturalness: 3/5\nPhysical & Detail Integrity: 3 / 5",
        R, OK, (4, 3, 3), "",
    ),
    (
        "Prompt Compliance: 5 out of 5\nVisual Naturalness: 4 out of 5\n"
        "Physical & Detail Integrity: 4 out of 5",
        R, OK, (5, 4, 4), "",
    ),
    (
        "Brief reasoning: dog replaces cat.\nScore 1: 4 (the dog is there)\n"
        "Score 2: 4 (natural fur)\nScore 3: 3 (the sofa lost detail)",
        R, OK, (4, 4, 3), "",
    ),
    (
        "Prompt Compliance: 4\nVisual Naturalness: 4\nPhysical & Detail Integrity: 4\n"
        "Brief reasoning: the reasoning may come after the scores too.",
        R, OK, (4, 4, 4), "",
    ),
    (
        "**Prompt Compliance**: 5\n**Visual Naturalness:** 4\n- Physical & Detail Integrity: 4",
        R, OK, (5, 4, 4), "",
    ),
    (
        "Prompt Compliance: 4\nVisual Naturalness: 4\nPhysical and Detail Integrity: 3",
        R, OK, (4, 4, 3), "",
    ),
    (
        "Prompt Compliance: 4, Visual Naturalness: 3, Physical & Detail Integrity: 3",
        R, OK, (4, 3, 3), "",
    ),
    (
        "Prompt Compliance (1-5): 3\nVisual Naturalness (1-5): 3\n"
        "Physical & Detail Integrity (1-5): 3",
        R, OK, (3, 3, 3), "",
    ),
    (
        "Prompt Compliance score: 5\nVisual Naturalness score: 5\n"
        "Physical & Detail Integrity score: 5",
        R, OK, (5, 5, 5), "",
    ),
    (
        "1. Prompt Compliance: 2\n2. Visual Naturalness: 2\n3. Physical & Detail Integrity: 1",
        R, OK, (2, 2, 1), "",
    ),
    (
        "Prompt Compliance：4\nVisual Naturalness：4\nPhysical & Detail Integrity：4",
        R, OK, (4, 4, 4), "",
    ),
    (
        "Prompt Compliance: 4.0\nVisual Naturalness: 3.0\nPhysical & Detail Integrity: 3",
        R, OK, (4, 3, 3), "",
    ),
    (
        "Prompt Compliance: 4\nVisual Naturalness: 4\nPhysical & Detail Integrity: 3\n"
        "Prompt Compliance: 4",  # the model repeats a line with the same value
        R, OK, (4, 4, 3), "",
    ),
    (
        "Prompt Compliance: 4\nVisual Naturalness: 3\nPhysical & Detail Integrity: 3\n"
        "Overall: 3",  # a line that is no dimension is ignored, not used
        R, OK, (4, 3, 3), "",
    ),
    (
        "Brief reasoning: the mug is cut out.\nObject Identity: 5\nMask Precision: 4\n"
        "Visual Quality: 4",
        EditType.EXTRACT, OK, (5, 4, 4), "",
    ),
    (
        "Style Fidelity: 4\nContent Preservation: 4\nRendering Quality: 3",
        EditType.STYLE, OK, (4, 4, 3), "",
    ),
    (
        "Action Fidelity: 3\nIdentity Preservation: 3\nVisual and Anatomical Coherence: 2",
        EditType.ACTION, OK, (3, 3, 2), "",
    ),
    (
        "Instruction Compliance: 4\nVisual Naturalness: 4\nPhysical Consistency & Fine Detail: 4",
        EditType.HYBRID, OK, (4, 4, 4), "",
    ),
    (
        "Instruction Compliance: 5\nVisual Seamlessness: 4\nPhysical Consistency: 4",
        EditType.BACKGROUND, OK, (5, 4, 4), "",
    ),
    (
        "Instruction Compliance: 4\nVisual Naturalness: 4\nContent Preservation: 5",
        EditType.OTHER, CAPPED, (4, 4, 5), "capped Content Preservation 5→4",
    ),
    # --- the cap (dimensions 2 and 3 not above dimension 1) -----------------------------
    (
        "Prompt Compliance: 2\nVisual Naturalness: 4\nPhysical & Detail Integrity: 5",
        R, CAPPED, (2, 4, 5), "capped Visual Naturalness 4→2, Physical & Detail Integrity 5→2",
    ),
    (
        "Prompt Compliance: 1\nVisual Naturalness: 5\nPhysical & Detail Integrity: 1",
        R, CAPPED, (1, 5, 1), "capped Visual Naturalness 5→1",
    ),
    # --- missing, out of range, not a score ---------------------------------------------
    (
        "Prompt Compliance: 4\nVisual Naturalness: 4",
        R, BAD, None, "missing Physical & Detail Integrity",
    ),
    (
        "Prompt Compliance: 4\nVisual Naturalness: 4\nPhysical & Detail Integrity:",
        R, BAD, None, "missing Physical & Detail Integrity",  # cut off by the token limit
    ),
    (
        "Prompt Compliance: 6\nVisual Naturalness: 4\nPhysical & Detail Integrity: 4",
        R, BAD, None, "Prompt Compliance: 6 is outside 1-5",
    ),
    (
        "Prompt Compliance: 0\nVisual Naturalness: 0\nPhysical & Detail Integrity: 0",
        R, BAD, None, "is outside 1-5",
    ),
    (
        "Prompt Compliance: -1\nVisual Naturalness: 1\nPhysical & Detail Integrity: 1",
        R, BAD, None, "-1 is outside 1-5",
    ),
    (
        "Prompt Compliance: 45\nVisual Naturalness: 4\nPhysical & Detail Integrity: 4",
        R, BAD, None, "45 is outside 1-5",
    ),
    (
        "Prompt Compliance: 3.5\nVisual Naturalness: 3\nPhysical & Detail Integrity: 3",
        R, BAD, None, "3.5 is not an integer",
    ),
    (
        "Prompt Compliance: 8/10\nVisual Naturalness: 7/10\nPhysical & Detail Integrity: 7/10",
        R, BAD, None, "8/10 is not on the 1-5 scale",
    ),
    (
        "Prompt Compliance: high\nVisual Naturalness: good\nPhysical & Detail Integrity: fine",
        R, BAD, None, "missing Prompt Compliance",
    ),
    ("4\n3\n3", R, BAD, None, "missing"),
    (
        "Prompt Compliance: ٤\nVisual Naturalness: ٤\nPhysical & Detail Integrity: ٤",
        R, BAD, None, "missing",  # non-ASCII digits are not read as scores
    ),
    (
        "Prompt Compliance: 4\nVisual Naturalness: 4\nPhysical & Detail Integrity: 3\n"
        "Prompt Compliance: 2",
        R, BAD, None, "two different scores (4 and 2)",
    ),
    (
        "Prompt Compliance: 4\nScore 2: 4\nScore 3: 3\nScore 4: 2",
        R, BAD, None, "'Score 4'",
    ),
    # --- labels of another edit type -----------------------------------------------------
    (
        "Style Fidelity: 4\nContent Preservation: 4\nRendering Quality: 4",
        R, BAD, None, "'Style Fidelity', not a dimension of this type",
    ),
    (
        WELL_FORMED + "\nStyle Fidelity: 4",
        R, BAD, None, "'Style Fidelity'",
    ),
    (
        "Instruction Compliance: 4\nVisual Naturalness: 4\nPhysical Consistency: 4",
        EditType.HYBRID, BAD, None, "'Physical Consistency', not a dimension",
    ),
    (
        "Instruction Compliance: 4\nVisual Seamlessness: 4\nPhysical Consistency & Fine Detail: 4",
        EditType.BACKGROUND, BAD, None, "'Physical Consistency & Fine Detail'",
    ),
    (WELL_FORMED, EditType.EXTRACT, BAD, None, "'Prompt Compliance'"),
    # --- empty, echo, huge ---------------------------------------------------------------
    ("", R, BAD, None, "empty output"),
    ("  \n\t ", R, BAD, None, "empty output"),
    (
        "Answer in exactly this format:\nBrief reasoning: <at most 20 words>\n"
        "Prompt Compliance: <1-5>\nVisual Naturalness: <1-5>\nPhysical & Detail Integrity: <1-5>",
        R, BAD, None, "missing",  # the prompt's format echoed back, no scores
    ),
    ("Brief reasoning: " + "the dog " * 50_000 + "\n" + WELL_FORMED, R, OK, (5, 4, 4), ""),
    ("ab" * 500_000, R, BAD, None, "missing"),
    ("Prompt Compliance" + " " * 200_000 + ":", R, BAD, None, "missing"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "edit_type", "status", "emitted", "detail"), GOLDEN)
def test_golden_answers(
    text: str,
    edit_type: EditType,
    status: ParseStatus,
    emitted: tuple[int, int, int] | None,
    detail: str,
) -> None:
    parsed = parse_scores(text, dimension_names(edit_type))
    assert parsed.status == status, parsed.detail
    assert parsed.emitted == emitted
    assert detail in parsed.detail
    if emitted is None:
        assert parsed.values is None and parsed.offsets is None
    else:
        # The cap lowers 2 and 3 to the first; nothing else changes.
        first = float(emitted[0])
        assert parsed.values == (first, min(emitted[1], first), min(emitted[2], first))
        assert parsed.offsets is not None
        for offset, value in zip(parsed.offsets, emitted, strict=True):
            assert text[offset] == str(value)  # each score points at the digit the judge wrote


def test_golden_set_is_large_enough() -> None:
    assert len(GOLDEN) >= 30
    assert sum(status == BAD for _, _, status, _, _ in GOLDEN) >= 15


def test_adversarial_whitespace_is_fast() -> None:
    # Possessive quantifiers: a label followed by a huge run of blanks must not backtrack.
    text = ("Visual Naturalness" + " \t" * 100_000 + "x\n") * 3
    began = time.perf_counter()
    assert parse_scores(text, dimension_names(R)).status == BAD
    assert time.perf_counter() - began < 5  # quadratic backtracking would take minutes


def test_cap_scores() -> None:
    assert cap_scores((3.0, 4.0, 2.0)) == ((3.0, 3.0, 2.0), (1,))
    assert cap_scores((2.5, 3.0, 5.0)) == ((2.5, 2.5, 2.5), (1, 2))
    assert cap_scores((5.0, 5.0, 5.0)) == ((5.0, 5.0, 5.0), ())


FRAGMENTS = [
    *{name for names in DIMENSIONS.values() for name in names},
    "Score 1", "Score 2", "Score 3", "Score 7", "Brief reasoning", "Overall",
    ":", "：", " ", "  ", "\n", "**", "-", "&", "and", "/", "/5", "/10", "out of 5",
    "0", "1", "2", "3", "4", "5", "6", "9", "4.", "4.0", "3.5", "-1", "+4", "45", "٤",
    "(", ")", "(1-5)", "score", "x", "the dog", "\t",
]  # fmt: skip


def _check_honest(text: str, edit_type: EditType) -> None:
    parsed = parse_scores(text, dimension_names(edit_type))
    assert parsed.status in set(ParseStatus)
    if parsed.status == BAD:
        assert parsed.values is None and parsed.emitted is None and parsed.detail
        return
    assert parsed.values is not None and parsed.emitted is not None and parsed.offsets is not None
    first, second, third = parsed.values
    assert all(1 <= v <= 5 for v in parsed.values)
    assert second <= first and third <= first
    for offset, value in zip(parsed.offsets, parsed.emitted, strict=True):
        assert text[offset] == str(value)  # never a score that is not in the text


@settings(max_examples=300, deadline=None)
@given(text=st.text(), edit_type=st.sampled_from(list(EditType)))
def test_any_string_parses_or_is_unparseable(text: str, edit_type: EditType) -> None:
    _check_honest(text, edit_type)


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.sampled_from(FRAGMENTS), max_size=40),
    edit_type=st.sampled_from(list(EditType)),
)
def test_near_miss_answers_parse_or_are_unparseable(parts: list[str], edit_type: EditType) -> None:
    _check_honest("".join(parts), edit_type)
