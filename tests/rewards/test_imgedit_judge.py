"""The ImgEdit judge on the tiny Qwen2.5-VL, end to end on CPU through the real loading path."""

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from rewards.imgedit_judge import ImgEditJudge, expected_score, expected_values, token_at
from rewards.parsing import parse_scores
from rewards.prompts import DIMENSIONS
from rewards.tiny import build_tiny_qwen_vl
from rewards.types import JudgeItem, ParseStatus
from rewards.verdict import VerdictReason, decide_verdict, image_change
from rewards.vlm import (
    Generation,
    ImageOnlyQwenVLProcessor,
    PixelBounds,
    VisionLanguageModel,
    load_vision_language_model,
)
from store.taxonomy import EditType, Verdict
from tests.fixtures.judges import TINY_BOUNDS, script_answers

RED = Image.new("RGB", (64, 64), (200, 30, 30))
BLUE = Image.new("RGB", (64, 64), (30, 30, 200))
ANSWER = (
    "Brief reasoning: the cat is now a dog.\n"
    "Prompt Compliance: 4\nVisual Naturalness: 3\nPhysical & Detail Integrity: 4"
)


def item(edit_type: EditType = EditType.REPLACE, instruction: str = "replace the cat") -> JudgeItem:
    return JudgeItem(RED, BLUE, instruction, edit_type)


def judge(vlm: VisionLanguageModel, batch_size: int = 8, continuous: bool = False) -> ImgEditJudge:
    return ImgEditJudge(
        vlm, bounds=TINY_BOUNDS, max_new_tokens=12, batch_size=batch_size, continuous=continuous
    )


def test_tiny_checkpoint_loads_like_a_real_one(
    tiny_judge_dir: Path, tiny_vlm: VisionLanguageModel
) -> None:
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in tiny_judge_dir.iterdir()
    }
    assert isinstance(tiny_vlm.processor, ImageOnlyQwenVLProcessor)
    assert tiny_vlm.processor.tokenizer.padding_side == "left"
    assert tiny_vlm.model.dtype == torch.float32  # CPU: fp32 (bf16 is for GPUs)
    config = tiny_vlm.model.config
    assert config.text_config.num_hidden_layers == 2 and config.vision_config.depth == 2
    assert sum(p.numel() for p in tiny_vlm.model.parameters()) < 1_000_000
    tokenizer = tiny_vlm.processor.tokenizer
    for token in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>"):
        assert tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id
    assert tokenizer.tokenize("45") == ["4", "5"]  # digits are single tokens, as in Qwen2


def test_tiny_build_is_deterministic(tmp_path: Path, tiny_judge_dir: Path) -> None:
    again = build_tiny_qwen_vl(tmp_path / "again", seed=0)
    other = build_tiny_qwen_vl(tmp_path / "other", seed=1)
    same = (again / "model.safetensors").read_bytes()
    assert same == (tiny_judge_dir / "model.safetensors").read_bytes()
    assert (again / "tokenizer.json").read_text() == (tiny_judge_dir / "tokenizer.json").read_text()
    assert (other / "model.safetensors").read_bytes() != same


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a Qwen2.5-VL checkpoint"):
        load_vision_language_model(tmp_path)


def test_random_answers_are_unparseable_and_fail(tiny_vlm: VisionLanguageModel) -> None:
    items = [item(), item(EditType.EXTRACT), item(EditType.STYLE, "make it a watercolour")]
    first = judge(tiny_vlm).score(items)
    again = judge(tiny_vlm).score(items)
    assert [s.raw_output for s in first] == [s.raw_output for s in again]  # greedy: repeatable
    for scores, it in zip(first, items, strict=True):
        assert scores.status == ParseStatus.UNPARSEABLE
        assert scores.following is None and scores.overall is None
        assert scores.dimension_names == DIMENSIONS[it.edit_type]
        assert scores.detail and scores.model == tiny_vlm.name and scores.latency_s > 0
        decision = decide_verdict(
            scores, None, tries_left=2, change=image_change(it.source, it.edited)
        )
        assert (decision.verdict, decision.reason) == (Verdict.FAILED, VerdictReason.UNPARSEABLE)
    assert first[1].dimension_names == ("Object Identity", "Mask Precision", "Visual Quality")
    assert any(s.raw_output for s in first)  # the gibberish is kept, not dropped


def test_scripted_answer_is_parsed(
    monkeypatch: pytest.MonkeyPatch, tiny_vlm: VisionLanguageModel
) -> None:
    calls = script_answers(monkeypatch, tiny_vlm, [[ANSWER]])
    (scores,) = judge(tiny_vlm).score([item()])
    # Emitted (4, 3, 4): within the cap; overall (4 + 3 + 4) / 3 = 3.67.
    assert (scores.following, scores.quality, scores.preservation) == (4.0, 3.0, 4.0)
    assert scores.overall == pytest.approx(11 / 3)
    assert scores.status == ParseStatus.OK and scores.raw_output == ANSWER
    # One user turn: the prompt with the instruction, then two images.
    (kwargs,) = calls
    prompt = tiny_vlm.processor.tokenizer.decode(kwargs["input_ids"][0])
    assert '"replace the cat"' in prompt and "Prompt Compliance: <1-5>" in prompt
    assert prompt.index("replace the cat") < prompt.index("<|vision_start|>")
    assert prompt.count("<|vision_start|>") == 2


