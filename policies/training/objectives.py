"""Training objectives: what is trained, its loss on a batch, and how the result is saved.

An objective owns the frozen parts (VAE, text encoder) and the trainable module that DeepSpeed
wraps; `loss` receives the wrapped module (the engine, called like the module) so that ZeRO's
hooks run. Three objectives, one per editor family:

- `InstructPix2PixObjective`: latent noise prediction with the source latents concatenated to
  the noisy target latents (8 input channels) and CLIP text embeddings, with conditioning
  dropout for classifier-free guidance (Brooks et al. 2023, "InstructPix2Pix", sec. 3.4; as in
  diffusers' `train_instruct_pix2pix.py`). Saved as the editor's own checkpoint: `unet/`
  (full) or `pytorch_lora_weights.safetensors` (LoRA), what `InstructionEditor.use_checkpoint`
  loads on top of the base model.
- `FlowMatchingObjective`: rectified-flow velocity prediction for the transformer editors
  (FLUX.1 Kontext, Qwen-Image-Edit): noise levels from a logit-normal (Esser et al. 2024, "Scaling
  Rectified Flow Transformers", sec. 3.1), the clean source-image tokens appended to the noisy
  target tokens as the pipelines do at inference, as in diffusers'
  `train_dreambooth_lora_flux_kontext.py`. Saved as `transformer/` or a LoRA, like the above.
- `PixelObjective`: the pixel editor's DDPM loss (`policies.pixel_editor.diffusion_loss`);
  saved as a complete pixel editor folder.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from diffusers import (
    DDPMScheduler,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FluxKontextPipeline,
    QwenImageEditPipeline,
)
from diffusers.training_utils import compute_density_for_timestep_sampling
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from policies.checkpoints import inspect_checkpoint, load_weights_in_place
from policies.loading import load_pipeline
from policies.pipelines import pipeline_spec
from policies.pixel_editor import PixelEditorModel, diffusion_loss, is_pixel_editor
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
    """`ip2p`, `flow` or `pixel`: as configured, or from the model folder when `auto`."""
    if config.objective != "auto":
        return config.objective
    if is_pixel_editor(config.model):
        return "pixel"
    spec = pipeline_spec("auto", Path(config.model))
    return "flow" if spec.denoiser == "transformer" else "ip2p"


def build_objective(config: TrainConfig, device: torch.device, dtype: torch.dtype) -> Objective:
    """The objective of `config`, its frozen parts on `device` in `dtype` (the compute dtype)."""
    name = objective_name(config)
    if name == "pixel":
        return PixelObjective(config, device)
    if name == "flow":
        return FlowMatchingObjective(config, device, dtype)
    return InstructPix2PixObjective(config, device, dtype)


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
