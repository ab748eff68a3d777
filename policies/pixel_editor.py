"""A small pixel-space diffusion editor for the shapes world, and its training loss.

The set-up of the experiments in docs/design.md: a diffusers `UNet2DConditionModel`
(blocks 32/64/64, one layer each, cross-attention in the two lower blocks, cross-attention dim
64, 1.7 M parameters) denoises the target image with the source image concatenated to its input
(6 channels, InstructPix2Pix-style, no VAE); the instruction is word embeddings + learned
positions given as `encoder_hidden_states`. Training: DDPM, cosine schedule, 1000 steps,
x0-prediction; sampling: DDIM, 10 steps, eta 1.

The instruction is split into clauses (one operation each) and each clause fills a slot of
`clause_length` words, so an operation is read the same wherever it stands; pre-training puts a
single operation in a random slot (as in the hindsight experiment of docs/design.md), which is what
lets compound instructions, never seen in pre-training, be partly done in one step.

A checkpoint is a folder (`PixelEditorModel.save_pretrained`): `unet/` (diffusers
`save_pretrained`), `text_embedding.safetensors` (word and position embeddings) and
`editor_config.json` (`PixelEditorConfig`: vocabulary, slots, noise schedule, sampling).
"""

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file, save_file

from policies.pixel_config import CONFIG_NAME, PAD, PixelEditorConfig
from policies.types import EditRequest, EditResult
from worlds.shapes.language import instruction_clauses

EMBEDDING_NAME = "text_embedding.safetensors"


class InstructionTokenizer:
    """Words → ids, one slot of `clause_length` ids per clause, padding elsewhere."""

    def __init__(self, vocabulary: Sequence[str], clause_length: int, max_clauses: int) -> None:
        if not vocabulary or vocabulary[0] != PAD:
            raise ValueError(f"vocabulary must start with {PAD!r}")
        self.ids = {word: index for index, word in enumerate(vocabulary)}
        self.clause_length = clause_length
        self.max_clauses = max_clauses

    def encode(self, instruction: str, slots: Sequence[int] | None = None) -> list[int]:
        """Ids of an instruction, clause i in slot `slots[i]` (default: in order); ValueError for
        an unknown word, too many clauses or a clause too long."""
        clauses = instruction_clauses(instruction)
        if not clauses:
            raise ValueError(f"instruction {instruction!r} has no words")
        if len(clauses) > self.max_clauses:
            raise ValueError(
                f"{len(clauses)} clauses, this editor reads at most {self.max_clauses}"
            )
        slots = list(range(len(clauses))) if slots is None else list(slots)
        in_range = all(0 <= slot < self.max_clauses for slot in slots)
        if len(slots) != len(clauses) or len(set(slots)) != len(slots) or not in_range:
            raise ValueError(f"slots {slots} do not place {len(clauses)} clauses")
        ids = [0] * (self.clause_length * self.max_clauses)
        for clause, slot in zip(clauses, slots, strict=True):
            if len(clause) > self.clause_length:
                raise ValueError(f"clause {' '.join(clause)!r} has over {self.clause_length} words")
            unknown = [word for word in clause if word not in self.ids]
            if unknown:
                raise ValueError(f"unknown words {unknown} in {instruction!r}")
            start = slot * self.clause_length
            ids[start : start + len(clause)] = [self.ids[word] for word in clause]
        return ids

    def encode_batch(self, instructions: Sequence[str]) -> torch.Tensor:
        """(B, sequence_length) int64 ids of instructions, clauses in order."""
        return torch.tensor([self.encode(text) for text in instructions], dtype=torch.long)


