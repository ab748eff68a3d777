"""Tiny random-init editors, built offline: the three supported pipelines at toy size.

Each builder seeds torch, builds every component in code (shapes follow diffusers' own pipeline
tests, with 4-level VAEs so the working-size multiple is the real one: 8 for InstructPix2Pix, 16
for FLUX.1 Kontext and Qwen-Image-Edit), and saves with `save_pretrained`. Editors load them back
through the same `from_pretrained` path as a real checkpoint. Outputs are noise, but deterministic.
"""

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLQwenImage,
    DiffusionPipeline,
    EulerAncestralDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxKontextPipeline,
    FluxTransformer2DModel,
    QwenImageEditPipeline,
    QwenImageTransformer2DModel,
    StableDiffusionInstructPix2PixPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    T5Config,
    T5EncoderModel,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from policies.qwen_processor import QwenImageEditProcessor
from policies.tiny_text import tiny_clip_tokenizer, tiny_qwen_tokenizer, tiny_t5_tokenizer

# Qwen-Image-Edit drops the first 64 tokens of its prompt template (the system prompt as the real
# tokenizer splits it); a tiny tokenizer must split that prefix into at least as many tokens.
_QWEN_TEMPLATE_DROP = 64


def _clip_text_encoder(vocab_size: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=32,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config)


def _save(pipeline: DiffusionPipeline, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(path, safe_serialization=True)
    return path


def build_tiny_instruct_pix2pix(path: Path, *, seed: int = 0) -> Path:
    """Save a ~1.5 MB random `StableDiffusionInstructPix2PixPipeline` at `path`; returns `path`."""
    tokenizer = tiny_clip_tokenizer()
    torch.manual_seed(seed)
    text_encoder = _clip_text_encoder(len(tokenizer))
    # 8 input channels: 4 for the noisy latent + 4 for the source image's latent (InstructPix2Pix).
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=8,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        sample_size=64,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
    )
    # The scheduler of timbrooks/instruct-pix2pix: ancestral, so it draws noise at every step.
    scheduler = EulerAncestralDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    )
    pipeline = StableDiffusionInstructPix2PixPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return _save(pipeline, path)


def build_tiny_flux_kontext(path: Path, *, seed: int = 0) -> Path:
    """Save a ~0.6 MB random `FluxKontextPipeline` at `path`; returns `path`."""
    tokenizer = tiny_clip_tokenizer()
    tokenizer_2 = tiny_t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = _clip_text_encoder(len(tokenizer))
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2),
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    # in_channels = 4 x latent channels: Flux packs 2x2 latent patches into one token.
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
    )
    vae = AutoencoderKL(
        sample_size=64,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=4,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    pipeline = FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    return _save(pipeline, path)


def build_tiny_qwen_image_edit(path: Path, *, seed: int = 0) -> Path:
    """Save a small random `QwenImageEditPipeline` at `path`; returns `path`.

    The processor is saved by `QwenImageEditProcessor` but `model_index.json` names the stock
    `transformers.Qwen2VLProcessor`, exactly like a real checkpoint, so loading it exercises the
    same path (the editor passes the image-only processor explicitly).
    """
    tokenizer = tiny_qwen_tokenizer()
    processor = QwenImageEditProcessor(Qwen2VLImageProcessorPil(), tokenizer)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in tokenizer.all_special_tokens}
    torch.manual_seed(seed)
    text_encoder = Qwen2_5_VLForConditionalGeneration(
        Qwen2_5_VLConfig(
            text_config={
                "hidden_size": 16,
                "intermediate_size": 16,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "num_key_value_heads": 2,
                # mrope sections add up to head_dim / 2 = 16 / 2 / 2.
                "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default"},
                "rope_theta": 1000000.0,
                "vocab_size": len(tokenizer),
                "bos_token_id": ids["<|endoftext|>"],
                "eos_token_id": ids["<|im_end|>"],
            },
            vision_config={
                "depth": 2,
                "hidden_size": 16,
                "intermediate_size": 16,
                "num_heads": 2,
                "out_hidden_size": 16,
                "fullatt_block_indexes": [1],
            },
            vocab_size=len(tokenizer),
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
        )
    )
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=3,
        joint_attention_dim=16,
        guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
    )
    z_dim = 4
    # Three downsamplings: vae_scale_factor 8, working-size multiple 16, as in the real model.
    vae = AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=z_dim,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * z_dim,
        latents_std=[1.0] * z_dim,
    )
    pipeline = QwenImageEditPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        processor=processor,
        transformer=transformer,
    )
    prefix = pipeline.prompt_template_encode.split("<|vision_start|>")[0]
    if len(tokenizer(prefix).input_ids) < _QWEN_TEMPLATE_DROP:
        raise RuntimeError("the tiny Qwen tokenizer compresses the system prompt below 64 tokens")
    _save(pipeline, path)
    index_file = path / "model_index.json"
    index = json.loads(index_file.read_text())
    index["processor"] = ["transformers", "Qwen2VLProcessor"]
    index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return path


TINY_BUILDERS: dict[str, Callable[..., Path]] = {
    "StableDiffusionInstructPix2PixPipeline": build_tiny_instruct_pix2pix,
    "FluxKontextPipeline": build_tiny_flux_kontext,
    "QwenImageEditPipeline": build_tiny_qwen_image_edit,
}


def ensure_tiny_editor(
    path: Path, pipeline: str = "StableDiffusionInstructPix2PixPipeline"
) -> Path:
    """The tiny `pipeline` at `path`, built there first if missing (in a temp dir, renamed)."""
    if pipeline not in TINY_BUILDERS:
        raise ValueError(
            f"pipeline={pipeline!r}: no tiny builder; choose one of {sorted(TINY_BUILDERS)}"
        )
    if (path / "model_index.json").is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
    try:
        TINY_BUILDERS[pipeline](staging)
        os.replace(staging, path)
    except OSError:
        # Another process finished the same build first; its copy is as good as ours.
        if not (path / "model_index.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
