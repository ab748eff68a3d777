"""InstructPix2Pix fine-tuning of a UNet editor: noise prediction with the source latents
concatenated to the noisy target latents and conditioning dropout (Brooks et al. 2023, sec. 3.4)."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from policies.pipelines import pipeline_spec
from policies.training.config import TrainConfig
from policies.training.encodings import Encoding
from policies.training.objectives.base import (
    Batch,
    ZeroInit,
    init_denoiser,
    load_denoiser,
    save_denoiser,
    set_gradient_checkpointing,
)


class InstructPix2PixObjective:
    """InstructPix2Pix training of the UNet of a `StableDiffusionInstructPix2PixPipeline`.

    The frozen VAE and CLIP text encoder run ahead of training (`encode_examples`: the target's
    latent posterior, the source's latent mode, the instruction's embeddings), so `free_encoders`
    can drop them before the loop; `loss` on raw images encodes on the fly.
    """

    # The frozen components whose outputs are cached (the cache key follows their weights).
    encoders = ("vae", "text_encoder")

    def __init__(
        self,
        config: TrainConfig,
        device: torch.device,
        dtype: torch.dtype,
        zero_init: ZeroInit | None = None,
    ) -> None:
        model_dir = Path(config.model)
        spec = pipeline_spec("auto", model_dir)
        if spec.denoiser != "unet" or spec.latent_patch != 1:
            raise ValueError(
                f"model={config.model!r} is a {spec.name}: the InstructPix2Pix objective trains "
                "UNet editors (train transformer editors with objective=flow)"
            )
        # Every component straight in the compute dtype: DeepSpeed keeps the fp32 master weights.
        unet = load_denoiser(spec, model_dir, dtype, zero_init)
        pipeline = spec.pipeline_class.from_pretrained(
            model_dir, unet=unet, dtype=dtype, low_cpu_mem_usage=True, local_files_only=True
        )
        self.pipeline_class = spec.pipeline_class
        self.kind = config.mode
        self.device = device
        self.dtype = dtype
        self.unet = pipeline.unet
        self.model_dir = model_dir
        self.multiple = pipeline.vae_scale_factor
        self.train_resolution = spec.train_resolution
        if self.unet.config.in_channels != 2 * pipeline.vae.config.latent_channels:
            raise ValueError(
                f"model={config.model!r}: the UNet takes {self.unet.config.in_channels} channels, "
                "not noisy + source latents"
            )
        init_denoiser(
            pipeline, "unet", config, spec.lora_targets, partitioned=zero_init is not None
        )
        set_gradient_checkpointing(self.unet, config, spec)
        self.vae: Any = pipeline.vae.requires_grad_(False).eval().to(device)
        self.text_encoder: Any = pipeline.text_encoder.requires_grad_(False).eval().to(device)
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

    # ---- the frozen part ---------------------------------------------------------------

    def encode(self, batch: Batch) -> dict[str, torch.Tensor]:
        """A batch of images and instructions → what `loss_encoded` reads (batched)."""
        source = batch["source"].to(self.device, self.dtype)  # (B, 3, H, W) in [-1, 1]
        target = batch["target"].to(self.device, self.dtype)
        with torch.no_grad():
            posterior = self.vae.encode(target).latent_dist
            # The pipeline conditions on the unscaled mode of the source latents; so does training.
            source_latents = self.vae.encode(source).latent_dist.mode()
            text = self._encode_text(list(batch["instruction"]))
        return {
            "target_mean": posterior.mean,
            "target_std": posterior.std,
            "source_latents": source_latents,
            "text": text,
        }

    def encode_examples(self, batch: Batch) -> list[Encoding]:
        """Per-example encodings (CPU), for the cache."""
        encoded = self.encode(batch)
        return [{k: v[i].cpu() for k, v in encoded.items()} for i in range(len(batch["source"]))]

    def collate(self, encodings: list[Encoding]) -> dict[str, torch.Tensor]:
        """A micro-batch of cached encodings (every tensor has one shape per bucket)."""
        return {key: torch.stack([e[key] for e in encodings]) for key in encodings[0]}

    def free_encoders(self) -> None:
        """Drop the VAE and the text encoder: training reads cached encodings from now on."""
        self.vae = self.text_encoder = None

    # ---- the loss ----------------------------------------------------------------------

    def loss(
        self, model: Callable[..., Any], batch: Batch, generator: torch.Generator
    ) -> torch.Tensor:
        """The loss of a batch of images and instructions (encoded here)."""
        return self.loss_encoded(model, self.encode(batch), generator)

    def loss_encoded(
        self,
        model: Callable[..., Any],
        encoded: dict[str, torch.Tensor],
        generator: torch.Generator,
    ) -> torch.Tensor:
        """The loss of a batch of encodings; all randomness from `generator`."""
        encoded = {k: v.to(self.device, self.dtype) for k, v in encoded.items()}
        mean, std = encoded["target_mean"], encoded["target_std"]
        size = len(mean)
        # A sample of the target's latent posterior (what latent_dist.sample draws).
        latents = mean + std * torch.randn(mean.shape, generator=generator).to(mean)
        latents = latents * self.scaling_factor
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
        text = encoded["text"]
        text = torch.where(no_text[:, None, None], self.null_text.to(text), text)
        source_latents = encoded["source_latents"]
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

    def save(self, folder: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        save_denoiser(self.pipeline_class, self.unet, "unet", self.kind, folder, state_dict)
