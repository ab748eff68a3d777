"""Rectified-flow fine-tuning of the transformer editors (FLUX.1 Kontext, Qwen-Image-Edit):
velocity prediction on the target tokens, the clean source tokens appended as at inference."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, QwenImageEditPipeline
from diffusers.training_utils import compute_density_for_timestep_sampling

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

# TrainConfig.timestep_sampling -> diffusers' `weighting_scheme` name for the same density.
_TIMESTEP_SCHEMES = {"logit_normal": "logit_normal", "uniform": "none"}
# The logit-normal's location and scale: SD3's choice (Esser et al. 2024, sec. 5.1), also the
# --logit_mean / --logit_std defaults of diffusers' `train_dreambooth_lora_flux_kontext.py`.
_LOGIT_MEAN, _LOGIT_STD = 0.0, 1.0


class _KontextInputs:
    """How `FluxKontextPipeline.__call__` (diffusers 0.42) feeds its transformer.

    Latents are (B, C, h, w); the source's tokens follow the target's along the sequence, with
    position ids whose first axis is 1 instead of 0 (`prepare_latents`). The text inputs depend
    on the instruction alone: the null prompt's are computed once.
    """

    null_prompt = ""  # the instruction of a text-dropped example

    def __init__(self, pipeline: FluxKontextPipeline, guidance: float, device: torch.device):
        self.pipeline = pipeline
        self.shift = pipeline.vae.config.shift_factor
        self.scale = pipeline.vae.config.scaling_factor
        # FLUX.1 Kontext [dev] is guidance-distilled: the guidance scale is an input of the model;
        # training gives it the editor's default for that knob (`policies.pipelines`).
        self.guidance = guidance if pipeline.transformer.config.guidance_embeds else None
        with torch.no_grad():
            embeds, pooled, self.text_ids = pipeline.encode_prompt(
                prompt=[self.null_prompt], prompt_2=None, device=device
            )
        self.null = {"text": embeds[0], "pooled": pooled[0]}

    def latents(self, posterior_mean: torch.Tensor) -> torch.Tensor:
        """Normalised latents from raw VAE latents (a posterior sample or mode)."""
        return (posterior_mean - self.shift) * self.scale

    def posterior(self, images: torch.Tensor) -> Any:
        """(B, 3, H, W) in [-1, 1] → the VAE's latent posterior (B, C, H/f, W/f)."""
        return self.pipeline.vae.encode(images).latent_dist

    def text(self, instructions: list[str], source: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-batch text encodings: T5 tokens (B, 512, D) and pooled CLIP (B, P)."""
        embeds, pooled, _ = self.pipeline.encode_prompt(
            prompt=instructions, prompt_2=None, device=source.device
        )
        return {"text": embeds, "pooled": pooled}

    def null_text(self, encoded: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The null prompt's encodings, broadcast to the batch."""
        size = len(encoded["text"])
        return {k: v.to(encoded["text"]).expand(size, *v.shape) for k, v in self.null.items()}

    def collate(self, encodings: list[Encoding]) -> dict[str, torch.Tensor]:
        return {key: torch.stack([e[key] for e in encodings]) for key in encodings[0]}

    def model_inputs(self, text: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {
            "encoder_hidden_states": text["text"],
            "pooled_projections": text["pooled"],
            "txt_ids": self.text_ids.to(text["text"].device, text["text"].dtype),
        }

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
            **self.model_inputs(text),
        )[0]
        return output[:, : noisy.shape[1]]


class _QwenInputs:
    """How `QwenImageEditPipeline.__call__` (diffusers 0.42) feeds its transformer.

    Latents are video-shaped, (B, C, 1, h, w); the vision-language encoder reads the instruction
    together with the source image, so even the null prompt's encodings are per example; the
    source's tokens follow the target's, described by `img_shapes`. Text encodings vary in
    length: a batch is zero-padded at the end with a mask, as `encode_prompt` pads.
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

    def latents(self, raw: torch.Tensor) -> torch.Tensor:
        """Normalised latents from raw VAE latents (a posterior sample or mode)."""
        return (raw - self.mean.to(raw)) / self.std.to(raw)

    def posterior(self, images: torch.Tensor) -> Any:
        """(B, 3, H, W) in [-1, 1] → the VAE's latent posterior (B, C, 1, H/f, W/f)."""
        return self.pipeline.vae.encode(images[:, :, None]).latent_dist

    def _encode(self, prompts: list[str], source: torch.Tensor) -> list[torch.Tensor]:
        # The pipeline gives the encoder the resized PIL source; the same from the tensor.
        images = self.pipeline.image_processor.postprocess(source, output_type="pil")
        embeds, mask = self.pipeline.encode_prompt(
            prompt=prompts, image=images, device=source.device
        )
        lengths = [len(embeds[0])] * len(embeds) if mask is None else mask.sum(1).tolist()
        return [row[:length] for row, length in zip(embeds, lengths, strict=True)]

    def text(self, instructions: list[str], source: torch.Tensor) -> dict[str, Any]:
        """Per-example encodings (unpadded) of the instruction and of the null prompt, each
        read with the source image."""
        return {
            "text": self._encode(instructions, source),
            "null_text": self._encode([self.null_prompt] * len(instructions), source),
        }

    def collate(self, encodings: list[Encoding]) -> dict[str, Any]:
        batch: dict[str, Any] = {
            key: torch.stack([e[key] for e in encodings])
            for key in encodings[0]
            if key not in ("text", "null_text")
        }
        batch["text"] = [e["text"] for e in encodings]
        batch["null_text"] = [e["null_text"] for e in encodings]
        return batch

    def choose(self, text: dict[str, Any], keep: torch.Tensor) -> dict[str, Any]:
        """Zero-padded encoder states (B, L, D) and mask (None when nothing is padded) of each
        example's instruction (`keep`) or null prompt."""
        rows = [
            t if kept else n
            for t, n, kept in zip(text["text"], text["null_text"], keep, strict=True)
        ]
        longest = max(len(row) for row in rows)
        states = torch.stack([F.pad(row, (0, 0, 0, longest - len(row))) for row in rows])
        mask = torch.stack(
            [torch.cat([torch.ones(len(row)), torch.zeros(longest - len(row))]) for row in rows]
        ).to(states.device, torch.long)
        return {
            "encoder_hidden_states": states,
            "encoder_hidden_states_mask": None if bool(mask.all()) else mask,
        }

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

    The frozen VAE and text encoders run ahead of training (`encode_examples`), so that
    `free_encoders` can drop them (T5-XXL or a 7B Qwen2.5-VL) before the loop.
    """

    def __init__(
        self,
        config: TrainConfig,
        device: torch.device,
        dtype: torch.dtype,
        zero_init: ZeroInit | None = None,
    ) -> None:
        model_dir = Path(config.model)
        spec = pipeline_spec("auto", model_dir)
        if spec.pipeline_class not in (FluxKontextPipeline, QwenImageEditPipeline):
            raise ValueError(
                f"model={config.model!r} is a {spec.name}: the flow-matching objective trains "
                "FluxKontextPipeline and QwenImageEditPipeline transformers"
            )
        # Every component straight in the compute dtype: DeepSpeed keeps the fp32 master weights.
        transformer = load_denoiser(spec, model_dir, dtype, zero_init)
        pipeline = spec.pipeline_class.from_pretrained(
            model_dir,
            transformer=transformer,
            dtype=dtype,
            low_cpu_mem_usage=True,
            local_files_only=True,
            **spec.extra_components(model_dir),
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
        self.model_dir = model_dir
        self.train_resolution = spec.train_resolution
        self.encoders = tuple(
            name
            for name, component in pipeline.components.items()
            if isinstance(component, torch.nn.Module) and name != "transformer"
        )
        self.kind = config.mode
        self.device = device
        self.dtype = dtype
        self.transformer = pipeline.transformer
        init_denoiser(
            pipeline, "transformer", config, spec.lora_targets, partitioned=zero_init is not None
        )
        set_gradient_checkpointing(self.transformer, config, spec)
        for name in self.encoders:
            getattr(pipeline, name).requires_grad_(False).eval().to(device)
        self.pipeline: Any = pipeline
        # The pipeline's own encoders, packing and position ids, wrapped per family.
        self.inputs: _KontextInputs | _QwenInputs
        if isinstance(pipeline, FluxKontextPipeline):
            self.inputs = _KontextInputs(pipeline, spec.defaults["guidance_scale"], device)
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

    # ---- the frozen part ---------------------------------------------------------------

    def encode(self, batch: Batch) -> dict[str, Any]:
        """A batch of images and instructions → what `loss_encoded` reads."""
        source = batch["source"].to(self.device, self.dtype)  # (B, 3, H, W) in [-1, 1]
        target = batch["target"].to(self.device, self.dtype)
        if source.shape != target.shape or target.shape[-1] % self.multiple:
            raise ValueError(
                f"batch source {tuple(source.shape)}, target {tuple(target.shape)}: give equal "
                f"shapes whose sides are multiples of {self.multiple} pixels"
            )
        with torch.no_grad():
            posterior = self.inputs.posterior(target)
            # The pipelines condition on the mode of the source latents; so does training.
            source_latents = self.inputs.posterior(source).mode()
            text = self.inputs.text(list(batch["instruction"]), source)
        return {
            "target_mean": posterior.mean,
            "target_std": posterior.std,
            "source_latents": source_latents,
            **text,
        }

    def encode_examples(self, batch: Batch) -> list[Encoding]:
        """Per-example encodings (CPU), for the cache."""
        encoded = self.encode(batch)
        return [{k: v[i].cpu() for k, v in encoded.items()} for i in range(len(batch["source"]))]

    def collate(self, encodings: list[Encoding]) -> dict[str, Any]:
        """A micro-batch of cached encodings."""
        return self.inputs.collate(encodings)

    def free_encoders(self) -> None:
        """Drop the VAE and the text encoders: training reads cached encodings from now on."""
        # The pipeline object stays: its transformer, packing and position ids are still used.
        for name in self.encoders:
            setattr(self.pipeline, name, None)

    # ---- the loss ----------------------------------------------------------------------

    def loss(
        self, model: Callable[..., Any], batch: Batch, generator: torch.Generator
    ) -> torch.Tensor:
        """The loss of a batch of images and instructions (encoded here)."""
        return self.loss_encoded(model, self.encode(batch), generator)

    def loss_encoded(
        self, model: Callable[..., Any], encoded: dict[str, Any], generator: torch.Generator
    ) -> torch.Tensor:
        """The loss of a batch of encodings; all randomness from `generator`."""
        mean = encoded["target_mean"].to(self.device, self.dtype)
        std = encoded["target_std"].to(mean)
        size = len(mean)
        # Text dropout, so that classifier-free guidance has an unconditional model to contrast
        # with (InstructPix2Pix sec. 3.4; Qwen-Image-Edit's true CFG).
        keep = torch.rand(size, generator=generator) >= self.drop_text
        # A sample of the target's latent posterior (what latent_dist.sample draws).
        x0 = self.inputs.latents(mean + std * torch.randn(mean.shape, generator=generator).to(mean))
        cond = self.inputs.latents(encoded["source_latents"].to(mean))
        text = self._text(encoded, keep)
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

    def _text(self, encoded: dict[str, Any], keep: torch.Tensor) -> dict[str, Any]:
        if isinstance(self.inputs, _QwenInputs):
            rows = {
                key: [row.to(self.device, self.dtype) for row in encoded[key]]
                for key in ("text", "null_text")
            }
            return self.inputs.choose(rows, keep)
        text = {k: encoded[k].to(self.device, self.dtype) for k in ("text", "pooled")}
        null = self.inputs.null_text(text)
        kept = keep.to(self.device)
        chosen = {
            "text": torch.where(kept[:, None, None], text["text"], null["text"]),
            "pooled": torch.where(kept[:, None], text["pooled"], null["pooled"]),
        }
        return chosen

    def save(self, folder: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        save_denoiser(
            self.pipeline_class, self.transformer, "transformer", self.kind, folder, state_dict
        )
