"""DDPM fine-tuning of the shapes world's pixel editor (the whole model: UNet and embeddings)."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from policies.pixel_editor import PixelEditorModel, diffusion_loss
from policies.training.config import TrainConfig
from policies.training.objectives.base import Batch


class PixelObjective:
    """DDPM training of the whole pixel editor (UNet and instruction embeddings), in the
    engine's dtype (the model is loaded in it and every input is cast to it)."""

    kind = "full"

    def __init__(
        self, config: TrainConfig, device: torch.device, dtype: torch.dtype = torch.float32
    ) -> None:
        if config.mode != "full":
            raise ValueError(f"mode={config.mode!r}: the pixel editor is trained in full")
        # A pixel checkpoint is a complete editor folder: the parent replaces the base.
        folder = config.init_checkpoint or config.model
        self.model = PixelEditorModel.from_pretrained(folder).train().to(device, dtype)
        self.model.requires_grad_(True)
        self.train_resolution = self.model.config.size
        if config.resolution not in (0, self.model.config.size):
            raise ValueError(
                f"resolution={config.resolution}: the pixel editor at {folder!r} works at "
                f"{self.model.config.size}x{self.model.config.size}"
            )
        self.device = device
        self.dtype = dtype
        self.noise_scheduler = self.model.noise_scheduler()

    def trainable(self) -> torch.nn.Module:
        return self.model

    def loss(
        self, model: Callable[..., Any], batch: Batch, generator: torch.Generator
    ) -> torch.Tensor:
        tokens = self.model.tokenizer.encode_batch(list(batch["instruction"])).to(self.device)
        # The engine's dtype: a bf16 module fed fp32 images fails (conv input/bias types).
        source = batch["source"].to(self.device, self.dtype)
        target = batch["target"].to(self.device, self.dtype)
        # The engine is called like the model (same forward signature).
        return diffusion_loss(model, source, target, tokens, self.noise_scheduler, generator)  # type: ignore[arg-type]

    def save(self, folder: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """The complete editor folder; from `state_dict` (ZeRO-3's gathered weights on rank 0)
        into a fresh model when given."""
        if state_dict is None:
            self.model.save_pretrained(folder)
            return
        model = PixelEditorModel(self.model.config)
        model.load_state_dict(state_dict)
        model.save_pretrained(folder)
