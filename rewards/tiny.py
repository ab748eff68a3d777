"""A tiny random-init Qwen2.5-VL for tests and the demo, built offline (docs/design.md).

It is saved with `save_pretrained` and loaded back by `load_vision_language_model`, the code that
loads a real ImgEdit-Judge, so tests exercise the real load / preprocess / generate path. Its
answers are gibberish (random weights) and therefore `unparseable` / `Invalid`.
"""

import os
import shutil
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from rewards.prompts import editloop_prompts
from rewards.reflection import describe_target_prompt, reflect_prompt
from rewards.vlm import QWEN_SPECIAL_TOKENS, ImageOnlyQwenVLProcessor

# Qwen's chat layout: one `<|vision_start|><|image_pad|><|vision_end|>` per image, in place.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
VOCAB_SIZE = 400
# Written into every tiny model's folder: the reflector check (`rewards.factory`) knows that such
# a judge is editloop's random stand-in, not a real ImgEdit-Judge.
TINY_MARKER = "editloop-tiny-judge.json"


def is_tiny_judge(path: Path) -> bool:
    """Whether `path` holds editloop's tiny random judge (built by `build_tiny_qwen_vl`)."""
    return (path / TINY_MARKER).is_file()


def _corpus() -> list[str]:
    """Text the tokenizer learns from: our prompts and the answers the roles expect."""
    texts = list(editloop_prompts().templates.values())
    texts += [
        describe_target_prompt("replace the cat with a dog"),
        reflect_prompt("replace the cat with a dog", "A dog sits on the sofa.", "overall 3.00"),
        "Brief reasoning: the dog replaces the cat cleanly.\nPrompt Compliance: 4",
        "<#Think> The sky is still grey. <#Reflection> make the sky blue",
        "<#Think> Done. <#Success>",
        "<#Think> The scene is destroyed. <#Failed>",
        "0 1 2 3 4 5 6 7 8 9 / . , : ( ) - &",
    ]
    return texts


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE (~400 tokens) with Qwen's special tokens and digits split one by one."""
    tokenizer = Tokenizer(models.BPE())
    # Like Qwen2's pre-tokenizer, every digit is its own token (continuous scoring relies on it).
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_qwen_vl(path: Path, seed: int = 0) -> Path:
    """Build and save a random-init Qwen2.5-VL (2 layers, hidden 64, ~0.2 M parameters) at `path`.

    Deterministic for a given `seed`: the same tokenizer and the same weights every time.
    """
    tokenizer = build_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            # mrope sections (temporal, height, width) must add up to head_dim / 2 = 8.
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [2, 3, 3],
            },
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "out_hidden_size": 64,
            "fullatt_block_indexes": [1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )
    processor = ImageOnlyQwenVLProcessor(
        image_processor=Qwen2VLImageProcessorPil(), tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    (path / TINY_MARKER).write_text('{"random_weights": true}\n')
    return path


def ensure_tiny_qwen_vl(path: Path, seed: int = 0) -> Path:
    """The tiny model at `path`, built first if missing (atomically: concurrent callers agree)."""
    if (path / "config.json").is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        build_tiny_qwen_vl(staging, seed)
        try:
            os.rename(staging, path)
        except OSError:
            if not (path / "config.json").is_file():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
