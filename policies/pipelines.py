"""The supported diffusers edit pipelines and how the generic edit knobs map onto each one.

One `PipelineSpec` per pipeline class, in one explicit table (`PIPELINES`). To drive another
image-edit pipeline, add a row: its class, the component fine-tuning changes, its latent patch
size, which call argument each generic knob becomes, and what else each call needs.
"""

import json
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    DiffusionPipeline,
    FluxKontextPipeline,
    QwenImageEditPipeline,
    StableDiffusionInstructPix2PixPipeline,
)
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit
from diffusers.utils import convert_state_dict_to_diffusers
from peft.utils import get_peft_model_state_dict

from policies.qwen_processor import QwenImageEditProcessor

# The generic knobs every editor understands (EditorSettings names them the same way).
KNOBS = ("steps", "guidance_scale", "image_guidance_scale")


def _no_batch_arguments(width: int, height: int, batch: int, knobs: Mapping[str, float]) -> dict:
    return {}


def _no_context(width: int, height: int) -> AbstractContextManager[None]:
    return nullcontext()


def _no_components(model_dir: Path) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class PipelineSpec:
    """How editloop drives one diffusers pipeline class."""

    pipeline_class: type[DiffusionPipeline]
    # The component a fine-tune changes (LoRA target, full-weights checkpoint folder).
    denoiser: str
    # Latent pixels per token side: the working size is a multiple of vae_scale_factor * this.
    latent_patch: int
    # Generic knob -> the pipeline's own call argument; a knob missing here is refused.
    arguments: Mapping[str, str]
    # The knob's usual value for this pipeline (its model card) when the settings leave it unset.
    defaults: Mapping[str, float] = field(default_factory=dict)
    # The working-size cap (pixels) when the settings leave it unset: the resolution class the
    # model was trained at.
    max_pixels: int = 1024 * 1024
    # The side (pixels) of the square whose area the training buckets may not exceed.
    train_resolution: int = 1024
    # The denoiser's layers a LoRA adapts (peft `target_modules`: name suffixes).
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    # Whether training recomputes the denoiser's activations by default (transformers: yes).
    gradient_checkpointing: bool = False
    # (working width, height, batch size, resolved knobs) -> the call's other arguments.
    batch_arguments: Callable[[int, int, int, Mapping[str, float]], dict[str, Any]] = (
        _no_batch_arguments
    )
    # Wraps the pipeline call for a working size (see `_qwen_working_size`).
    call_context: Callable[[int, int], AbstractContextManager[None]] = _no_context
    # Components to pass to `from_pretrained` explicitly (model folder -> name -> object).
    extra_components: Callable[[Path], dict[str, Any]] = _no_components

    @property
    def name(self) -> str:
        return self.pipeline_class.__name__


def _kontext_batch_arguments(
    width: int, height: int, batch: int, knobs: Mapping[str, float]
) -> dict[str, Any]:
    # Kontext rescales its output to `max_area` and, with `_auto_resize`, snaps the input to its
    # preferred ~1 MP resolutions; both would override the editor's working size.
    return {"width": width, "height": height, "max_area": width * height, "_auto_resize": False}


def _qwen_batch_arguments(
    width: int, height: int, batch: int, knobs: Mapping[str, float]
) -> dict[str, Any]:
    arguments: dict[str, Any] = {"width": width, "height": height}
    # Qwen-Image-Edit's classifier-free guidance (`true_cfg_scale`) only runs with a negative
    # prompt; its model card uses a single space.
    if knobs["guidance_scale"] > 1:
        arguments["negative_prompt"] = [" "] * batch
    return arguments


_QWEN_SIZE_LOCK = threading.Lock()


@contextmanager
def _qwen_working_size(width: int, height: int) -> Iterator[None]:
    """Make `QwenImageEditPipeline` encode its source at `width` x `height`, not at ~1 MP.

    diffusers 0.42 computes the size of the image it feeds the VAE and the vision-language encoder
    as `calculate_dimensions(1024 * 1024, aspect)` inside `__call__`, with no argument to change it
    (one 2-step call then takes ~35 s on CPU whatever `height`/`width` say). The function is looked
    up in the module at call time, so it is swapped for the duration of the call, under a lock
    because the module is shared by every thread.
    """
    with _QWEN_SIZE_LOCK:
        original = pipeline_qwenimage_edit.calculate_dimensions
        pipeline_qwenimage_edit.calculate_dimensions = lambda _area, _ratio: (width, height, None)
        try:
            yield
        finally:
            pipeline_qwenimage_edit.calculate_dimensions = original


def _qwen_processor(model_dir: Path) -> dict[str, Any]:
    # The checkpoint names the stock Qwen2VLProcessor, which needs torchvision for its video part.
    return {"processor": QwenImageEditProcessor.from_pretrained(model_dir / "processor")}


