"""`InstructionEditor`: one editor over diffusers edit pipelines, batched, seeded, versioned.

Requests are grouped by working size (one pipeline call per group of up to `batch_size`), each
with its own `torch.Generator`, so an edit depends on (checkpoint, image, instruction, seed, knobs)
and not on the batch it lands in. Fine-tuned checkpoints are applied on top of the loaded base
weights: a LoRA adapter is loaded and unloaded, full component weights are copied in place.
Not thread-safe: one editor per worker process (workers run `--pool solo`).
"""

import gc
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from PIL import Image

from policies.checkpoints import inspect_checkpoint, load_weights_in_place
from policies.loading import load_pipeline, resolve_model_dir
from policies.pipelines import PipelineSpec, pipeline_spec, resolve_knobs
from policies.settings import EditorSettings
from policies.sizing import working_size
from policies.types import EditRequest, EditResult

logger = logging.getLogger(__name__)

BASE_VERSION = "base"
# The one adapter slot: a checkpoint's LoRA replaces the previous one, never stacks on it.
_ADAPTER = "checkpoint"
# torch.Generator.manual_seed takes any 64-bit value; keep seeds non-negative and portable.
_MAX_SEED = 2**63 - 1


class InstructionEditor:
    """Edits batches of (image, instruction, seed) with one diffusers pipeline and checkpoint."""

    def __init__(
        self,
        pipeline: DiffusionPipeline,
        *,
        spec: PipelineSpec,
        model_dir: Path,
        knobs: Mapping[str, float],
        max_pixels: int,
        batch_size: int,
    ) -> None:
        if not isinstance(pipeline, spec.pipeline_class):
            raise ValueError(
                f"pipeline is a {type(pipeline).__name__}, the spec is for {spec.name}"
            )
        if batch_size <= 0:
            raise ValueError(f"batch_size={batch_size}: must be positive")
        self.pipeline = pipeline
        self.spec = spec
        self.model_dir = model_dir
        self.knobs = dict(knobs)
        self.max_pixels = max_pixels
        self.batch_size = batch_size
        self.multiple = pipeline.vae_scale_factor * spec.latent_patch
        # Refuse a cap below one block now rather than failing every request later.
        working_size(self.multiple, self.multiple, multiple=self.multiple, max_pixels=max_pixels)
        self._version = BASE_VERSION
        self._lora_loaded = False
        self._replaced: set[str] = set()  # components whose weights are not the base's

    @classmethod
    def from_settings(
        cls, settings: EditorSettings, model: str | Path | None = None
    ) -> "InstructionEditor":
        """Load the editor `settings` describe; `model` overrides `settings.model`."""
        model_dir = resolve_model_dir(settings.model if model is None else model)
        spec = pipeline_spec(settings.pipeline, model_dir)
        knobs = resolve_knobs(
            spec,
            {
                "steps": settings.steps,
                "guidance_scale": settings.guidance_scale,
                "image_guidance_scale": settings.image_guidance_scale,
            },
        )
        pipeline = load_pipeline(
            spec,
            model_dir,
            device=settings.device,
            dtype=settings.dtype,
            scheduler=settings.scheduler,
            offload=settings.offload,
            vae_slicing=settings.vae_slicing,
            vae_tiling=settings.vae_tiling,
        )
        return cls(
            pipeline,
            spec=spec,
            model_dir=model_dir,
            knobs=knobs,
            max_pixels=settings.max_pixels or spec.max_pixels,
            batch_size=settings.batch_size,
        )

    @property
    def version(self) -> str:
        """The checkpoint version currently loaded (`base` for the base model's own weights)."""
        return self._version

    # ---- editing -------------------------------------------------------------------------

    def edit(self, requests: Sequence[EditRequest]) -> list[EditResult]:
        """Edit a batch; results in request order, each at its source's size or with `error` set."""
        results: dict[int, EditResult] = {}
        groups: dict[tuple[int, int], list[int]] = {}
        for index, request in enumerate(requests):
            try:
                size = self._working_size(request)
            except ValueError as exc:
                results[index] = self._failure(request, str(exc))
                continue
            groups.setdefault(size, []).append(index)
        for (width, height), indices in groups.items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                chunk_results = self._edit_group([requests[i] for i in chunk], width, height)
                for index, result in zip(chunk, chunk_results, strict=True):
                    results[index] = result
        return [results[index] for index in range(len(requests))]

    def _working_size(self, request: EditRequest) -> tuple[int, int]:
        """Check one request; its working size, or `ValueError` saying what is wrong with it."""
        image = request.image
        if not isinstance(image, Image.Image):
            raise ValueError(f"image is a {type(image).__name__}, not a PIL image")
        if image.mode != "RGB":
            raise ValueError(
                f"image mode is {image.mode}, not RGB "
                "(decode images with store.images.decode_image, which converts)"
            )
        if image.width <= 0 or image.height <= 0:
            raise ValueError(f"image size is {image.width}x{image.height}: nothing to edit")
        if not isinstance(request.instruction, str) or not request.instruction.strip():
            raise ValueError(f"instruction={request.instruction!r}: give a non-empty instruction")
        if not isinstance(request.seed, int) or not 0 <= request.seed <= _MAX_SEED:
            raise ValueError(f"seed={request.seed!r}: must be an integer in [0, 2**63)")
        return working_size(
            image.width, image.height, multiple=self.multiple, max_pixels=self.max_pixels
        )

    def _edit_group(self, requests: list[EditRequest], width: int, height: int) -> list[EditResult]:
        """One pipeline call for requests that share a working size."""
        images = [_resized(request.image, (width, height)) for request in requests]
        # One generator per request: its noise depends on its seed only, not on its batch-mates.
        generators = [torch.Generator(device="cpu").manual_seed(r.seed) for r in requests]
        arguments = {self.spec.arguments[knob]: value for knob, value in self.knobs.items()}
        arguments |= self.spec.batch_arguments(width, height, len(requests), self.knobs)
        params: dict[str, float | int | str] = {
            "pipeline": self.spec.name,
            "scheduler": type(self.pipeline.scheduler).__name__,
            **self.knobs,
            "width": width,
            "height": height,
            "batch_size": len(requests),
        }
        start = time.perf_counter()
        try:
            with self.spec.call_context(width, height):
                output = self.pipeline(
                    prompt=[request.instruction for request in requests],
                    image=images,
                    generator=generators,
                    output_type="pil",
                    **arguments,
                )
            edited = list(output.images)
            if len(edited) != len(requests):
                raise RuntimeError(
                    f"the pipeline returned {len(edited)} images for {len(requests)}"
                )
        except Exception as exc:  # the Editor contract: a failure stays with its requests
            logger.exception("edit of %d request(s) at %dx%d failed", len(requests), width, height)
            error = f"pipeline call failed: {type(exc).__name__}: {exc}"
            return [self._failure(request, error) for request in requests]
        elapsed = time.perf_counter() - start
        return [
            EditResult(
                image=_resized(image, request.image.size),
                error=None,
                seed=request.seed,
                checkpoint_version=self._version,
                wall_time_s=elapsed,
                params=dict(params),
            )
            for request, image in zip(requests, edited, strict=True)
        ]

    def _failure(self, request: EditRequest, error: str) -> EditResult:
        return EditResult(
            image=None,
            error=error,
            seed=request.seed,
            checkpoint_version=self._version,
            wall_time_s=0.0,
            params={"pipeline": self.spec.name},
        )

    # ---- checkpoints ---------------------------------------------------------------------

    def use_checkpoint(self, version: str, folder: Path) -> None:
        """Switch to the fine-tuned checkpoint in `folder` (LoRA or full weights), named `version`.

        The base model's other components stay loaded; the previous checkpoint is unloaded first.
        If loading fails the editor is put back on the base weights and the error is raised.
        """
        if not version or version == BASE_VERSION:
            raise ValueError(
                f"version={version!r}: name the checkpoint (`{BASE_VERSION}` is reserved)"
            )
        if version == self._version:
            return
        layout = inspect_checkpoint(folder, self._module_components())
        try:
            self._unload_lora()
            # Components the new checkpoint overwrites anyway need no restore from disk first.
            self._restore_base(keep=set(layout.components))
            if layout.kind == "lora":
                self._lora_loaded = True
                self.pipeline.load_lora_weights(folder, adapter_name=_ADAPTER)
            for name in layout.components:
                self._replaced.add(name)
                load_weights_in_place(getattr(self.pipeline, name), folder / name)
        except Exception as exc:
            logger.warning(
                "checkpoint %s failed to load (%s); back to the base weights", version, exc
            )
            self.use_base()
            raise
        self._version = version

    def use_base(self) -> None:
        """Switch back to the base model's own weights."""
        self._unload_lora()
        self._restore_base(keep=set())
        self._version = BASE_VERSION

    def _module_components(self) -> list[str]:
        return [
            name
            for name, component in self.pipeline.components.items()
            if isinstance(component, torch.nn.Module)
        ]

    def _unload_lora(self) -> None:
        if self._lora_loaded:
            # Removes the adapter layers entirely (not just disables them); collect now, so that
            # layers caught in reference cycles release their (GPU) memory before the next load.
            self.pipeline.unload_lora_weights()
            self._lora_loaded = False
            gc.collect()

    def _restore_base(self, keep: set[str]) -> None:
        for name in sorted(self._replaced - keep):
            load_weights_in_place(getattr(self.pipeline, name), self.model_dir / name)
            self._replaced.discard(name)


def _resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` at `size` (Lanczos), or `image` itself when it already has that size."""
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)