def test_extract_rates_one_image_and_bounds_apply(
    monkeypatch: pytest.MonkeyPatch, tiny_vlm: VisionLanguageModel
) -> None:
    answer = "Object Identity: 5\nMask Precision: 4\nVisual Quality: 4"
    calls = script_answers(monkeypatch, tiny_vlm, [[ANSWER, answer], [ANSWER]])
    pair, single = judge(tiny_vlm).score([item(), item(EditType.EXTRACT, "extract the mug")])
    assert pair.status == single.status == ParseStatus.OK
    # 64x64 under bounds of exactly 56*56 pixels -> 56x56 -> a 4x4 grid of 14-pixel patches.
    grids = calls[0]["image_grid_thw"].tolist()
    assert grids == [[1, 4, 4]] * 3  # source + edited for replace, edited only for extract
    # Batched with left padding: the shorter (extract) prompt is padded at the start.
    assert calls[0]["attention_mask"][1, 0] == 0 and calls[0]["attention_mask"][:, -1].all()
    larger = ImgEditJudge(tiny_vlm, bounds=PixelBounds(112 * 112, 112 * 112), max_new_tokens=4)
    larger.score([item()])
    assert calls[1]["image_grid_thw"].tolist() == [[1, 8, 8]] * 2  # 112x112 -> 8x8 patches


def test_batches_of_two_keep_order(
    monkeypatch: pytest.MonkeyPatch, tiny_vlm: VisionLanguageModel
) -> None:
    answers = [ANSWER.replace("Prompt Compliance: 4", f"Prompt Compliance: {n}") for n in (5, 4, 3)]
    calls = script_answers(monkeypatch, tiny_vlm, [answers[:2], answers[2:]])
    results = judge(tiny_vlm, batch_size=2).score([item(), item(), item()])
    assert [s.following for s in results] == [5.0, 4.0, 3.0]
    # (3, 3, 4): Physical & Detail Integrity 4 > 3 -> capped to 3.
    assert results[2].status == ParseStatus.CAPPED and results[2].preservation == 3.0
    assert [c["input_ids"].shape[0] for c in calls] == [2, 1]


def test_continuous_scores_from_digit_probabilities(
    monkeypatch: pytest.MonkeyPatch, tiny_vlm: VisionLanguageModel
) -> None:
    minus = -1e4
    digit_logits = [
        torch.tensor([minus, minus, minus, 0.0, 0.0]),  # P(4) = P(5) = 0.5 -> 4.5
        torch.tensor([minus, minus, 0.0, minus, minus]),  # P(3) = 1 -> 3.0
        torch.tensor([minus, minus, minus, minus, 0.0]),  # P(5) = 1 -> 5.0, capped to 4.5
    ]
    script_answers(monkeypatch, tiny_vlm, [[ANSWER]], digit_logits)
    (scores,) = judge(tiny_vlm, continuous=True).score([item()])
    assert (scores.following, scores.quality, scores.preservation) == pytest.approx((4.5, 3.0, 4.5))
    assert scores.overall == pytest.approx(4.0)  # (4.5 + 3 + 4.5) / 3
    # The integers (4, 3, 4) were within the cap; the expected values were not.
    assert scores.status == ParseStatus.CAPPED and "expected value" in scores.detail


def test_expected_score_and_token_lookup() -> None:
    assert expected_score(torch.zeros(5)) == pytest.approx(3.0)  # uniform over 1..5
    assert expected_score(torch.tensor([0.0, 0.0, 0.0, 100.0, 0.0])) == pytest.approx(4.0)
    # Tokens "Score", ":", " ", "4" end at 5, 6, 7, 8: the digit at offset 7 is token 3.
    assert token_at([5, 6, 7, 8], 7) == 3
    assert token_at([5, 6, 8], 6) == 2 and token_at([5, 6, 8], 7) is None  # shares a token


def test_bad_items_are_refused(tiny_vlm: VisionLanguageModel) -> None:
    with pytest.raises(ValueError, match=r"items\[0\].instruction is empty"):
        judge(tiny_vlm).score([item(instruction="  ")])
    with pytest.raises(ValueError, match="batch_size=0"):
        ImgEditJudge(tiny_vlm, batch_size=0)
    assert judge(tiny_vlm).score([]) == []


def test_expected_values_keep_the_integer_where_they_cannot_read_the_digit() -> None:
    text = "Prompt Compliance: 4\nVisual Naturalness: 3\nPhysical & Detail Integrity: 3"
    parsed = parse_scores(text, DIMENSIONS[EditType.REPLACE])
    assert parsed.offsets is not None
    first, second, third = parsed.offsets
    digit_ids = (11, 12, 13, 14, 15)
    # One token per character, except that the second digit shares a token with the space
    # before it (no end offset at `second`).
    ends = [i + 1 for i in range(len(text)) if i + 1 != second]
    starts = [0, *ends[:-1]]
    token_ids = tuple(
        digit_ids[int(text[s]) - 1] if e - s == 1 and text[s] in "12345" else 0
        for s, e in zip(starts, ends, strict=True)
    )
    logits = torch.zeros(len(token_ids), 5)  # uniform over 1..5 -> 3.0
    logits[token_at(ends, third)] = math.nan  # broken logits at the third digit
    generation = Generation(text, token_ids, logits)
    # First: uniform -> 3.0; second: shares a token -> keeps 3; third: NaN -> keeps 3.
    assert expected_values(parsed, generation, ends, digit_ids) == (3.0, 3.0, 3.0)
    logits[token_at(ends, first)] = torch.tensor([0.0, 0.0, 0.0, 100.0, 0.0])
    assert expected_values(parsed, generation, ends, digit_ids)[0] == pytest.approx(4.0)