# LoRA on the transformer editors: the image stream's and the text stream's attention projections
# and both streams' feed-forward layers (diffusers' FLUX.1 Kontext LoRA script adapts these, and
# the single-stream blocks' MLP input too); attention alone leaves most of the capacity frozen.
_FLUX_LORA_TARGETS = (
    "to_q", "to_k", "to_v", "to_out.0",
    "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
    "proj_mlp",
)  # fmt: skip
_QWEN_LORA_TARGETS = (
    "to_q", "to_k", "to_v", "to_out.0",
    "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
    "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2",
)  # fmt: skip

PIPELINES: dict[str, PipelineSpec] = {
    "StableDiffusionInstructPix2PixPipeline": PipelineSpec(
        pipeline_class=StableDiffusionInstructPix2PixPipeline,
        denoiser="unet",
        latent_patch=1,
        arguments={
            "steps": "num_inference_steps",
            "guidance_scale": "guidance_scale",
            "image_guidance_scale": "image_guidance_scale",
        },
        # 20 steps: editloop's usual (the model card's example uses 10).
        defaults={"steps": 20, "guidance_scale": 7.5, "image_guidance_scale": 1.5},
        # InstructPix2Pix edits at the size of the image it is given; it was trained at 256 px
        # (Stable Diffusion 1.5's 512 px class).
        max_pixels=512 * 512,
        train_resolution=256,
    ),
    "FluxKontextPipeline": PipelineSpec(
        pipeline_class=FluxKontextPipeline,
        denoiser="transformer",
        latent_patch=2,
        # FLUX.1 Kontext [dev] is guidance-distilled: guidance_scale is an input of the model.
        arguments={"steps": "num_inference_steps", "guidance_scale": "guidance_scale"},
        defaults={"steps": 28, "guidance_scale": 2.5},
        batch_arguments=_kontext_batch_arguments,
        lora_targets=_FLUX_LORA_TARGETS,
        gradient_checkpointing=True,
    ),
    "QwenImageEditPipeline": PipelineSpec(
        pipeline_class=QwenImageEditPipeline,
        denoiser="transformer",
        latent_patch=2,
        arguments={"steps": "num_inference_steps", "guidance_scale": "true_cfg_scale"},
        defaults={"steps": 50, "guidance_scale": 4.0},
        batch_arguments=_qwen_batch_arguments,
        call_context=_qwen_working_size,
        extra_components=_qwen_processor,
        lora_targets=_QWEN_LORA_TARGETS,
        gradient_checkpointing=True,
    ),
}


def pipeline_spec(name: str, model_dir: Path) -> PipelineSpec:
    """The spec for pipeline class `name`; "auto" reads `_class_name` from `model_index.json`."""
    if name == "auto":
        index_file = model_dir / "model_index.json"
        if not index_file.is_file():
            raise ValueError(
                f"model={str(model_dir)!r}: no model_index.json, not a diffusers folder"
            )
        name = json.loads(index_file.read_text())["_class_name"]
    if name not in PIPELINES:
        raise ValueError(
            f"pipeline={name!r} is not supported; choose one of {sorted(PIPELINES)} "
            "(or add a PipelineSpec row to policies/pipelines.py)"
        )
    return PIPELINES[name]


def resolve_knobs(spec: PipelineSpec, requested: Mapping[str, float | None]) -> dict[str, float]:
    """Every knob of `spec` with a value: the requested one, else the pipeline's default.

    Raises `ValueError` for a requested knob the pipeline has no argument for.
    """
    unknown = set(requested) - set(KNOBS)
    if unknown:
        raise ValueError(f"unknown knob(s) {sorted(unknown)}; the knobs are {list(KNOBS)}")
    for knob, value in requested.items():
        if value is not None and knob not in spec.arguments:
            raise ValueError(
                f"{knob}={value} is not supported by {spec.name} "
                f"(it takes: {', '.join(spec.arguments)}); leave it unset"
            )
    resolved = {}
    for knob in spec.arguments:
        value = requested.get(knob)
        if value is None:
            value = spec.defaults.get(knob)
        if value is None:
            raise ValueError(f"{knob} has no default for {spec.name}; set it")
        resolved[knob] = value
    return resolved


def lora_layers(denoiser_name: str, denoiser: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights of `denoiser` as its pipeline's `save_lora_weights` takes them.

    A UNet's are renamed to diffusers' own layout (`lora.down`/`lora.up`), as diffusers'
    InstructPix2Pix scripts do; the transformers' stay in peft's layout, as diffusers' Flux and
    Qwen-Image scripts save them (the renaming knows only the attention projections: applied to
    a transformer's, it would mix two layouts and the loader would drop those layers).
    """
    layers = get_peft_model_state_dict(denoiser)
    return convert_state_dict_to_diffusers(layers) if denoiser_name == "unet" else layers
