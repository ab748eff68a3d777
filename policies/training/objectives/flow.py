"""Rectified-flow fine-tuning of the transformer editors (FLUX.1 Kontext, Qwen-Image-Edit):
velocity prediction on the target tokens, the clean source tokens appended as at inference."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, QwenImageEditPipeline
from diffusers.training_utils import compute_density_for_timestep_sampling

from policies.loading import load_pipeline
from policies.pipelines import pipeline_spec
from policies.training.config import TrainConfig
from policies.training.objectives.base import Batch, init_denoiser, save_denoiser

# TrainConfig.timestep_sampling -> diffusers' `weighting_scheme` name for the same density.
_TIMESTEP_SCHEMES = {"logit_normal": "logit_normal", "uniform": "none"}
# The logit-normal's location and scale: SD3's choice (Esser et al. 2024, sec. 5.1), also the
# --logit_mean / --logit_std defaults of diffusers' `train_dreambooth_lora_flux_kontext.py`.
_LOGIT_MEAN, _LOGIT_STD = 0.0, 1.0


class _KontextInputs:
    """How `FluxKontextPipeline.__call__` (diffusers 0.42) feeds its transformer.

    Latents are (B, C, h, w); the source's tokens follow the target's along the sequence, with
    position ids whose first axis is 1 instead of 0 (`prepare_latents`).
    """

    null_prompt = ""  # the instruction of a text-dropped example

    def __init__(self, pipeline: FluxKontextPipeline, guidance: float) -> None:
        self.pipeline = pipeline
        self.shift = pipeline.vae.config.shift_factor
        self.scale = pipeline.vae.config.scaling_factor
        # FLUX.1 Kontext [dev] is guidance-distilled: the guidance scale is an input of the model;
        # training gives it the editor's default for that knob (`policies.pipelines`).
        self.guidance = guidance if pipeline.transformer.config.guidance_embeds else None

    def latents(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """(B, 3, R, R) in [-1, 1] → (B, C, R/f, R/f) normalised latents: a posterior sample
        from `generator`, or (None) its mode, as the pipeline encodes its source image."""
        posterior = self.pipeline.vae.encode(images).latent_dist
        latents = posterior.mode() if generator is None else posterior.sample(generator)
        return (latents - self.shift) * self.scale

    def text(self, instructions: list[str], source: torch.Tensor) -> dict[str, torch.Tensor]:
        """The transformer's text inputs: T5 tokens (B, 512, D), pooled CLIP (B, P), their ids."""
        embeds, pooled, text_ids = self.pipeline.encode_prompt(
            prompt=instructions, prompt_2=None, device=source.device
        )
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled, "txt_ids": text_ids}

    def predict(
        self,
        model: Callable[..., Any],
        noisy: torch.Tensor,
        source: torch.Tensor,
        sigmas: torch.Tensor,
        text: dict[str, torch.Tensor],
        latent_size: tuple[int, int],
    ) -> torch.Tensor:
        """Velocity of the noisy target tokens (B, N, 4C), given the source tokens (B, N, 4C)."""
        size, (height, width) = len(noisy), latent_size
        ids = self.pipeline._prepare_latent_image_ids(
            size, height // 2, width // 2, noisy.device, noisy.dtype
        )
        source_ids = ids.clone()
        source_ids[..., 0] = 1
        guidance = None
        if self.guidance is not None:
            guidance = torch.full((size,), self.guidance, device=noisy.device, dtype=torch.float32)
        output = model(
            hidden_states=torch.cat([noisy, source], dim=1),
            # The pipeline passes timestep / 1000 with timestep = sigma * 1000: the noise level.
            timestep=sigmas,
            guidance=guidance,
            img_ids=torch.cat([ids, source_ids], dim=0),
            return_dict=False,
            **text,
        )[0]
        return output[:, : noisy.shape[1]]


