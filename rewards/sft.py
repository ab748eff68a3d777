"""Supervised fine-tuning of a Qwen2.5-VL judge or reflector with TRL's `SFTTrainer`.

Rows are TRL's conversational prompt-completion format with images (`loop/training/judge_data.py`
builds them). The collator is editloop's own: TRL's default one renders prompts through the
processor's stock path, while this one renders them with `chat_prompt` and the same pixel bounds
as generation, so the model is trained on exactly the tokens it is asked with; the loss covers the
answer and its end-of-turn token only.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer

from rewards.vlm import (
    ImageOnlyQwenVLProcessor,
    PixelBounds,
    Turn,
    chat_prompt,
    images_kwargs,
    load_vision_language_model,
)

IGNORE = -100  # the label transformers' loss skips
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class SFTOptions:
    """How to fine-tune: full weights or LoRA (merged into the weights when saving)."""

    lora: bool = False
    lora_rank: int = 16
    max_steps: int = 100
    learning_rate: float = 1e-5
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = True
    bounds: PixelBounds = PixelBounds()
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("lora_rank", "max_steps", "batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected 1 or more")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate={self.learning_rate}: expected more than 0")


@dataclass
class ChatCollator:
    """Batches prompt-completion rows: prompts as generation renders them, labels on answers."""

    processor: ImageOnlyQwenVLProcessor
    bounds: PixelBounds

    def prompt_text(self, row: dict[str, Any]) -> str:
        """The row's prompt exactly as `generate` renders the same turn."""
        text = row["prompt"][0]["content"][0]["text"]
        return chat_prompt(self.processor, Turn(text, tuple(row["images"])))

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        eos = self.processor.tokenizer.eos_token
        prompts = [self.prompt_text(row) for row in rows]
        answers = [row["completion"][0]["content"][0]["text"] + eos for row in rows]
        kwargs = {"return_tensors": "pt", "images_kwargs": images_kwargs(self.bounds)}
        # The prompt's length in tokens depends on its images (one pad token per patch group).
        lengths = [
            self.processor(text=[p], images=row["images"] or None, **kwargs)["input_ids"].shape[1]
            for p, row in zip(prompts, rows, strict=True)
        ]
        images = [image for row in rows for image in row["images"]]
        batch = self.processor(
            text=[p + a for p, a in zip(prompts, answers, strict=True)],
            images=images or None,
            padding=True,
            padding_side="right",
            **kwargs,
        )
        labels = batch["input_ids"].clone()
        for i, length in enumerate(lengths):
            labels[i, :length] = IGNORE
        labels[batch["attention_mask"] == 0] = IGNORE
        batch["labels"] = labels
        return dict(batch)


@dataclass(frozen=True)
class SFTResult:
    """The saved checkpoint folder and the final metrics."""

    folder: Path
    metrics: dict[str, float]


def train_sft(
    model_dir: Path,
    train_rows: list[dict[str, Any]],
    eval_rows: list[dict[str, Any]],
    work_dir: Path,
    options: SFTOptions,
) -> SFTResult:
    """Fine-tune the checkpoint in `model_dir` on `train_rows`; the full weights (LoRA merged)
    and the processor are saved to `work_dir/model`, TRL's own files under `work_dir/trainer`."""
    if not train_rows:
        raise ValueError("no training examples")
    vlm = load_vision_language_model(model_dir, options.device)
    on_gpu = vlm.device.type == "cuda"
    config = SFTConfig(
        output_dir=str(work_dir / "trainer"),
        max_steps=options.max_steps,
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=options.batch_size,
        gradient_accumulation_steps=options.gradient_accumulation_steps,
        activation_checkpointing=options.gradient_checkpointing,
        learning_rate=options.learning_rate,
        max_length=None,  # the collator does not truncate: cutting image tokens breaks the model
        bf16=on_gpu,
        use_cpu=not on_gpu,
        seed=options.seed,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    peft_config = None
    if options.lora:
        peft_config = LoraConfig(
            r=options.lora_rank,
            lora_alpha=2 * options.lora_rank,
            target_modules=list(LORA_TARGETS),
            task_type="CAUSAL_LM",
        )
    trainer = SFTTrainer(
        model=vlm.model,
        args=config,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=vlm.processor,
        data_collator=ChatCollator(vlm.processor, options.bounds),
        peft_config=peft_config,
    )
    result = trainer.train()
    metrics = {"train_loss": float(result.training_loss), "steps": float(result.global_step)}
    if eval_rows:
        metrics["eval_loss"] = float(trainer.evaluate()["eval_loss"])
    model = trainer.model.merge_and_unload() if options.lora else trainer.model
    save_model(model, vlm.processor, work_dir / "model")
    return SFTResult(work_dir / "model", metrics)


def save_model(model: Any, processor: ImageOnlyQwenVLProcessor, folder: Path) -> None:
    """Save weights and processor as `load_vision_language_model` reads them."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    # Generation pads on the left; the saved processor is the stock one, as loading sets it.
    processor.save_pretrained(folder)
