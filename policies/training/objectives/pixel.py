"""DDPM fine-tuning of the shapes world's pixel editor (the whole model: UNet and embeddings)."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from policies.pixel_editor import PixelEditorModel, diffusion_loss
from policies.training.config import TrainConfig
from policies.training.objectives.base import Batch


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
