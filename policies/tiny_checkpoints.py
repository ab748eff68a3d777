"""Tiny fine-tuned checkpoints for tests: a random LoRA adapter and perturbed full denoiser weights.

Both are written in the layouts `policies.checkpoints` reads, the way training writes them: the
LoRA with the pipeline class's `save_lora_weights`, full weights with the model's `save_pretrained`.
"""

from pathlib import Path

import torch
from peft import LoraConfig

from policies.loading import load_pipeline
from policies.pipelines import lora_layers, pipeline_spec


def _base_denoiser(model_dir: Path) -> tuple[str, torch.nn.Module, type, list[str]]:
    spec = pipeline_spec("auto", model_dir)
    pipeline = load_pipeline(spec, model_dir, device="cpu", dtype="float32", scheduler="default")
    denoiser = getattr(pipeline, spec.denoiser)
    return spec.denoiser, denoiser, spec.pipeline_class, list(spec.lora_targets)


def build_tiny_lora_checkpoint(
    model_dir: Path, folder: Path, *, seed: int = 1, rank: int = 4
) -> Path:
    """Save a random rank-`rank` LoRA for the denoiser of the model at `model_dir` into `folder`."""
    name, denoiser, pipeline_class, targets = _base_denoiser(model_dir)
    torch.manual_seed(seed)
    # init_lora_weights=False: random A and B, so the adapter changes the output (peft's default
    # initialises B to zero, which leaves the model unchanged).
    denoiser.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=False)
    )
    layers = lora_layers(name, denoiser)
    folder.mkdir(parents=True, exist_ok=True)
    pipeline_class.save_lora_weights(folder, **{f"{name}_lora_layers": layers})
    return folder


def build_tiny_full_checkpoint(model_dir: Path, folder: Path, *, seed: int = 1) -> Path:
    """Save the denoiser of the model at `model_dir`, every weight scaled by 1 + N(0, 0.1²)."""
    name, denoiser, _, _ = _base_denoiser(model_dir)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in denoiser.parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            parameter.mul_(1 + 0.1 * noise)
    denoiser.save_pretrained(folder / name, safe_serialization=True)
    return folder