class _QwenInputs:
    """How `QwenImageEditPipeline.__call__` (diffusers 0.42) feeds its transformer.

    Latents are video-shaped, (B, C, 1, h, w); the vision-language encoder reads the instruction
    together with the source image; the source's tokens follow the target's, described by
    `img_shapes`.
    """

    # The negative prompt the editor's true CFG contrasts with (`policies.pipelines`, after the
    # model card): text dropout trains that very condition.
    null_prompt = " "

    def __init__(self, pipeline: QwenImageEditPipeline) -> None:
        if pipeline.transformer.config.guidance_embeds:
            raise ValueError(
                "a guidance-distilled Qwen-Image transformer: the editor drives Qwen-Image-Edit "
                "with true classifier-free guidance only, so it is not trained here"
            )
        self.pipeline = pipeline
        config = pipeline.vae.config
        self.mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1)
        self.std = torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1)

    def latents(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """(B, 3, R, R) in [-1, 1] → (B, C, 1, R/f, R/f) normalised latents: a posterior sample
        from `generator`, or (None) its mode, as the pipeline encodes its source image."""
        posterior = self.pipeline.vae.encode(images[:, :, None]).latent_dist
        latents = posterior.mode() if generator is None else posterior.sample(generator)
        return (latents - self.mean.to(latents)) / self.std.to(latents)

    def text(self, instructions: list[str], source: torch.Tensor) -> dict[str, Any]:
        """The transformer's text inputs: the encoder's hidden states (B, L, D) of the prompt
        template with the source image, and their padding mask (None when nothing is padded)."""
        # The pipeline gives the encoder the resized PIL source; the same from the tensor.
        images = self.pipeline.image_processor.postprocess(source, output_type="pil")
        embeds, mask = self.pipeline.encode_prompt(
            prompt=instructions, image=images, device=source.device
        )
        return {"encoder_hidden_states": embeds, "encoder_hidden_states_mask": mask}

    def predict(
        self,
        model: Callable[..., Any],
        noisy: torch.Tensor,
        source: torch.Tensor,
        sigmas: torch.Tensor,
        text: dict[str, Any],
        latent_size: tuple[int, int],
    ) -> torch.Tensor:
        """Velocity of the noisy target tokens (B, N, 4C), given the source tokens (B, N, 4C)."""
        height, width = latent_size
        shape = (1, height // 2, width // 2)
        output = model(
            hidden_states=torch.cat([noisy, source], dim=1),
            timestep=sigmas,  # the pipeline's timestep / 1000: the noise level
            img_shapes=[[shape, shape]] * len(noisy),
            return_dict=False,
            **text,
        )[0]
        return output[:, : noisy.shape[1]]


class FlowMatchingObjective:
    """Rectified-flow training of the transformer of a FLUX.1 Kontext or Qwen-Image-Edit editor.

    x_s = (1 - s) x0 + s noise at a noise level s drawn per example, the transformer predicts
    noise - x0 on the target tokens while reading the clean source tokens after them (diffusers'
    `train_dreambooth_lora_flux_kontext.py`, with the source as its conditioning image). These
    pipelines always condition on the source (no image guidance), so only the instruction is
    dropped: with probability drop_text + drop_both it becomes the empty prompt (Qwen-Image-Edit:
    the editor's negative prompt, a space); drop_image is not used.
    """

    def __init__(self, config: TrainConfig, device: torch.device, dtype: torch.dtype) -> None:
        model_dir = Path(config.model)
        spec = pipeline_spec("auto", model_dir)
        if spec.pipeline_class not in (FluxKontextPipeline, QwenImageEditPipeline):
            raise ValueError(
                f"model={config.model!r} is a {spec.name}: the flow-matching objective trains "
                "FluxKontextPipeline and QwenImageEditPipeline transformers"
            )
        # Loaded in fp32: DeepSpeed casts the trained module itself for bf16/fp16.
        pipeline = load_pipeline(
            spec, model_dir, device="cpu", dtype="float32", scheduler="default"
        )
        # The VAE downsamples by vae_scale_factor, then 2x2 latent patches make one token.
        self.multiple = pipeline.vae_scale_factor * spec.latent_patch
        if config.resolution % self.multiple:
            raise ValueError(
                f"resolution={config.resolution}: {spec.name} at {config.model!r} needs a "
                f"multiple of {self.multiple} pixels (VAE x{pipeline.vae_scale_factor}, "
                f"{spec.latent_patch}x{spec.latent_patch} latent patches per token)"
            )
        self.pipeline_class = spec.pipeline_class
        self.kind = config.mode
        self.device = device
        self.dtype = dtype
        self.transformer = pipeline.transformer
        init_denoiser(pipeline, "transformer", config)
        for name, component in pipeline.components.items():
            if isinstance(component, torch.nn.Module) and name != "transformer":
                component.requires_grad_(False).eval().to(device, dtype)
        # The pipeline's own encoders, packing and position ids, wrapped per family.
        self.inputs: _KontextInputs | _QwenInputs
        if isinstance(pipeline, FluxKontextPipeline):
            self.inputs = _KontextInputs(pipeline, spec.defaults["guidance_scale"])
        else:
            self.inputs = _QwenInputs(pipeline)
        self.pack = pipeline._pack_latents
        # The training noise levels: the scheduler's 1000 sigmas from 1 down to 1/1000 (shifted
        # only if its config shifts statically), indexed by the drawn u as in diffusers' scripts.
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipeline.scheduler.config)
        self.sigmas = scheduler.sigmas.clone()
        self.scheme = _TIMESTEP_SCHEMES[config.timestep_sampling]
        self.drop_text = config.drop_text + config.drop_both

    def trainable(self) -> torch.nn.Module:
        return self.transformer

    def loss(
        self, model: Callable[..., Any], batch: Batch, generator: torch.Generator
    ) -> torch.Tensor:
        source = batch["source"].to(self.device, self.dtype)  # (B, 3, R, R) in [-1, 1]
        target = batch["target"].to(self.device, self.dtype)
        if source.shape != target.shape or target.shape[-1] % self.multiple:
            raise ValueError(
                f"batch source {tuple(source.shape)}, target {tuple(target.shape)}: give equal "
                f"shapes whose sides are multiples of {self.multiple} pixels"
            )
        size = len(target)
        # Text dropout, so that classifier-free guidance has an unconditional model to contrast
        # with (InstructPix2Pix sec. 3.4; Qwen-Image-Edit's true CFG).
        keep = torch.rand(size, generator=generator) >= self.drop_text
        null = self.inputs.null_prompt
        instructions = [
            text if kept else null for text, kept in zip(batch["instruction"], keep, strict=True)
        ]
        with torch.no_grad():
            x0 = self.inputs.latents(target, generator)
            # The pipelines condition on the mode of the source latents; so does training.
            cond = self.inputs.latents(source, None)
            text = self.inputs.text(instructions, source)
        channels, (height, width) = x0.shape[1], x0.shape[-2:]
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        u = compute_density_for_timestep_sampling(
            weighting_scheme=self.scheme,
            batch_size=size,
            logit_mean=_LOGIT_MEAN,
            logit_std=_LOGIT_STD,
            generator=generator,
        )
        sigmas = self.sigmas[(u * len(self.sigmas)).long()].to(x0)  # (B,)
        s = sigmas.view(size, *[1] * (x0.ndim - 1))
        noisy = (1 - s) * x0 + s * noise
        prediction = self.inputs.predict(
            model,
            self.pack(noisy, size, channels, height, width),
            self.pack(cond, size, channels, height, width),
            sigmas,
            text,
            (height, width),
        )
        wanted = self.pack(noise - x0, size, channels, height, width)
        # Unweighted: for both densities diffusers' compute_loss_weighting_for_sd3 gives weight 1.
        return F.mse_loss(prediction.float(), wanted.float())

    def save(self, folder: Path) -> None:
        save_denoiser(self.pipeline_class, self.transformer, "transformer", self.kind, folder)