class PixelEditorModel(torch.nn.Module):
    """UNet + word and position embeddings: predicts the clean target from a noisy one."""

    def __init__(self, config: PixelEditorConfig) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = InstructionTokenizer(
            config.vocabulary, config.clause_length, config.max_clauses
        )
        self.word_embedding = torch.nn.Embedding(len(config.vocabulary), config.embedding_dim)
        self.position_embedding = torch.nn.Parameter(
            torch.randn(config.sequence_length, config.embedding_dim) * 0.02
        )
        channels = tuple(config.block_out_channels)
        self.unet = UNet2DConditionModel(
            sample_size=config.size,
            in_channels=6,  # noisy target + source
            out_channels=3,
            layers_per_block=1,
            block_out_channels=channels,
            down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(channels) - 1),
            up_block_types=("CrossAttnUpBlock2D",) * (len(channels) - 1) + ("UpBlock2D",),
            cross_attention_dim=config.embedding_dim,
            attention_head_dim=8,
            norm_num_groups=8,
        )

    def forward(
        self,
        noisy_target: torch.Tensor,
        timesteps: torch.Tensor,
        source: torch.Tensor,
        tokens: torch.Tensor,
    ) -> torch.Tensor:
        """Model output (x0 for "sample" prediction), (B, 3, S, S), from noisy target and source
        (B, 3, S, S, in [-1, 1]), timesteps (B,) and token ids (B, sequence_length)."""
        text = self.word_embedding(tokens) + self.position_embedding
        sample = torch.cat([noisy_target, source], dim=1)
        return self.unet(sample, timesteps, encoder_hidden_states=text).sample

    def noise_scheduler(self) -> DDPMScheduler:
        """The training scheduler (cosine betas, clipped x0, as the experiments)."""
        return DDPMScheduler(
            num_train_timesteps=self.config.num_train_timesteps,
            beta_schedule="squaredcos_cap_v2",
            prediction_type=self.config.prediction_type,
            clip_sample=True,
        )

    def save_pretrained(self, path: str | Path) -> None:
        """Write the checkpoint folder (see the module docstring)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(path / "unet")
        save_file(
            {
                "word_embedding": self.word_embedding.weight.detach().contiguous(),
                "position_embedding": self.position_embedding.detach().contiguous(),
            },
            path / EMBEDDING_NAME,
        )
        (path / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "PixelEditorModel":
        """Load a checkpoint folder; ValueError if it is missing or incomplete."""
        path = Path(path)
        missing = [n for n in (CONFIG_NAME, EMBEDDING_NAME, "unet") if not (path / n).exists()]
        if missing:
            raise ValueError(f"{path} is not a pixel editor checkpoint: missing {missing}")
        raw = json.loads((path / CONFIG_NAME).read_text())
        try:
            config = PixelEditorConfig(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
            )
        except TypeError as exc:
            raise ValueError(f"{path / CONFIG_NAME} is not a pixel editor config: {exc}") from None
        model = cls(config)
        model.unet = UNet2DConditionModel.from_pretrained(path / "unet")
        tensors = load_file(path / EMBEDDING_NAME)
        with torch.no_grad():
            model.word_embedding.weight.copy_(tensors["word_embedding"])
            model.position_embedding.copy_(tensors["position_embedding"])
        return model.eval()


def is_pixel_editor(path: str | Path) -> bool:
    """Whether `path` is a pixel editor checkpoint folder (it has `editor_config.json`)."""
    return (Path(path) / CONFIG_NAME).is_file()


def diffusion_loss(
    model: PixelEditorModel,
    source: torch.Tensor,
    target: torch.Tensor,
    tokens: torch.Tensor,
    noise_scheduler: DDPMScheduler,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DDPM loss of one batch: MSE between the model output and what the scheduler's prediction
    type asks for (x0, epsilon or v). source, target: (B, 3, S, S) in [-1, 1]; tokens: (B, L)."""
    noise = torch.randn(target.shape, generator=generator).to(target)
    timesteps = torch.randint(
        0, noise_scheduler.config.num_train_timesteps, (len(target),), generator=generator
    ).to(target.device)
    noisy = noise_scheduler.add_noise(target, noise, timesteps)
    output = model(noisy, timesteps, source, tokens)
    wanted = {
        "sample": target,
        "epsilon": noise,
        "v_prediction": noise_scheduler.get_velocity(target, noise, timesteps),
    }[noise_scheduler.config.prediction_type]
    return F.mse_loss(output, wanted)


