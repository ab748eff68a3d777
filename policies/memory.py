"""GPU memory of an edit worker, a judge worker and a training rank, from sizes alone.

Plain arithmetic over `policies.architectures` records; every figure is an estimate made before
anything is loaded, to say what fits. Weights and optimizer states are exact byte counts (bf16
weights and gradients, fp32 master weights and two Adam moments: 2 + 2 + 12 bytes per trained
parameter under DeepSpeed's bf16 mixed precision); activations follow Korthikanti et al. 2022
(about 34·h bytes per token and transformer block in 16-bit with memory-efficient attention,
2·h per block boundary kept under gradient checkpointing) and are rough (within about 2x; a
UNet's convolution blocks are counted like transformer blocks); each process adds a fixed
overhead (CUDA context, allocator slack, communication buckets).
"""

from dataclasses import dataclass

from policies.architectures import EditorArchitecture, JudgeArchitecture

GIB = 1024**3
BF16 = 2
# Per process: CUDA context and kernels (~0.6 GiB), allocator fragmentation and slack.
OVERHEAD_GIB = 1.5
# ZeRO's communication buckets (reduce 5e7 + allgather/prefetch 5e7 elements, 16-bit).
ZERO_BUCKETS_GIB = 0.2
# Bytes per token and block: a block's activations kept for backward (Korthikanti et al.),
# and what an inference forward holds at its peak (one block's largest intermediates).
TRAIN_ACTIVATION_PER_HIDDEN = 34
INFER_ACTIVATION_PER_HIDDEN = 12
# The VAE decoder's peak at its full-resolution stage: ~6 live maps of that width (input,
# normalised, activated, convolved, residual, upsampled).
VAE_LIVE_MAPS = 6
VAE_TILE_PIXELS = 512 * 512  # diffusers' default tile (sample) size


@dataclass(frozen=True)
class Estimate:
    """A process's GPU memory (GiB) by part, its host memory (GiB) for what is offloaded, and a
    peak outside the steady state (`before_gib`: a training rank's encode pass)."""

    parts: dict[str, float]
    host_gib: float = 0.0
    before_gib: float = 0.0

    @property
    def steady_gib(self) -> float:
        return sum(self.parts.values())

    @property
    def total_gib(self) -> float:
        """The peak: the steady state or what comes before it, whichever is larger."""
        return max(self.steady_gib, self.before_gib)

    @property
    def peak_before(self) -> bool:
        """Whether the peak is the phase before the steady state."""
        return self.before_gib > self.steady_gib

    def fits(self, gpu_gib: float) -> bool:
        return self.total_gib <= gpu_gib


def _gib(n: float) -> float:
    return n / GIB


