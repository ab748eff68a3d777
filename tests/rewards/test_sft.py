"""TRL fine-tuning of the tiny Qwen2.5-VL: full and LoRA both move the weights, and the collator
trains on the answer alone, with the prompt exactly as generation renders it."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from rewards.imgedit_judge import judge_turn
from rewards.prompts import editloop_prompts
from rewards.sft import IGNORE, ChatCollator, SFTOptions, train_sft
from rewards.types import JudgeItem
from rewards.vlm import (
    PixelBounds,
    Turn,
    VisionLanguageModel,
    chat_prompt,
    load_vision_language_model,
)
from store.taxonomy import EditType

BOUNDS = PixelBounds(min_pixels=28 * 28, max_pixels=56 * 56)
ANSWER = (
    "Brief reasoning: done\nPrompt Compliance: 4\nVisual Naturalness: 3\n"
    "Physical & Detail Integrity: 3"
)


def rows(n: int = 2) -> list[dict]:
    out = []
    for i in range(n):
        source = Image.new("RGB", (40, 40), (10 * i, 80, 160))
        edited = Image.new("RGB", (40, 40), (200, 10 * i, 30))
        turn = judge_turn(
            JudgeItem(source, edited, f"make it red {i}", EditType.REPLACE), editloop_prompts()
        )
        out.append(
            {
                "prompt": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": turn.text},
                            {"type": "image"},
                            {"type": "image"},
                        ],
                    }
                ],
                "completion": [
                    {"role": "assistant", "content": [{"type": "text", "text": ANSWER}]}
                ],
                "images": list(turn.images),
            }
        )
    return out


def test_the_collator_renders_prompts_as_generation_and_labels_only_the_answer(
    tiny_vlm: VisionLanguageModel,
) -> None:
    collator = ChatCollator(tiny_vlm.processor, BOUNDS)
    (row,) = rows(1)
    turn = Turn(row["prompt"][0]["content"][0]["text"], tuple(row["images"]))
    assert collator.prompt_text(row) == chat_prompt(tiny_vlm.processor, turn)
    batch = collator([row])
    labelled = batch["labels"][0][batch["labels"][0] != IGNORE].tolist()
    tokenizer = tiny_vlm.processor.tokenizer
    assert tokenizer.decode(labelled, skip_special_tokens=False) == ANSWER + tokenizer.eos_token


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_sft_changes_the_weights_and_saves_a_loadable_model(
    tiny_judge_dir: Path, tmp_path: Path, lora: bool
) -> None:
    before = load_vision_language_model(tiny_judge_dir).model.state_dict()
    options = SFTOptions(
        lora=lora, lora_rank=4, max_steps=3, learning_rate=1e-2, gradient_checkpointing=False,
        bounds=BOUNDS,
    )  # fmt: skip
    result = train_sft(tiny_judge_dir, rows(), rows(1), tmp_path, options)
    after = load_vision_language_model(result.folder).model.state_dict()
    assert set(after) == set(before)
    # LoRA touches the attention projections only; full fine-tuning the MLPs too.
    q_proj = next(k for k in before if k.endswith("self_attn.q_proj.weight"))
    assert not torch.equal(before[q_proj], after[q_proj])
    mlp = next(k for k in before if k.endswith("mlp.down_proj.weight") and "visual" not in k)
    assert torch.equal(before[mlp], after[mlp]) == lora
    assert result.metrics["steps"] == 3 and result.metrics["eval_loss"] > 0
