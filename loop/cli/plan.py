"""`editloop plan`: what fits on the GPUs, from the models' configurations alone."""

import typer
from rich.console import Console
from rich.table import Table

from loop.cli.errors import USAGE, UserError
from loop.settings import get_settings

console = Console()


def _verdict(total: float, gpu_gib: float) -> str:
    return "yes" if total <= gpu_gib else f"no (+{total - gpu_gib:.0f})"


def plan(
    editor: str = typer.Option(
        "",
        "--editor",
        help="Editor: a diffusers folder, a hub id in the local cache, or a released "
        "architecture: instruct-pix2pix, flux-kontext, qwen-image-edit. Default: the "
        "editor.model setting.",
    ),
    judge: str = typer.Option(
        "",
        "--judge",
        help="Judge: a Qwen2.5-VL folder or qwen2.5-vl-7b (ImgEdit-Judge's size). Default: the "
        "judge.model setting (none: no judge row).",
    ),
    gpus: int = typer.Option(1, "--gpus", min=1, help="GPUs a training job spans (all nodes)."),
    gpu_memory: float = typer.Option(80.0, "--gpu-memory", min=1, help="GiB per GPU."),
    resolution: int = typer.Option(
        0,
        "--resolution",
        min=0,
        help="Training side in pixels (0: the recipe's, else the "
        "editor's own: 256 InstructPix2Pix, 1024 the transformer editors).",
    ),
    micro_batch: int = typer.Option(
        0,
        "--micro-batch",
        min=0,
        help="Examples per rank and step (0: the recipe's micro_batch_size).",
    ),
    edit_batch: int = typer.Option(
        0, "--edit-batch", min=0, help="Edits per pipeline call (0: the editor.batch_size setting)."
    ),
) -> None:
    """Print the GPU memory of an edit worker, a judge worker and a training rank (ZeRO-2/3,
    full or LoRA, with and without optimizer offload and gradient checkpointing) and say what
    fits. Only configurations are read: every model is built on the meta device, no weights are
    loaded or downloaded, so it runs anywhere. Figures are estimates (activations within ~2x)."""
    from policies.architectures import editor_architecture, judge_architecture
    from policies.memory import TRAINING_SETUPS, edit_worker, judge_worker, training_rank
    from policies.training.config import TrainConfig

    settings = get_settings()
    editor = editor or settings.editor.model
    if not editor:
        raise UserError(
            "no editor: pass --editor (a folder, a cached hub id, or instruct-pix2pix, "
            "flux-kontext, qwen-image-edit) or set EDITLOOP_EDITOR__MODEL",
            code=USAGE,
        )
    judge = judge or settings.judge.model
    try:
        arch = editor_architecture(editor)
        judge_arch = judge_architecture(judge) if judge else None
        recipe = TrainConfig(model="-", manifest="-", output_dir="-", **settings.training.recipe)
    except ValueError as exc:
        raise UserError(str(exc), code=USAGE) from None
    pixels = settings.editor.max_pixels or arch.default_max_pixels
    batch = edit_batch or settings.editor.batch_size
    side = resolution or recipe.resolution or arch.train_resolution
    micro = micro_batch or recipe.micro_batch_size

    sizes = Table(title=f"{arch.name}: parameters (built on meta, from configs)")
    sizes.add_column("component")
    sizes.add_column("parameters", justify="right")
    sizes.add_column("bf16 GiB", justify="right")
    for component in arch.components:
        role = " (trained)" if component.name == arch.denoiser else ""
        sizes.add_row(
            component.name + role,
            f"{component.parameters / 1e9:.3f} B",
            f"{component.parameters * 2 / 1024**3:.1f}",
        )
    if judge_arch is not None:
        sizes.add_row(
            f"judge: {judge_arch.name}",
            f"{judge_arch.parameters / 1e9:.3f} B",
            f"{judge_arch.parameters * 2 / 1024**3:.1f}",
        )
    console.print(sizes)

    workers = Table(title=f"workers: GiB per GPU of {gpu_memory:g} GiB")
    for column in ("process", "weights", "activ.", "total", "host", "fits"):
        workers.add_column(column, justify="left" if column == "process" else "right")
    slicing, tiling = settings.editor.vae_slicing, settings.editor.vae_tiling
    for offload in ("none", "model", "sequential"):
        estimate = edit_worker(
            arch, pixels=pixels, batch=batch, offload=offload,
            vae_slicing=slicing, vae_tiling=tiling,
        )  # fmt: skip
        parts = estimate.parts
        workers.add_row(
            f"edit {batch}x{pixels / 1e6:.2f} MP, offload {offload}",
            f"{parts['weights']:.1f}",
            f"{parts['activations'] + parts['vae decode']:.1f}",
            f"{estimate.total_gib:.1f}",
            f"{estimate.host_gib:.1f}",
            _verdict(estimate.total_gib, gpu_memory),
        )
    if judge_arch is not None:
        judge_settings = settings.judge
        estimate = judge_worker(
            judge_arch,
            max_pixels=judge_settings.max_pixels,
            batch=judge_settings.batch_size,
            max_new_tokens=max(
                judge_settings.max_new_tokens, judge_settings.reflector_max_new_tokens
            ),
        )
        parts = estimate.parts
        workers.add_row(
            f"judge {judge_settings.batch_size} pairs x{judge_settings.max_pixels / 1e6:.2f} MP",
            f"{parts['weights']:.1f}",
            f"{parts['kv cache'] + parts['activations']:.1f}",
            f"{estimate.total_gib:.1f}",
            "0.0",
            _verdict(estimate.total_gib, gpu_memory),
        )
        both = (
            estimate.total_gib
            + edit_worker(
                arch, pixels=pixels, batch=batch, vae_slicing=slicing, vae_tiling=tiling
            ).total_gib
            - estimate.parts["overhead"]
        )
        workers.add_row(
            "edit + judge, one GPU", "", "", f"{both:.1f}", "", _verdict(both, gpu_memory)
        )
    console.print(workers)

    training = Table(
        title=f"training rank: {gpus} GPU(s), {side}² px, micro-batch {micro}, LoRA rank "
        f"{recipe.lora_rank}; GiB per GPU of {gpu_memory:g}",
        caption="Z: ZeRO stage; off: optimizer (ZeRO-3: and parameter) offload to host memory; "
        "ckpt: gradient checkpointing; host: host GiB per rank; *: the peak is the encode pass "
        "before training (the frozen encoders in bf16)",
    )
    for column in ("setup", "weights", "grads", "optim.", "activ.", "total", "host", "fits"):
        training.add_column(column, justify="left" if column == "setup" else "right")
    for setup in TRAINING_SETUPS:
        estimate = training_rank(
            arch, setup, gpus=gpus, resolution=side, micro_batch=micro,
            lora_rank=recipe.lora_rank, ema=recipe.ema_decay > 0 and setup.stage == 2,
        )  # fmt: skip
        parts = estimate.parts
        training.add_row(
            setup.label(),
            f"{parts['weights']:.1f}",
            f"{parts['gradients']:.1f}",
            f"{parts['optimizer']:.1f}",
            f"{parts['activations']:.1f}",
            f"{estimate.total_gib:.1f}" + ("*" if estimate.peak_before else ""),
            f"{estimate.host_gib:.1f}",
            _verdict(estimate.total_gib, gpu_memory),
        )
    console.print(training)
    console.print(
        "Estimates: weights, gradients and optimizer states are exact byte counts (bf16, fp32 "
        "master + Adam); activations are rough (within ~2x); +1.5 GiB per process. The frozen "
        "encoders are encoded ahead and freed before training (policies/training/encodings.py).",
        highlight=False,
    )
