"""Training objectives: what is trained, its loss on a batch, and how the result is saved.

An objective owns the frozen parts (VAE, text encoder) and the trainable module that DeepSpeed
wraps; `loss` receives the wrapped module (the engine, called like the module) so that ZeRO's
hooks run. One module per editor family, sharing `base` (the protocol, denoiser init and save):

- `ip2p.InstructPix2PixObjective`: latent noise prediction with the source latents concatenated
  to the noisy target latents (8 input channels) and CLIP text embeddings, with conditioning
  dropout for classifier-free guidance (Brooks et al. 2023, "InstructPix2Pix", sec. 3.4; as in
  diffusers' `train_instruct_pix2pix.py`). Saved as the editor's own checkpoint: `unet/`
  (full) or `pytorch_lora_weights.safetensors` (LoRA), what `InstructionEditor.use_checkpoint`
  loads on top of the base model.
- `flow.FlowMatchingObjective`: rectified-flow velocity prediction for the transformer editors
  (FLUX.1 Kontext, Qwen-Image-Edit): noise levels from a logit-normal (Esser et al. 2024, "Scaling
  Rectified Flow Transformers", sec. 3.1), the clean source-image tokens appended to the noisy
  target tokens as the pipelines do at inference, as in diffusers'
  `train_dreambooth_lora_flux_kontext.py`. Saved as `transformer/` or a LoRA, like the above.
- `pixel.PixelObjective`: the pixel editor's DDPM loss (`policies.pixel_editor.diffusion_loss`);
  saved as a complete pixel editor folder.
"""

from pathlib import Path

import torch

from policies.pipelines import pipeline_spec
from policies.pixel_editor import is_pixel_editor
from policies.training.config import TrainConfig
from policies.training.objectives.base import Objective, ZeroInit
from policies.training.objectives.flow import FlowMatchingObjective
from policies.training.objectives.ip2p import InstructPix2PixObjective
from policies.training.objectives.pixel import PixelObjective


def objective_name(config: TrainConfig) -> str:
    """`ip2p`, `flow` or `pixel`: as configured, or from the model folder when `auto`."""
    if config.objective != "auto":
        return config.objective
    if is_pixel_editor(config.model):
        return "pixel"
    spec = pipeline_spec("auto", Path(config.model))
    return "flow" if spec.denoiser == "transformer" else "ip2p"


def build_objective(
    config: TrainConfig,
    device: torch.device,
    dtype: torch.dtype,
    zero_init: ZeroInit | None = None,
) -> Objective:
    """The objective of `config`, every part in `dtype` (the compute dtype), the frozen ones on
    `device`; with `zero_init` (ZeRO-3) the denoiser is built partitioned (the pixel editor,
    1.7 M parameters, is built whole)."""
    name = objective_name(config)
    if name == "pixel":
        return PixelObjective(config, device, dtype)
    if name == "flow":
        return FlowMatchingObjective(config, device, dtype, zero_init)
    return InstructPix2PixObjective(config, device, dtype, zero_init)
