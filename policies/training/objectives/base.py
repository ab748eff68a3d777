"""What every objective is (`Objective`), and what the UNet and transformer objectives share:
loading the denoiser (in the compute dtype; under ZeRO-3 built partitioned and filled one
layer at a time), its start from the parent checkpoint, full or LoRA, and its save in the
editor's format."""

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import diffusers
import torch
import torch.distributed as dist
from diffusers import DiffusionPipeline
from huggingface_hub import split_torch_state_dict_into_shards
from peft import LoraConfig
from safetensors import safe_open
from safetensors.torch import save_file

from policies.checkpoints import inspect_checkpoint, load_weights_in_place, weight_files
from policies.pipelines import PipelineSpec, lora_layers
from policies.training.config import TrainConfig

Batch = dict[str, Any]
# Builds the trained module's parameters already partitioned (deepspeed.zero.Init), or None.
ZeroInit = Callable[[], AbstractContextManager[Any]]
# diffusers' shard size for saved weights: a 12B transformer is 24 GB in bf16, five files.
MAX_SHARD_SIZE = "5GB"


class Objective(Protocol):
    """One editor family's fine-tuning objective."""

    kind: str  # checkpoint kind recorded on the row: full | lora

    def trainable(self) -> torch.nn.Module:
        """The module DeepSpeed wraps (its parameters with requires_grad are optimised)."""

    def loss(
        self, model: Callable[..., Any], batch: Batch, generator: torch.Generator
    ) -> torch.Tensor:
        """Scalar loss of one micro-batch; all randomness from `generator` (a CPU generator)."""

    def save(self, folder: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Write the trained weights in the editor's own checkpoint format into `folder`
        (`state_dict`: the full weights gathered by ZeRO-3 on rank 0, instead of the module's)."""


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def load_denoiser(
    spec: PipelineSpec, model_dir: Path, dtype: torch.dtype, zero_init: ZeroInit | None
) -> torch.nn.Module:
    """The pipeline's denoiser (`unet`, `transformer`) in `dtype` (no fp32 copy first: the
    engine keeps the fp32 master weights). With `zero_init` (ZeRO-3) it is built with every
    parameter partitioned over the ranks, then filled one layer at a time: no rank ever holds
    the whole model."""
    folder = model_dir / spec.denoiser
    config = json.loads((folder / "config.json").read_text())
    model_class = getattr(diffusers, config["_class_name"])
    if zero_init is None:
        return model_class.from_pretrained(
            folder, dtype=dtype, low_cpu_mem_usage=True, local_files_only=True
        )
    with zero_init():
        model = model_class.from_config(model_class.load_config(folder))
    load_partitioned_weights(model, folder)
    return model


def load_partitioned_weights(module: torch.nn.Module, folder: Path) -> None:
    """Fill a module whose parameters ZeRO-3 partitioned with the weights saved in `folder`:
    layer by layer, each layer's parameters gathered whole, written on rank 0 from the file
    (read one tensor at a time) and scattered back. Every rank calls it."""
    import deepspeed

    files = weight_files(folder)
    where: dict[str, Path] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            where |= dict.fromkeys(handle.keys(), file)  # noqa: SIM118 - not a dict
    names = [n for n, _ in module.named_parameters()] + [n for n, _ in module.named_buffers()]
    persistent = set(module.state_dict())
    missing = sorted(n for n in names if n in persistent and n not in where)
    unexpected = sorted(set(where) - persistent)
    if missing or unexpected:
        raise ValueError(
            f"{folder}: weights do not fit {type(module).__name__}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]} (first 5 of each)"
        )
    handles = {file: safe_open(str(file), framework="pt") for file in files}
    rank0 = _rank() == 0
    with torch.no_grad():
        for prefix, layer in module.named_modules():
            prefix = f"{prefix}." if prefix else ""
            parameters = list(layer.named_parameters(recurse=False))
            if parameters:
                with deepspeed.zero.GatheredParameters([p for _, p in parameters], modifier_rank=0):
                    if rank0:
                        for name, parameter in parameters:
                            value = handles[where[prefix + name]].get_tensor(prefix + name)
                            parameter.data.copy_(value)
            for name, buffer in layer.named_buffers(recurse=False):
                if prefix + name in where:  # buffers are never partitioned: every rank
                    buffer.copy_(handles[where[prefix + name]].get_tensor(prefix + name))


def set_gradient_checkpointing(denoiser: torch.nn.Module, config: TrainConfig, spec: PipelineSpec):
    """Recompute the denoiser's activations in the backward pass when the config (or, on
    `auto`, the pipeline: the transformer editors) asks for it."""
    wanted = config.gradient_checkpointing
    if wanted == "on" or (wanted == "auto" and spec.gradient_checkpointing):
        denoiser.enable_gradient_checkpointing()


def init_denoiser(
    pipeline: DiffusionPipeline,
    name: str,
    config: TrainConfig,
    targets: Sequence[str],
    *,
    partitioned: bool = False,
) -> None:
    """Start the pipeline's denoiser `name` (unet, transformer) from the parent checkpoint (if
    any) and set what is trainable: every weight (full) or a peft adapter on `targets` (lora).
    `partitioned`: the denoiser's parameters are ZeRO-3 partitions."""
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
            if partitioned:
                load_partitioned_weights(denoiser, Path(config.init_checkpoint) / name)
            else:
                load_weights_in_place(denoiser, Path(config.init_checkpoint) / name)
        elif layout is not None:
            if partitioned:
                raise ValueError(
                    f"init_checkpoint={config.init_checkpoint!r} is a LoRA: folding it into "
                    "ZeRO-3 partitioned weights is not supported; continue it with mode=lora, "
                    "or train this job with zero_stage=2"
                )
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
                target_modules=list(targets),
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
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write a trained denoiser as the editor loads it: `<name>/` (full; from `state_dict` when
    given, the weights ZeRO-3 gathered on rank 0) or the pipeline's LoRA file
    `pytorch_lora_weights.safetensors` (lora: only the adapter's weights are read)."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "full":
        if state_dict is None:
            denoiser.save_pretrained(
                folder / name, safe_serialization=True, max_shard_size=MAX_SHARD_SIZE
            )
        else:
            denoiser.save_config(folder / name)
            save_shards(state_dict, folder / name)
        return
    pipeline_class.save_lora_weights(  # type: ignore[attr-defined]
        folder,
        **{
            f"{name}_lora_layers": lora_layers(name, denoiser),
            # rank and alpha travel with the weights; without them alpha is taken to be the rank.
            f"{name}_lora_adapter_metadata": denoiser.peft_config["default"].to_dict(),
        },
    )


def save_shards(state_dict: dict[str, torch.Tensor], folder: Path) -> None:
    """Write `state_dict` as diffusers does: `diffusion_pytorch_model.safetensors`, or shards of
    at most `MAX_SHARD_SIZE` and their `.index.json`."""
    folder.mkdir(parents=True, exist_ok=True)
    split = split_torch_state_dict_into_shards(
        state_dict,
        filename_pattern="diffusion_pytorch_model{suffix}.safetensors",
        max_shard_size=MAX_SHARD_SIZE,
    )
    for filename, keys in split.filename_to_tensors.items():
        save_file({key: state_dict[key].contiguous() for key in keys}, folder / filename)
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
            json.dumps(index, indent=2, sort_keys=True)
        )
