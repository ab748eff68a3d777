"""Training objectives: what is trained, its loss on a batch, and how the result is saved.

An objective owns the frozen parts (VAE, text encoder) and the trainable module that DeepSpeed
wraps; `loss` receives the wrapped module (the engine, called like the module) so that ZeRO's
hooks run. Two objectives, one per editor family:

- `InstructPix2PixObjective`: latent noise prediction with the source latents concatenated to
  the noisy target latents (8 input channels) and CLIP text embeddings, with conditioning
  dropout for classifier-free guidance (Brooks et al. 2023, "InstructPix2Pix", sec. 3.4; as in
  diffusers' `train_instruct_pix2pix.py`). Saved as the editor's own checkpoint: `unet/`
  (full) or `pytorch_lora_weights.safetensors` (LoRA), what `InstructionEditor.use_checkpoint`
  loads on top of the base model.
- `PixelObjective`: the pixel editor's DDPM loss (`policies.pixel_editor.diffusion_loss`);
  saved as a complete pixel editor folder.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from policies.checkpoints import inspect_checkpoint, load_weights_in_place
from policies.loading import load_pipeline
from policies.pipelines import pipeline_spec
from policies.pixel_editor import CONFIG_NAME, PixelEditorModel, diffusion_loss
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


def objective_name(config: TrainConfig) -> str:
    """`ip2p` or `pixel`: as configured, or from the model folder when `auto`."""
    if config.objective != "auto":
        return config.objective
    return "pixel" if (Path(config.model) / CONFIG_NAME).is_file() else "ip2p"


def build_objective(config: TrainConfig, device: torch.device, dtype: torch.dtype) -> Objective:
    """The objective of `config`, its frozen parts on `device` in `dtype` (the compute dtype)."""
    name = objective_name(config)
    if name == "pixel":
        return PixelObjective(config, device)
    return InstructPix2PixObjective(config, device, dtype)


class InstructPix2PixObjective:
    """InstructPix2Pix training of the UNet of a `StableDiffusionInstructPix2PixPipeline`."""

    def __init__(self, config: TrainConfig, device: torch.device, dtype: torch.dtype) -> None:
        model_dir = Path(config.model)
        spec = pipeline_spec("auto", model_dir)
        if spec.denoiser != "unet" or spec.latent_patch != 1:
            raise ValueError(
                f"model={config.model!r} is a {spec.name}: the InstructPix2Pix objective trains "
                "UNet editors (flow-matching transformers are not supported yet)"
            )
        # Loaded in fp32: DeepSpeed casts the trained module itself for bf16/fp16.
        pipeline = load_pipeline(
            spec, model_dir, device="cpu", dtype="float32", scheduler="default"
        )
        self.pipeline_class = spec.pipeline_class
        self.kind = config.mode
        self.device = device
        self.dtype = dtype
        self.unet = pipeline.unet
        if self.unet.config.in_channels != 2 * pipeline.vae.config.latent_channels:
            raise ValueError(
                f"model={config.model!r}: the UNet takes {self.unet.config.in_channels} channels, "
                "not noisy + source latents"
            )
        self._init_weights(pipeline, config)
        self.vae = pipeline.vae.requires_grad_(False).eval().to(device, dtype)
        self.text_encoder = pipeline.text_encoder.requires_grad_(False).eval().to(device, dtype)
        self.tokenizer = pipeline.tokenizer
        # The training noise schedule of the model (its inference scheduler's betas, DDPM).
        self.noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
        self.scaling_factor = pipeline.vae.config.scaling_factor
        self.drops = (config.drop_text, config.drop_image, config.drop_both)
        with torch.no_grad():
            self.null_text = self._encode_text([""])  # (1, L, D): the "no instruction" condition

    def _init_weights(self, pipeline: Any, config: TrainConfig) -> None:
        """Start from the parent checkpoint (if any) and set what is trainable."""
        layout = None
        if config.init_checkpoint:
            modules = [n for n, c in pipeline.components.items() if isinstance(c, torch.nn.Module)]
            layout = inspect_checkpoint(Path(config.init_checkpoint), modules)
            if layout.kind == "full" and layout.components != ("unet",):
                raise ValueError(
                    f"init_checkpoint={config.init_checkpoint!r} holds {list(layout.components)};"
                    " only unet/ is trained here"
                )
        if config.mode == "full":
            if layout is not None and layout.kind == "full":
                load_weights_in_place(self.unet, Path(config.init_checkpoint) / "unet")
            elif layout is not None:
                # A LoRA parent becomes part of the weights that are now trained in full.
                pipeline.load_lora_weights(config.init_checkpoint)
                pipeline.fuse_lora(components=["unet"])
                pipeline.unload_lora_weights()
            self.unet.requires_grad_(True)
            return
        if layout is not None and layout.kind == "full":
            raise ValueError(
                f"init_checkpoint={config.init_checkpoint!r} holds full weights, but a LoRA is "
                "applied on the base weights by the editor: train mode=full on top of it"
            )
        self.unet.requires_grad_(False)
        if layout is None:
            # Gaussian A and zero B (peft's default, as diffusers' LoRA scripts): the adapter
            # starts as the identity, so step 0 is the parent model.
            self.unet.add_adapter(
                LoraConfig(
                    r=config.lora_rank,
                    lora_alpha=config.lora_alpha,
                    init_lora_weights="gaussian",
                    target_modules=LORA_TARGETS,
                )
            )
        else:
            pipeline.load_lora_weights(config.init_checkpoint, adapter_name="default")
            rank = self.unet.peft_config["default"].r
            if rank != config.lora_rank:
                raise ValueError(
                    f"lora_rank={config.lora_rank}, but init_checkpoint has rank {rank}: a LoRA "
                    "is continued at its own rank"
                )
            for name, parameter in self.unet.named_parameters():
                parameter.requires_grad_("lora_" in name)

    def trainable(self) -> torch.nn.Module:
        return self.unet

    def _encode_text(self, instructions: list[str]) -> torch.Tensor:
        ids = self.tokenizer(
            instructions,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return self.text_encoder(ids.to(self.device))[0]

    def loss(
        self, model: Callable[..., Any], batch: Batch, generator: torch.Generator
    ) -> torch.Tensor:
        source = batch["source"].to(self.device, self.dtype)  # (B, 3, R, R) in [-1, 1]
        target = batch["target"].to(self.device, self.dtype)
        size = len(target)
        with torch.no_grad():
            latents = self.vae.encode(target).latent_dist.sample(generator) * self.scaling_factor
            # The pipeline conditions on the unscaled mode of the source latents; so does training.
            source_latents = self.vae.encode(source).latent_dist.mode()
            text = self._encode_text(list(batch["instruction"]))
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (size,), generator=generator).to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        # Conditioning dropout: one uniform draw per example, bands [text only | both | image
        # only] of the configured widths, so each probability is exactly as configured.
        drop_text, drop_image, drop_both = self.drops
        u = torch.rand(size, generator=generator).to(self.device)
        no_text = u < drop_text + drop_both
        no_image = (u >= drop_text) & (u < drop_text + drop_both + drop_image)
        text = torch.where(no_text[:, None, None], self.null_text.to(text), text)
        source_latents = source_latents * (~no_image).to(source_latents)[:, None, None, None]
        sample = torch.cat([noisy, source_latents], dim=1)
        prediction = model(sample, timesteps, encoder_hidden_states=text).sample
        kind = self.noise_scheduler.config.prediction_type
        if kind == "epsilon":
            wanted = noise
        elif kind == "v_prediction":
            wanted = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            raise ValueError(f"prediction_type={kind!r} of the scheduler is not supported")
        return F.mse_loss(prediction.float(), wanted.float())

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if self.kind == "full":
            self.unet.save_pretrained(folder / "unet", safe_serialization=True)
            return
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(self.unet))
        self.pipeline_class.save_lora_weights(
            folder,
            unet_lora_layers=layers,
            # rank and alpha travel with the weights; without them alpha is taken to be the rank.
            unet_lora_adapter_metadata=self.unet.peft_config["default"].to_dict(),
        )


class PixelObjective:
    """DDPM training of the whole pixel editor (UNet and instruction embeddings)."""

    kind = "full"

    def __init__(self, config: TrainConfig, device: torch.device) -> None:
        if config.mode != "full":
            raise ValueError(f"mode={config.mode!r}: the pixel editor is trained in full")
        # A pixel checkpoint is a complete editor folder: the parent replaces the base.
        folder = config.init_checkpoint or config.model
        self.model = PixelEditorModel.from_pretrained(folder).train().to(device)
        self.model.requires_grad_(True)
        if config.resolution != self.model.config.size:
            raise ValueError(
                f"resolution={config.resolution}: the pixel editor at {folder!r} works at "
                f"{self.model.config.size}x{self.model.config.size}"
            )
        self.device = device
        self.noise_scheduler = self.model.noise_scheduler()

    def trainable(self) -> torch.nn.Module:
        return self.model

    def loss(
        self, model: Callable[..., Any], batch: Batch, generator: torch.Generator
    ) -> torch.Tensor:
        tokens = self.model.tokenizer.encode_batch(list(batch["instruction"])).to(self.device)
        source = batch["source"].to(self.device)
        target = batch["target"].to(self.device)
        # The engine is called like the model (same forward signature).
        return diffusion_loss(model, source, target, tokens, self.noise_scheduler, generator)  # type: ignore[arg-type]

    def save(self, folder: Path) -> None:
        self.model.save_pretrained(folder)
