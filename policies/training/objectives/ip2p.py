"""InstructPix2Pix fine-tuning of a UNet editor: noise prediction with the source latents
concatenated to the noisy target latents and conditioning dropout (Brooks et al. 2023, sec. 3.4)."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from policies.loading import load_pipeline
from policies.pipelines import pipeline_spec
from policies.training.config import TrainConfig
from policies.training.objectives.base import Batch, init_denoiser, save_denoiser


class InstructPix2PixObjective:
    """InstructPix2Pix training of the UNet of a `StableDiffusionInstructPix2PixPipeline`."""

    def __init__(self, config: TrainConfig, device: torch.device, dtype: torch.dtype) -> None:
        model_dir = Path(config.model)
        spec = pipeline_spec("auto", model_dir)
        if spec.denoiser != "unet" or spec.latent_patch != 1:
            raise ValueError(
                f"model={config.model!r} is a {spec.name}: the InstructPix2Pix objective trains "
                "UNet editors (train transformer editors with objective=flow)"
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
        init_denoiser(pipeline, "unet", config)
        self.vae = pipeline.vae.requires_grad_(False).eval().to(device, dtype)
        self.text_encoder = pipeline.text_encoder.requires_grad_(False).eval().to(device, dtype)
        self.tokenizer = pipeline.tokenizer
        # The training noise schedule of the model (its inference scheduler's betas, DDPM).
        self.noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
        self.scaling_factor = pipeline.vae.config.scaling_factor
        self.drops = (config.drop_text, config.drop_image, config.drop_both)
        with torch.no_grad():
            self.null_text = self._encode_text([""])  # (1, L, D): the "no instruction" condition

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
        save_denoiser(self.pipeline_class, self.unet, "unet", self.kind, folder)
