"""The ReasonEdit reflector on the tiny Qwen2.5-VL, end to end on CPU."""

import pytest
from PIL import Image

from rewards.reflector import ReasonEditReflector
from rewards.types import JudgeItem, ReflectionTag
from rewards.vlm import VisionLanguageModel
from store.taxonomy import EditType
from tests.fixtures.judges import TINY_BOUNDS, script_answers

SOURCE = Image.new("RGB", (64, 64), (120, 120, 120))
EDITED = Image.new("RGB", (64, 64), (40, 90, 220))
INSTRUCTION = "make the sky blue and add a red kite"
DESCRIPTION = "A blue sky with a red kite above the same hill."


def item(instruction: str = INSTRUCTION) -> JudgeItem:
    return JudgeItem(SOURCE, EDITED, instruction, EditType.HYBRID)


def reflector(
    vlm: VisionLanguageModel, retries: int = 1, batch_size: int = 8
) -> ReasonEditReflector:
    return ReasonEditReflector(
        vlm, bounds=TINY_BOUNDS, max_new_tokens=12, retries=retries, batch_size=batch_size
    )


def test_random_answers_are_invalid_after_bounded_retries(tiny_vlm: VisionLanguageModel) -> None:
    (once,) = reflector(tiny_vlm, retries=0).reflect([item()])
    (twice,) = reflector(tiny_vlm, retries=1).reflect([item()])
    for result, tries in ((once, 1), (twice, 2)):
        assert result.tag == ReflectionTag.INVALID and result.tries == tries
        assert result.new_instruction is None and result.detail
        assert isinstance(result.raw_output, str) and isinstance(result.target_description, str)
        assert result.model == tiny_vlm.name and result.latency_s > 0


def test_protocol_two_steps_and_the_answer(
    monkeypatch: pytest.MonkeyPatch, tiny_vlm: VisionLanguageModel
) -> None:
    answer = "<#Think> The sky is blue but there is no kite. <#Reflection> add a red kite"
    calls = script_answers(monkeypatch, tiny_vlm, [[DESCRIPTION], [answer]])
    (result,) = reflector(tiny_vlm).reflect([item()], hints=["overall 3.00 (...)"])
    assert result.tag == ReflectionTag.REFLECTION
    assert result.new_instruction == "add a red kite"
    assert result.think == "The sky is blue but there is no kite."
    assert result.target_description == DESCRIPTION
    assert result.raw_output == answer and result.tries == 1 and result.detail == ""
    decode = tiny_vlm.processor.tokenizer.decode
    describe, judge = (decode(c["input_ids"][0]) for c in calls)
    # Step 1 sees the source and the instruction; step 2 the edited image and the description.
    assert INSTRUCTION in describe and "Describe" in describe
    assert DESCRIPTION in judge and "overall 3.00 (...) (a hint only" in judge
    assert describe.count("<|vision_start|>") == judge.count("<|vision_start|>") == 1


def test_invalid_answer_is_retried_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, tiny_vlm: VisionLanguageModel
) -> None:
    calls = script_answers(
        monkeypatch,
        tiny_vlm,
        [
            [DESCRIPTION, DESCRIPTION],
            ["Sure! <#Think> all done <#Success>", "<#Think> ruined <#Failed>"],
            ["<#Think> all done <#Success>"],  # only the invalid one is asked again
        ],
    )
    first, second = reflector(tiny_vlm).reflect([item(), item()])
    assert (first.tag, first.tries, first.think) == (ReflectionTag.SUCCESS, 2, "all done")
    assert (second.tag, second.tries) == (ReflectionTag.FAILED, 1)
    retry_prompt = tiny_vlm.processor.tokenizer.decode(calls[2]["input_ids"][0])
    assert "rejected (does not start with <#Think>)" in retry_prompt


def test_retries_are_bounded(monkeypatch: pytest.MonkeyPatch, tiny_vlm: VisionLanguageModel):
    unchanged = f"<#Think> no kite <#Reflection> {INSTRUCTION.upper()}."
    calls = script_answers(
        monkeypatch, tiny_vlm, [[DESCRIPTION], [unchanged], [unchanged], [unchanged]]
    )
    (result,) = reflector(tiny_vlm, retries=2).reflect([item()])
    assert result.tag == ReflectionTag.INVALID and result.tries == 3 and len(calls) == 4
    assert result.detail == "new instruction repeats the original"
    assert result.raw_output == unchanged and result.think == "no kite"


def test_batches_and_input_checks(
    monkeypatch: pytest.MonkeyPatch, tiny_vlm: VisionLanguageModel
) -> None:
    script_answers(
        monkeypatch,
        tiny_vlm,
        [["d1", "d2"], ["<#Think> a <#Success>", "<#Think> b <#Failed>"], ["d3"],
         ["<#Think> c <#Reflection> add a kite"]],
    )  # fmt: skip
    results = reflector(tiny_vlm, batch_size=2).reflect([item(), item(), item()])
    assert [r.tag for r in results] == [
        ReflectionTag.SUCCESS, ReflectionTag.FAILED, ReflectionTag.REFLECTION,
    ]  # fmt: skip
    assert [r.target_description for r in results] == ["d1", "d2", "d3"]
    with pytest.raises(ValueError, match="len\\(hints\\)=1"):
        reflector(tiny_vlm).reflect([item(), item()], hints=["x"])
    with pytest.raises(ValueError, match="retries=-1"):
        reflector(tiny_vlm, retries=-1)
