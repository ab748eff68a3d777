"""Qwen2.5-VL through transformers: loading a local checkpoint and batched greedy generation.

The one place that touches the model; the judge and the reflector build prompts and read answers,
and can share one loaded `VisionLanguageModel`.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.processing_utils import ProcessorMixin

IMAGE_TOKEN = "<|image_pad|>"
VIDEO_TOKEN = "<|video_pad|>"
# Qwen2/2.5-VL's chat and vision markers, as its tokenizers define them.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    IMAGE_TOKEN,
    VIDEO_TOKEN,
)


class ImageOnlyQwenVLProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL's processor without its video half, which needs torchvision (docs/design.md).

    `ProcessorMixin` derives the parts to load from `__init__`'s signature, so naming only the image
    processor and the tokenizer here makes `from_pretrained` work on tiny and real checkpoints
    alike; images and text go through the stock `Qwen2_5_VLProcessor` code.
    """

    def __init__(
        self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None
    ):
        self.image_token = IMAGE_TOKEN
        self.video_token = VIDEO_TOKEN
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.video_token_id = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


@dataclass(frozen=True)
class PixelBounds:
    """Area bounds (pixels) each image is resized into by the processor, keeping aspect ratio.

    The defaults are ImgEdit-Judge's recommended `min_pixels`/`max_pixels` (docs/design.md).
    """

    min_pixels: int = 1016064
    max_pixels: int = 1354752

    def __post_init__(self) -> None:
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(
                f"pixel bounds min={self.min_pixels}, max={self.max_pixels}: need 0 < min <= max"
            )


@dataclass(frozen=True)
class VisionLanguageModel:
    """A loaded Qwen2.5-VL: weights, processor and device; one instance can serve several roles."""

    model: Qwen2_5_VLForConditionalGeneration
    processor: ImageOnlyQwenVLProcessor
    device: torch.device
    name: str


def check_device(device: str) -> torch.device:
    """The torch device named `device`; ValueError when it is malformed or absent here."""
    try:
        torch_device = torch.device(device)
    except RuntimeError:
        raise ValueError(
            f"device={device!r} is not a torch device (cpu, cuda, cuda:1, ...)"
        ) from None
    if torch_device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r}: torch sees no CUDA GPU here; use --device cpu")
        if (torch_device.index or 0) >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise ValueError(f"device={device!r}: torch sees {count} GPU(s) (cuda:0..{count - 1})")
    return torch_device


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_vision_language_model(
    path: Path, device: str = "cpu", dtype: str = "auto"
) -> VisionLanguageModel:
    """Load a Qwen2.5-VL checkpoint folder (never the hub) in `dtype` (auto: bf16 on GPU, fp32 on
    CPU), shard by shard straight onto `device`: no full copy in host memory.

    Raises `FileNotFoundError` when `path` holds no checkpoint.
    """
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a Qwen2.5-VL checkpoint folder (no config.json)")
    torch_device = check_device(device)
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if torch_device.type == "cuda" else torch.float32
    elif dtype in _DTYPES:
        torch_dtype = _DTYPES[dtype]
    else:
        raise ValueError(f"dtype={dtype!r}: choose auto or one of {sorted(_DTYPES)}")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        path, dtype=torch_dtype, device_map=str(torch_device), local_files_only=True
    ).eval()
    processor = ImageOnlyQwenVLProcessor.from_pretrained(path, local_files_only=True)
    # Batched generation with a decoder-only model needs the padding on the left.
    processor.tokenizer.padding_side = "left"
    return VisionLanguageModel(model, processor, torch_device, str(path))


@dataclass(frozen=True)
class Turn:
    """One user turn: the text first, then the images in order (ImgEdit-Judge's layout)."""

    text: str
    images: tuple[Image.Image, ...]


@dataclass(frozen=True)
class Generation:
    """One generated answer: its text, token ids (stopped at end of turn) and optional logits."""

    text: str
    token_ids: tuple[int, ...]
    # (len(token_ids), len(logit_token_ids)) raw float32 logits of the asked-for tokens, or None
    logits: torch.Tensor | None


def chat_prompt(processor: ImageOnlyQwenVLProcessor, turn: Turn) -> str:
    """`turn` as the model reads it: one user message (text, then images), then the assistant's
    opening. Generation and fine-tuning (`rewards/sft.py`) both render prompts with it."""
    content = [{"type": "text", "text": turn.text}, *({"type": "image"} for _ in turn.images)]
    return processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )


def images_kwargs(bounds: PixelBounds) -> dict[str, Any]:
    """The processor's image arguments that resize every image into `bounds`."""
    return {"size": {"shortest_edge": bounds.min_pixels, "longest_edge": bounds.max_pixels}}


def generate(
    vlm: VisionLanguageModel,
    turns: Sequence[Turn],
    *,
    bounds: PixelBounds,
    max_new_tokens: int,
    logit_token_ids: Sequence[int] = (),
) -> list[Generation]:
    """Greedy answers to `turns`, batched with left padding, one `Generation` per turn in order.

    Sampling is off; other decoding settings come from the checkpoint's generation config (e.g.
    Qwen2.5-VL's repetition penalty), as when the checkpoint is run on its own. With
    `logit_token_ids`, each step's raw (unprocessed) logits of those tokens come back too; only
    those columns are kept, though `generate` briefly holds the full-vocabulary logits of the
    batch (152k x steps x batch x 4 bytes: ~0.6 GB for 128 steps x 8 on a real judge).
    """
    if not turns:
        return []
    processor = vlm.processor
    texts = [chat_prompt(processor, turn) for turn in turns]
    images = [image.convert("RGB") for turn in turns for image in turn.images]
    inputs = processor(
        text=texts,
        images=images or None,
        padding=True,
        return_tensors="pt",
        images_kwargs=images_kwargs(bounds),
    ).to(vlm.device)
    with torch.inference_mode():
        output = vlm.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            return_dict_in_generate=True,
            output_logits=bool(logit_token_ids),
        )
    prompt_length = inputs["input_ids"].shape[1]
    new_tokens = output.sequences[:, prompt_length:].tolist()
    stop = _stop_token_ids(vlm)
    steps = None
    if logit_token_ids:
        columns = torch.tensor(list(logit_token_ids), device=output.sequences.device)
        steps = torch.stack([step[:, columns] for step in output.logits], dim=1).float().cpu()
    generations = []
    for row, ids in enumerate(new_tokens):
        end = next((i for i, token in enumerate(ids) if token in stop), len(ids))
        kept = tuple(ids[:end])
        # Special tokens stay in the text: the raw answer is kept exactly as the model gave it.
        text = processor.tokenizer.decode(list(kept), skip_special_tokens=False)
        logits = steps[row, :end] if steps is not None else None
        generations.append(Generation(text, kept, logits))
    return generations


def _stop_token_ids(vlm: VisionLanguageModel) -> set[int]:
    config = vlm.model.generation_config
    eos = config.eos_token_id
    ids = set(eos) if isinstance(eos, list) else {eos} if eos is not None else set()
    tokenizer = vlm.processor.tokenizer
    ids |= {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    return ids


def token_offsets(vlm: VisionLanguageModel, token_ids: Sequence[int]) -> list[int]:
    """End offset, in the decoded text, of each token (decoding the prefixes keeps bytes honest)."""
    decode = vlm.processor.tokenizer.decode
    return [
        len(decode(list(token_ids[: i + 1]), skip_special_tokens=False))
        for i in range(len(token_ids))
    ]
