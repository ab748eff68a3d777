"""Model sizes from configurations alone: every component built on the `meta` device (shapes, no
memory, no weights), counted, and summarised as the plain records `policies.memory` reads.

A model is a diffusers folder or a hub id in the local cache (only its `config.json` files are
read), or one of the released architectures written out here (`PRESETS`), so that a deployment
can be planned on a laptop that holds no weights. The presets are the library classes' default
configurations where those are the released model's (the FLUX.1 and Qwen-Image transformers),
and the released values written out where they are not (T5-XXL, CLIP ViT-L/14, the VAEs, the
Stable Diffusion 1.5 UNet, Qwen2.5-VL-7B: transformers' default Qwen2.5-VL is the 72B).
"""

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers

from policies.loading import resolve_model_dir
from policies.pipelines import PIPELINES


@dataclass(frozen=True)
class Component:
    """One pipeline component: its name and parameter count."""

    name: str
    parameters: int


@dataclass(frozen=True)
class DenoiserShape:
    """What activation memory depends on. A transformer: `hidden` width, `blocks`, image tokens
    per `pixels_per_token` pixels, `text_tokens`. A UNet: its levels' channels and blocks."""

    kind: str  # transformer | unet
    hidden: int
    blocks: int
    pixels_per_token: int  # transformer: (VAE factor x patch)²; unet: VAE factor²
    text_tokens: int
    level_channels: tuple[int, ...] = ()  # unet: channels per resolution level
    blocks_per_level: int = 0  # unet: blocks per level, down and up together


@dataclass(frozen=True)
class EditorArchitecture:
    """An editor: its pipeline, components, denoiser and what a LoRA on it trains."""

    name: str
    pipeline: str
    components: tuple[Component, ...]
    denoiser: str
    shape: DenoiserShape
    lora_features: int  # sum of (in + out) features of the LoRA's target layers
    vae_channels: int  # the VAE decoder's widest feature maps at full resolution
    default_max_pixels: int
    train_resolution: int

    @property
    def denoiser_parameters(self) -> int:
        return next(c.parameters for c in self.components if c.name == self.denoiser)

    @property
    def frozen_parameters(self) -> int:
        """The encoders and the VAE (never trained)."""
        return sum(c.parameters for c in self.components if c.name != self.denoiser)

    def lora_parameters(self, rank: int) -> int:
        return rank * self.lora_features


@dataclass(frozen=True)
class JudgeArchitecture:
    """A Qwen2.5-VL judge: its size and what its KV cache and vision tower depend on."""

    name: str
    parameters: int
    layers: int
    kv_heads: int
    head_dim: int
    vision_hidden: int
    vision_depth: int
    patch: int  # pixels per vision patch side
    merge: int  # patches merged per image token side
    vocab: int


def count(module: torch.nn.Module) -> int:
    """Parameters of `module` (meta tensors count the same)."""
    return sum(p.numel() for p in module.parameters())