def image_tokens(arch: EditorArchitecture, pixels: int) -> int:
    """Denoiser tokens of one image of `pixels` pixels."""
    return max(1, pixels // arch.shape.pixels_per_token)


def _activation_bytes(
    arch: EditorArchitecture, pixels: int, batch: int, per_hidden: int, blocks: int
) -> float:
    """Activations of `blocks` blocks for a batch: target + source image tokens and text."""
    shape = arch.shape
    if shape.kind == "unet":
        # Level i works at 1/4^i of the latent pixels with its own channel count.
        latent = pixels // shape.pixels_per_token
        per_block = sum(
            channels * latent / 4**level for level, channels in enumerate(shape.level_channels)
        )
        share = blocks / shape.blocks
        # InstructPix2Pix's source rides along as input channels: one image's tokens.
        return per_hidden * per_block * shape.blocks_per_level * share * batch
    tokens = 2 * image_tokens(arch, pixels) + shape.text_tokens
    return per_hidden * shape.hidden * tokens * blocks * batch


def _vae_decode_bytes(
    arch: EditorArchitecture, pixels: int, batch: int, slicing: bool, tiling: bool
):
    images = 1 if slicing else batch
    area = min(pixels, VAE_TILE_PIXELS) if tiling else pixels
    return VAE_LIVE_MAPS * arch.vae_channels * area * BF16 * images


def edit_worker(
    arch: EditorArchitecture,
    *,
    pixels: int,
    batch: int,
    offload: str = "none",
    vae_slicing: bool = False,
    vae_tiling: bool = False,
) -> Estimate:
    """An edit worker: the pipeline in bf16 and one batch of `pixels`-pixel edits.

    offload none: every component on the GPU; model: the largest component at a time (the rest
    in host memory); sequential: about one block of the denoiser at a time.
    """
    sizes = [c.parameters * BF16 for c in arch.components]
    if offload == "none":
        weights, host = sum(sizes), 0.0
    elif offload == "model":
        weights, host = max(sizes), sum(sizes)
    elif offload == "sequential":
        weights, host = arch.denoiser_parameters * BF16 / arch.shape.blocks, sum(sizes)
    else:
        raise ValueError(f"offload={offload!r}: none, model or sequential")
    # Classifier-free guidance runs the batch twice (Qwen-Image-Edit's true CFG, InstructPix2Pix's
    # three branches): counted as a doubled batch.
    activations = _activation_bytes(arch, pixels, 2 * batch, INFER_ACTIVATION_PER_HIDDEN, 1)
    return Estimate(
        parts={
            "weights": _gib(weights),
            "activations": _gib(activations),
            "vae decode": _gib(_vae_decode_bytes(arch, pixels, batch, vae_slicing, vae_tiling)),
            "overhead": OVERHEAD_GIB,
        },
        host_gib=_gib(host),
    )


def judge_worker(
    arch: JudgeArchitecture, *, max_pixels: int, batch: int, max_new_tokens: int
) -> Estimate:
    """A judge worker: the VLM in bf16, a batch of (source, edit) pairs at `max_pixels` each,
    the KV cache of prompt and answer, the vision tower's activations for one batch."""
    tokens_per_image = max_pixels // (arch.patch * arch.merge) ** 2
    # Two images, the rating prompt (~600 tokens) and the answer.
    sequence = 2 * tokens_per_image + 600 + max_new_tokens
    kv_cache = 2 * arch.layers * arch.kv_heads * arch.head_dim * BF16 * sequence * batch
    patches = max_pixels // arch.patch**2
    vision = INFER_ACTIVATION_PER_HIDDEN * arch.vision_hidden * patches * 2 * batch
    # One step's full-vocabulary logits in fp32 (scores asked for keep a few columns only).
    logits = arch.vocab * 4 * batch * 2
    return Estimate(
        parts={
            "weights": _gib(arch.parameters * BF16),
            "kv cache": _gib(kv_cache),
            "activations": _gib(vision + logits),
            "overhead": OVERHEAD_GIB,
        }
    )


@dataclass(frozen=True)
class TrainingSetup:
    """One way to train: ZeRO stage, full or LoRA, optimizer offload, checkpointing."""

    stage: int
    mode: str  # full | lora
    offload: bool  # DeepSpeed offload_optimizer to CPU (ZeRO-3: and the parameters)
    checkpointing: bool

    def label(self) -> str:
        """E.g. `Z3 lora off ckpt`: stage, mode, optimizer offload, gradient checkpointing."""
        return (
            f"Z{self.stage} {self.mode}"
            f"{' off' if self.offload else ''}{' ckpt' if self.checkpointing else ''}"
        )


def training_rank(
    arch: EditorArchitecture,
    setup: TrainingSetup,
    *,
    gpus: int,
    resolution: int,
    micro_batch: int,
    lora_rank: int = 8,
    ema: bool = False,
) -> Estimate:
    """One training rank of `gpus` (data-parallel ranks over all nodes) at `resolution`²
    pixels. The frozen encoders are encoded ahead and freed: the larger of the encode pass
    (encoders in bf16) and the training loop counts."""
    if setup.stage not in (2, 3):
        raise ValueError(f"stage={setup.stage}: 2 or 3")
    if gpus <= 0:
        raise ValueError(f"gpus={gpus}: at least 1")
    base = arch.denoiser_parameters
    trained = base if setup.mode == "full" else arch.lora_parameters(lora_rank)
    partitioned = setup.stage == 3
    weights = BF16 * (base if setup.mode == "full" else base + trained)
    if partitioned:
        weights /= gpus
        # The working set: a few blocks gathered whole at a time (prefetch).
        gathered = 2 * BF16 * base / arch.shape.blocks
    else:
        gathered = 0.0
    host = 0.0
    if setup.offload and partitioned:
        host += weights
        weights = 0.0
    gradients = BF16 * trained / gpus
    optimizer = 12 * trained / gpus  # fp32 master weights, Adam's two moments
    if setup.offload:
        host += optimizer
        optimizer = 0.0
    pixels = resolution * resolution
    if setup.checkpointing:
        activations = _activation_bytes(arch, pixels, micro_batch, 2, arch.shape.blocks)
        activations += _activation_bytes(arch, pixels, micro_batch, TRAIN_ACTIVATION_PER_HIDDEN, 1)
    else:
        activations = _activation_bytes(
            arch, pixels, micro_batch, TRAIN_ACTIVATION_PER_HIDDEN, arch.shape.blocks
        )
    parts = {
        "weights": _gib(weights + gathered),
        "gradients": _gib(gradients),
        "optimizer": _gib(optimizer),
        "activations": _gib(activations),
        "ema": _gib(4 * trained) if ema else 0.0,
        "overhead": OVERHEAD_GIB + ZERO_BUCKETS_GIB,
    }
    # Before the loop: the frozen encoders in bf16 encode every example (then they are freed).
    encode_pass = _gib(BF16 * arch.frozen_parameters) + OVERHEAD_GIB
    return Estimate(parts=parts, host_gib=_gib(host), before_gib=encode_pass)


TRAINING_SETUPS = tuple(
    TrainingSetup(stage, mode, offload, checkpointing)
    for stage in (2, 3)
    for mode in ("full", "lora")
    for offload in (False, True)
    for checkpointing in (False, True)
)
