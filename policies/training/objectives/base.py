"""What every objective is (`Objective`), and the denoiser start and save that the UNet and
transformer objectives share: from the parent checkpoint, full or LoRA, in the editor's format."""

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from policies.checkpoints import inspect_checkpoint, load_weights_in_place
from policies.tiny_checkpoints import LORA_TARGETS
from policies.training.config import TrainConfig

Batch = dict[str, Any]


class Objective(Protocol):
    """One editor family's fine-tuning objective."""

    kind: str  # checkpoint kind recorded on the row: full | lora

    def trainable(self) -> torch.nn.Module:
        """The module DeepSpeed wraps (its parameters with requires_grad are optimised)."""

    def loss(
        self, model: Callable[..., Any], batch: Batch, generator: torch.Generator
    ) -> torch.Tensor:
        """Scalar loss of one micro-batch; all randomness from `generator` (a CPU generator)."""

    def save(self, folder: Path) -> None:
        """Write the trained weights in the editor's own checkpoint format into `folder`."""


def init_denoiser(pipeline: DiffusionPipeline, name: str, config: TrainConfig) -> None:
    """Start the pipeline's denoiser `name` (unet, transformer) from the parent checkpoint (if
    any) and set what is trainable: every weight (full) or a peft adapter (lora)."""
    denoiser = getattr(pipeline, name)
    layout = None
    if config.init_checkpoint:
        modules = [n for n, c in pipeline.components.items() if isinstance(c, torch.nn.Module)]
        layout = inspect_checkpoint(Path(config.init_checkpoint), modules)
        if layout.kind == "full" and layout.components != (name,):
            raise ValueError(
                f"init_checkpoint={config.init_checkpoint!r} holds {list(layout.components)};"
                f" only {name}/ is trained here"
            )
    if config.mode == "full":
        if layout is not None and layout.kind == "full":
            load_weights_in_place(denoiser, Path(config.init_checkpoint) / name)
        elif layout is not None:
            # A LoRA parent becomes part of the weights that are now trained in full.
            pipeline.load_lora_weights(config.init_checkpoint)
            pipeline.fuse_lora(components=[name])
            pipeline.unload_lora_weights()
        denoiser.requires_grad_(True)
        return
    if layout is not None and layout.kind == "full":
        raise ValueError(
            f"init_checkpoint={config.init_checkpoint!r} holds full weights, but a LoRA is "
            "applied on the base weights by the editor: train mode=full on top of it"
        )
    denoiser.requires_grad_(False)
    if layout is None:
        # Gaussian A and zero B (peft's default, as diffusers' LoRA scripts): the adapter
        # starts as the identity, so step 0 is the parent model.
        denoiser.add_adapter(
            LoraConfig(
                r=config.lora_rank,
                lora_alpha=config.lora_alpha,
                init_lora_weights="gaussian",
                target_modules=LORA_TARGETS,
            )
        )
    else:
        pipeline.load_lora_weights(config.init_checkpoint, adapter_name="default")
        rank = denoiser.peft_config["default"].r
        if rank != config.lora_rank:
            raise ValueError(
                f"lora_rank={config.lora_rank}, but init_checkpoint has rank {rank}: a LoRA "
                "is continued at its own rank"
            )
        for parameter_name, parameter in denoiser.named_parameters():
            parameter.requires_grad_("lora_" in parameter_name)


def save_denoiser(
    pipeline_class: type[DiffusionPipeline],
    denoiser: torch.nn.Module,
    name: str,
    kind: str,
    folder: Path,
) -> None:
    """Write a trained denoiser as the editor loads it: `<name>/` (full) or the pipeline's LoRA
    file `pytorch_lora_weights.safetensors` (lora)."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "full":
        denoiser.save_pretrained(folder / name, safe_serialization=True)
        return
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(denoiser))
    pipeline_class.save_lora_weights(  # type: ignore[attr-defined]
        folder,
        **{
            f"{name}_lora_layers": layers,
            # rank and alpha travel with the weights; without them alpha is taken to be the rank.
            f"{name}_lora_adapter_metadata": denoiser.peft_config["default"].to_dict(),
        },
    )