def _on_meta(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    with torch.device("meta"):
        return build()


def _lora_features(denoiser: torch.nn.Module, targets: Sequence[str]) -> int:
    total = 0
    for name, layer in denoiser.named_modules():
        if isinstance(layer, torch.nn.Linear) and any(
            name == t or name.endswith("." + t) for t in targets
        ):
            total += layer.in_features + layer.out_features
    return total


def _shape(denoiser: torch.nn.Module, vae_factor: int, patch: int, text_tokens: int):
    config = denoiser.config
    if "block_out_channels" in config:  # a UNet
        return DenoiserShape(
            kind="unet",
            hidden=max(config.block_out_channels),
            blocks=len(config.block_out_channels) * (3 * config.layers_per_block + 1),
            pixels_per_token=vae_factor**2,
            text_tokens=text_tokens,
            level_channels=tuple(config.block_out_channels),
            blocks_per_level=3 * config.layers_per_block + 1,
        )
    blocks = config.num_layers + config.get("num_single_layers", 0)
    return DenoiserShape(
        kind="transformer",
        hidden=config.num_attention_heads * config.attention_head_dim,
        blocks=blocks,
        pixels_per_token=(vae_factor * patch) ** 2,
        text_tokens=text_tokens,
    )


# Text tokens the denoiser reads: CLIP's 77, Kontext's T5 sequence (512), and for Qwen-Image-Edit
# the encoder's hidden states of the prompt template with the ~1 MP source (~1,300 image tokens).
_TEXT_TOKENS = {
    "StableDiffusionInstructPix2PixPipeline": 77,
    "FluxKontextPipeline": 512,
    "QwenImageEditPipeline": 1400,
}


def _editor(name: str, pipeline: str, modules: dict[str, torch.nn.Module]) -> EditorArchitecture:
    spec = PIPELINES[pipeline]
    denoiser = modules[spec.denoiser]
    vae = modules["vae"]
    vae_config = vae.config
    if "block_out_channels" in vae_config:
        widths = list(vae_config.block_out_channels)
    else:  # AutoencoderKLQwenImage: base_dim x dim_mult, downsampled once per extra level
        widths = [vae_config.base_dim * m for m in vae_config.dim_mult]
    vae_factor = 2 ** (len(widths) - 1)
    # The decoder's last upsampling brings its second-narrowest width to full resolution.
    ordered = sorted(set(widths))
    vae_channels = ordered[1] if len(ordered) > 1 else ordered[0]
    return EditorArchitecture(
        name=name,
        pipeline=pipeline,
        components=tuple(Component(n, count(m)) for n, m in sorted(modules.items())),
        denoiser=spec.denoiser,
        shape=_shape(denoiser, vae_factor, spec.latent_patch, _TEXT_TOKENS[pipeline]),
        lora_features=_lora_features(denoiser, spec.lora_targets),
        vae_channels=vae_channels,
        default_max_pixels=spec.max_pixels,
        train_resolution=spec.train_resolution,
    )


# ---- the released architectures -----------------------------------------------------------


def _clip_vit_l() -> torch.nn.Module:
    """CLIP ViT-L/14's text tower (InstructPix2Pix, FLUX.1)."""
    return transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            projection_dim=768,
        )
    )


def _t5_xxl() -> torch.nn.Module:
    """T5 v1.1 XXL's encoder (FLUX.1's text_encoder_2)."""
    return transformers.T5EncoderModel(
        transformers.T5Config(
            vocab_size=32128,
            d_model=4096,
            d_kv=64,
            d_ff=10240,
            num_layers=24,
            num_heads=64,
            feed_forward_proj="gated-gelu",
        )
    )


def qwen25_vl_7b_config() -> transformers.Qwen2_5_VLConfig:
    """Qwen2.5-VL-7B-Instruct's configuration (ImgEdit-Judge's base, Qwen-Image's encoder)."""
    return transformers.Qwen2_5_VLConfig(
        text_config={
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "vocab_size": 152064,
            "max_position_embeddings": 128000,
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        },
        vision_config={
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "out_hidden_size": 3584,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
        },
        vocab_size=152064,
        tie_word_embeddings=False,
    )


def _sd_vae(latent_channels: int, **extra: Any) -> torch.nn.Module:
    return diffusers.AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        **extra,
    )


def _instruct_pix2pix() -> dict[str, torch.nn.Module]:
    return {
        # Stable Diffusion 1.5's UNet with 8 input channels (noisy + source latents).
        "unet": diffusers.UNet2DConditionModel(
            in_channels=8, cross_attention_dim=768, sample_size=64
        ),
        "text_encoder": _clip_vit_l(),
        "vae": _sd_vae(4),
    }


def _flux_kontext() -> dict[str, torch.nn.Module]:
    return {
        # diffusers' defaults are FLUX.1's; [dev] is guidance-distilled.
        "transformer": diffusers.FluxTransformer2DModel(guidance_embeds=True),
        "text_encoder": _clip_vit_l(),
        "text_encoder_2": _t5_xxl(),
        "vae": _sd_vae(16, use_quant_conv=False, use_post_quant_conv=False),
    }


