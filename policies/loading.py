"""Loading a diffusers edit pipeline from a local folder or the local hub cache; never downloads."""

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline
from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError

from policies.pipelines import PipelineSpec
from rewards.vlm import check_device

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_dir(model: str | Path) -> Path:
    """The local folder of `model`: a diffusers folder, or a hub id already in the local cache."""
    if not str(model):
        raise ValueError(
            "model is empty: give a diffusers folder or a cached hub id (the embedded default "
            "builds a tiny one with policies.tiny.ensure_tiny_editor)"
        )
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve()
    try:
        return Path(snapshot_download(repo_id=str(model), local_files_only=True))
    except (LocalEntryNotFoundError, ValueError) as exc:
        # ValueError: not even a valid repo id (e.g. an absolute path that does not exist).
        raise ValueError(
            f"model={str(model)!r} is neither a folder nor a hub id in the local Hugging Face "
            "cache; editloop never downloads models (fetch it first, e.g. `hf download ID`)"
        ) from exc


def torch_dtype(name: str, device: str) -> torch.dtype:
    """The dtype named by the settings; `auto` is bfloat16 on a GPU and float32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"dtype={name!r}: choose auto or one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def set_scheduler(pipeline: DiffusionPipeline, name: str) -> None:
    """Replace the pipeline's scheduler by the compatible class `name` (`default` keeps it)."""
    if name == "default":
        return
    compatible = {cls.__name__: cls for cls in pipeline.scheduler.compatibles}
    if name not in compatible:
        raise ValueError(
            f"scheduler={name!r} does not fit {type(pipeline).__name__}; choose default or one "
            f"of {sorted(compatible)}"
        )
    pipeline.scheduler = compatible[name].from_config(pipeline.scheduler.config)


OFFLOADS = ("none", "model", "sequential")


def load_arguments(device: torch.device, dtype: torch.dtype, offload: str) -> dict[str, Any]:
    """`from_pretrained`'s memory arguments: every component built empty and filled shard by
    shard in `dtype` (never a whole fp32 copy in host memory), straight onto `device` unless it
    is offloaded (then it stays in host memory until the offload hooks move it)."""
    if offload not in OFFLOADS:
        raise ValueError(f"offload={offload!r}: choose one of {OFFLOADS}")
    arguments: dict[str, Any] = {
        "dtype": dtype,
        "low_cpu_mem_usage": True,
        "local_files_only": True,
    }
    if offload == "none":
        # diffusers takes a device type here; the index comes from the current CUDA device.
        arguments["device_map"] = device.type
    return arguments


def _on_device(device: torch.device) -> AbstractContextManager[Any]:
    """Inside, `cuda` means `device` (loading with device_map="cuda" lands on its index)."""
    if device.type == "cuda" and device.index is not None:
        return torch.cuda.device(device.index)
    return nullcontext()


def load_pipeline(
    spec: PipelineSpec,
    model_dir: Path,
    *,
    device: str,
    dtype: str,
    scheduler: str,
    offload: str = "none",
    vae_slicing: bool = False,
    vae_tiling: bool = False,
) -> DiffusionPipeline:
    """Load the pipeline saved in `model_dir` with `from_pretrained`, ready to call on `device`.

    The weights are read in the target dtype straight onto `device` (see `load_arguments`);
    `offload` (model, sequential) leaves them in host memory behind diffusers' offload hooks
    instead, and VAE slicing and tiling bound the decoder's memory.
    """
    torch_device = check_device(device)
    with _on_device(torch_device):
        pipeline = spec.pipeline_class.from_pretrained(
            model_dir,
            **load_arguments(torch_device, torch_dtype(dtype, device), offload),
            **spec.extra_components(model_dir),
        )
    set_scheduler(pipeline, scheduler)
    if offload == "model":
        pipeline.enable_model_cpu_offload(device=torch_device)
    elif offload == "sequential":
        pipeline.enable_sequential_cpu_offload(device=torch_device)
    if vae_slicing:
        pipeline.vae.enable_slicing()
    if vae_tiling:
        pipeline.vae.enable_tiling()
    # One progress bar per pipeline call would flood worker logs.
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