@torch.no_grad()
def sample_edits(
    model: PixelEditorModel,
    source: torch.Tensor,
    tokens: torch.Tensor,
    generators: Sequence[torch.Generator],
) -> torch.Tensor:
    """DDIM sampling of edited images, (B, 3, S, S) in [-1, 1]; all randomness of row i comes
    from `generators[i]`, so a row's result does not depend on the rest of the batch."""
    config = model.config
    scheduler = DDIMScheduler.from_config(model.noise_scheduler().config)
    scheduler.set_timesteps(config.sampling_steps)
    shape = (1, *source.shape[1:])

    def noise() -> torch.Tensor:
        return torch.cat([torch.randn(shape, generator=g) for g in generators]).to(source)

    x = noise()
    for t in scheduler.timesteps:
        output = model(x, t.expand(len(x)).to(source.device), source, tokens)
        x = scheduler.step(output, t, x, eta=config.eta, variance_noise=noise()).prev_sample
    return x.clamp(-1, 1)


def images_to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """RGB images → (B, 3, H, W) float32 in [-1, 1]."""
    arrays = np.stack([np.asarray(image, dtype=np.float32) for image in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1.0


def tensor_to_images(batch: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] → RGB images."""
    pixels = ((batch.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(row.permute(1, 2, 0).cpu().numpy(), mode="RGB") for row in pixels]


class PixelEditor:
    """The `Editor` of the shapes world: a `PixelEditorModel` with a checkpoint version."""

    def __init__(self, model: PixelEditorModel, version: str, batch_size: int = 256) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model = model.eval()
        self.checkpoint_version = version
        self.batch_size = batch_size  # requests per forward pass
        self._device = next(model.parameters()).device

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        version: str | None = None,
        batch_size: int = 256,
        device: str = "cpu",
    ) -> "PixelEditor":
        """Load a checkpoint folder on `device`; the version defaults to the folder's name."""
        model = PixelEditorModel.from_pretrained(path).to(device)
        return cls(model, version or Path(path).name, batch_size)

    @property
    def version(self) -> str:
        return self.checkpoint_version

    def edit(self, requests: Sequence[EditRequest]) -> list[EditResult]:
        """Edit a batch; a request with a wrong image or an instruction this editor cannot read
        fails alone (its `error` says why). Each result's wall time is its share of its batch."""
        results: dict[int, EditResult] = {}
        valid: list[tuple[int, list[int]]] = []
        for index, request in enumerate(requests):
            try:
                valid.append((index, self._check(request)))
            except ValueError as exc:
                results[index] = self._result(request, None, str(exc), 0.0)
        for start in range(0, len(valid), self.batch_size):
            chunk = valid[start : start + self.batch_size]
            started = time.perf_counter()
            chosen = [requests[index] for index, _ in chunk]
            source = images_to_tensor([r.image for r in chosen]).to(self._device)
            tokens = torch.tensor([ids for _, ids in chunk], device=self._device)
            generators = [torch.Generator().manual_seed(r.seed) for r in chosen]
            images = tensor_to_images(sample_edits(self.model, source, tokens, generators))
            share = (time.perf_counter() - started) / len(chunk)
            for (index, _), image in zip(chunk, images, strict=True):
                results[index] = self._result(requests[index], image, None, share)
        return [results[index] for index in range(len(requests))]

    def _check(self, request: EditRequest) -> list[int]:
        size = self.model.config.size
        if request.image.mode != "RGB":
            raise ValueError(f"image mode must be RGB, got {request.image.mode!r}")
        if request.image.size != (size, size):
            width, height = request.image.size
            raise ValueError(f"image is {width}x{height}, this editor edits {size}x{size}")
        if not 0 <= request.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {request.seed}")
        return self.model.tokenizer.encode(request.instruction)

    def _result(
        self, request: EditRequest, image: Image.Image | None, error: str | None, seconds: float
    ) -> EditResult:
        config = self.model.config
        return EditResult(
            image=image,
            error=error,
            seed=request.seed,
            checkpoint_version=self.checkpoint_version,
            wall_time_s=seconds,
            params={"steps": config.sampling_steps, "eta": config.eta},
        )