def _qwen_image_edit() -> dict[str, torch.nn.Module]:
    return {
        "transformer": diffusers.QwenImageTransformer2DModel(),  # the defaults are Qwen-Image's
        "text_encoder": transformers.Qwen2_5_VLForConditionalGeneration(qwen25_vl_7b_config()),
        "vae": diffusers.AutoencoderKLQwenImage(),
    }


EDITOR_PRESETS: dict[str, tuple[str, str, Callable[[], dict[str, torch.nn.Module]]]] = {
    "instruct-pix2pix": (
        "InstructPix2Pix (timbrooks/instruct-pix2pix)",
        "StableDiffusionInstructPix2PixPipeline",
        _instruct_pix2pix,
    ),
    "flux-kontext": (
        "FLUX.1 Kontext dev (black-forest-labs/FLUX.1-Kontext-dev)",
        "FluxKontextPipeline",
        _flux_kontext,
    ),
    "qwen-image-edit": (
        "Qwen-Image-Edit (Qwen/Qwen-Image-Edit)",
        "QwenImageEditPipeline",
        _qwen_image_edit,
    ),
}
JUDGE_PRESETS = {"qwen2.5-vl-7b": "Qwen2.5-VL-7B (ImgEdit-Judge, Qwen2.5-VL-7B-Instruct)"}


def _component(folder: Path, library: str, class_name: str) -> torch.nn.Module:
    """One component of a diffusers folder built on meta from its config.json."""
    if library == "diffusers":
        model_class = getattr(diffusers, class_name)
        return _on_meta(lambda: model_class.from_config(model_class.load_config(folder)))
    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    model_class = getattr(transformers, class_name)
    return _on_meta(lambda: model_class._from_config(config))


def editor_architecture(model: str) -> EditorArchitecture:
    """The editor `model` is: a preset name (`EDITOR_PRESETS`), or a diffusers folder or cached
    hub id whose configs are read (no weights). `ValueError` names what is wrong."""
    if model in EDITOR_PRESETS:
        name, pipeline, build = EDITOR_PRESETS[model]
        return _editor(name, pipeline, _on_meta(lambda: torch.nn.ModuleDict(build())))  # type: ignore[arg-type]
    folder = resolve_model_dir(model)
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise ValueError(
            f"editor={model!r}: no model_index.json; give a diffusers folder, a cached hub id, "
            f"or one of {sorted(EDITOR_PRESETS)}"
        )
    index = json.loads(index_file.read_text())
    pipeline = index["_class_name"]
    if pipeline not in PIPELINES:
        raise ValueError(f"editor={model!r} is a {pipeline}; supported: {sorted(PIPELINES)}")
    modules = {}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry[0] is None:
            continue
        if (folder / name / "config.json").is_file():
            modules[name] = _component(folder / name, entry[0], entry[1])
    return _editor(str(model), pipeline, modules)


def judge_architecture(model: str) -> JudgeArchitecture:
    """The judge `model` is: `qwen2.5-vl-7b`, or a Qwen2.5-VL folder whose config is read."""
    if model in JUDGE_PRESETS:
        name, config = JUDGE_PRESETS[model], qwen25_vl_7b_config()
    else:
        folder = Path(model).expanduser()
        if not (folder / "config.json").is_file():
            raise ValueError(
                f"judge={model!r}: not a Qwen2.5-VL folder (no config.json) nor one of "
                f"{sorted(JUDGE_PRESETS)}"
            )
        name = str(model)
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    module = _on_meta(lambda: transformers.Qwen2_5_VLForConditionalGeneration(config))
    text, vision = config.text_config, config.vision_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return JudgeArchitecture(
        name=name,
        parameters=count(module),
        layers=text.num_hidden_layers,
        kv_heads=text.num_key_value_heads,
        head_dim=head_dim,
        vision_hidden=vision.hidden_size,
        vision_depth=vision.depth,
        patch=vision.patch_size,
        merge=vision.spatial_merge_size,
        vocab=text.vocab_size,
    )
