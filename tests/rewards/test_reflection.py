"""Golden and property tests of the reflector's validator, and of its prompts."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards.reflection import (
    MAX_INSTRUCTION_CHARS,
    describe_target_prompt,
    normalize_instruction,
    reflect_prompt,
    retry_note,
    score_hint,
    validate_reflection,
)
from rewards.types import ParseStatus, ReflectionTag, Scores

SUCCESS, FAILED = ReflectionTag.SUCCESS, ReflectionTag.FAILED
REFLECTION, INVALID = ReflectionTag.REFLECTION, ReflectionTag.INVALID
ORIGINAL = "Make the sky blue and add a red kite"

# (answer, tag, think, new instruction, a phrase of the reason)
GOLDEN: list[tuple[str, ReflectionTag, str | None, str | None, str]] = [
    # --- valid answers -------------------------------------------------------------------
    ("<#Think> The sky is blue and the kite is there. <#Success>",
     SUCCESS, "The sky is blue and the kite is there.", None, ""),
    ("<#Think> The whole street was repainted. <#Failed>",
     FAILED, "The whole street was repainted.", None, ""),
    ("<#Think> The sky is blue; no kite yet. <#Reflection> add a red kite in the sky",
     REFLECTION, "The sky is blue; no kite yet.", "add a red kite in the sky", ""),
    ("\n\n  <#Think> fine <#Success>  \n", SUCCESS, "fine", None, ""),
    ("<#Think>\nThe sky is blue.\nThe kite is red.\n<#Success>",
     SUCCESS, "The sky is blue.\nThe kite is red.", None, ""),
    ('<#Think> no kite <#Reflection> "add a red kite"',
     REFLECTION, "no kite", "add a red kite", ""),
    ("<#Think> no kite <#Reflection> “add a red kite”",
     REFLECTION, "no kite", "add a red kite", ""),
    ("<#Think> no kite <#Reflection>\n  add a red\n kite  \n",
     REFLECTION, "no kite", "add a red kite", ""),
    ("<#Think>ok<#Success>", SUCCESS, "ok", None, ""),
    ("<#Think> sky still grey <#Reflection> Make the sky blue and add a red kite, larger",
     REFLECTION, "sky still grey", "Make the sky blue and add a red kite, larger", ""),
    ("<#Think> the kite <is> missing <#Reflection> add a red kite",
     REFLECTION, "the kite <is> missing", "add a red kite", ""),
    # --- text before <#Think>, missing or doubled tags -------------------------------------
    ("", INVALID, None, None, "empty answer"),
    ("   \n ", INVALID, None, None, "empty answer"),
    ("Sure! <#Think> done <#Success>", INVALID, None, None, "does not start with <#Think>"),
    ("```\n<#Think> done <#Success>\n```", INVALID, None, None, "does not start with <#Think>"),
    ("<#Success>", INVALID, None, None, "does not start with <#Think>"),
    ("<#Success> <#Think> done", INVALID, None, None, "does not start with <#Think>"),
    ("<#think> done <#Success>", INVALID, None, None, "does not start with <#Think>"),
    ("The edit looks good.", INVALID, None, None, "does not start with <#Think>"),
    ("<#Think> a <#Think> b <#Success>", INVALID, None, None, "2 <#Think> tags"),
    ("<#Think> a <#Reflection> add a kite <#Think>", INVALID, None, None, "2 <#Think> tags"),
    ("<#Think> done <#Success> <#Failed>", INVALID, None, None, "2 ending tags"),
    ("<#Think> done <#Success><#Success>", INVALID, None, None, "2 ending tags"),
    ("<#Think> a <#Reflection> add a kite <#Reflection> add a bird",
     INVALID, None, None, "2 ending tags"),
    ("<#Think> a <#Success> <#Reflection> add a kite", INVALID, None, None, "2 ending tags"),
    ("<#Think> the sky is blue", INVALID, None, None, "0 ending tags"),
    ("<#Think> done <# Success>", INVALID, None, None, "0 ending tags"),
    ("<#Think> done <#success>", INVALID, None, None, "unknown tag <#success>"),
    ("<#Think> done <#Answer> <#Success>", INVALID, None, None, "unknown tag <#Answer>"),
    ("<#Think> <#Success>", INVALID, None, None, "empty think part"),
    # --- after the ending tag -----------------------------------------------------------
    ("<#Think> done <#Success> The kite looks great.",
     INVALID, "done", None, "text after <#Success>"),
    ("<#Think> broken <#Failed> try again", INVALID, "broken", None, "text after <#Failed>"),
    ("<#Think> no kite <#Reflection>", INVALID, "no kite", None, "empty new instruction"),
    ("<#Think> no kite <#Reflection>   \n ", INVALID, "no kite", None, "empty new instruction"),
    ('<#Think> no kite <#Reflection> ""', INVALID, "no kite", None, "empty new instruction"),
    (f"<#Think> no kite <#Reflection> {ORIGINAL}",
     INVALID, "no kite", None, "repeats the original"),
    ("<#Think> no kite <#Reflection>   make the SKY blue and add a red   kite. ",
     INVALID, "no kite", None, "repeats the original"),
    (f'<#Think> no kite <#Reflection> "{ORIGINAL}!"',
     INVALID, "no kite", None, "repeats the original"),
    ("<#Think> no kite <#Reflection> " + "add a kite " * 200,
     INVALID, "no kite", None, f"longer than {MAX_INSTRUCTION_CHARS}"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "tag", "think", "new_instruction", "reason"), GOLDEN)
def test_golden_answers(
    text: str, tag: ReflectionTag, think: str | None, new_instruction: str | None, reason: str
) -> None:
    check = validate_reflection(text, ORIGINAL)
    assert check.tag == tag, check.reason
    assert check.think == think
    assert check.new_instruction == new_instruction
    assert reason in check.reason
    assert bool(check.reason) == (tag == INVALID)


def test_golden_set_is_large_enough() -> None:
    assert len(GOLDEN) >= 30
    assert sum(tag == INVALID for _, tag, _, _, _ in GOLDEN) >= 20


def test_normalize_instruction() -> None:
    assert normalize_instruction("  Make the  SKY blue. ") == "make the sky blue"
    assert normalize_instruction('"Add a kite!"') == "add a kite"
    assert normalize_instruction("add a kite") != normalize_instruction("add two kites")


TAG_PARTS = ["<#Think>", "<#Success>", "<#Failed>", "<#Reflection>", "<#think>", "<#X>", "<#", ">"]
WORDS = [" ", "\n", "add a red kite", ORIGINAL, '"', "done", ".", "make the sky blue"]


def _check_consistent(text: str) -> None:
    check = validate_reflection(text, ORIGINAL)
    if check.tag == INVALID:
        assert check.reason and check.new_instruction is None
        return
    assert check.reason == "" and check.think
    assert text.strip().startswith("<#Think>")
    if check.tag == REFLECTION:
        assert check.new_instruction
        assert normalize_instruction(check.new_instruction) != normalize_instruction(ORIGINAL)
    else:
        assert check.new_instruction is None


@settings(max_examples=300, deadline=None)
@given(text=st.text())
def test_any_string_is_valid_or_invalid_never_an_exception(text: str) -> None:
    _check_consistent(text)


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.sampled_from(TAG_PARTS + WORDS), max_size=12))
def test_near_miss_answers_are_judged_consistently(parts: list[str]) -> None:
    _check_consistent("".join(parts))


def test_prompts_carry_the_protocol() -> None:
    describe = describe_target_prompt("add a red kite")
    assert '"add a red kite"' in describe and "Describe" in describe
    prompt = reflect_prompt("add a red kite", "A red kite flies in a blue sky.")
    for needed in ("<#Think>", "<#Success>", "<#Failed>", "<#Reflection>", "A red kite flies"):
        assert needed in prompt
    assert "earlier judge" not in prompt
    hinted = reflect_prompt("add a kite", "", hint="overall 3.00", retry_note=retry_note("x"))
    assert "overall 3.00 (a hint only" in hinted
    assert "(no description was produced)" in hinted
    assert hinted.endswith(retry_note("x")) and "rejected (x)" in retry_note("x")


def test_score_hint() -> None:
    names = ("Prompt Compliance", "Visual Naturalness", "Physical & Detail Integrity")
    scores = Scores(4.0, 3.0, 2.0, 3.0, names, ParseStatus.OK, "", 0.1, "m")
    assert score_hint(scores) == (
        "overall 3.00 (Prompt Compliance 4, Visual Naturalness 3, Physical & Detail Integrity 2)"
    )
    unparseable = Scores(None, None, None, None, names, ParseStatus.UNPARSEABLE, "?", 0.1, "m")
    assert score_hint(unparseable) is None
