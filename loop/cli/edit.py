"""`editloop edit IMAGE "instruction" --model PATH --seed N -o out.png`: one edit, one file."""

from pathlib import Path

import typer

from loop.cli.errors import UserError
from loop.settings import get_settings
from policies.settings import EditorSettings
from policies.types import EditRequest
from store.images import ImageError, decode_image, encode_png


def edit(
    image: Path = typer.Argument(..., help="The source image (PNG, JPEG, WebP, ...)."),
    instruction: str = typer.Argument(..., help='What to change, e.g. "make the sky pink".'),
    output: Path = typer.Option(
        ..., "--output", "-o", help="Where to write the edited image (PNG, the source's size)."
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="diffusers pipeline folder, or a hub id already in the local Hugging Face cache "
        "(nothing is downloaded). Default: the editor.model setting.",
    ),
    seed: int = typer.Option(
        0, "--seed", min=0, help="Seed of the edit's noise: same seed, same inputs, same pixels."
    ),
    checkpoint: Path | None = typer.Option(
        None,
        "--checkpoint",
        help="A fine-tuned checkpoint folder on top of the model: a LoRA "
        "(pytorch_lora_weights.safetensors) or full weights (unet/ or transformer/).",
    ),
    pipeline: str | None = typer.Option(
        None,
        "--pipeline",
        help="StableDiffusionInstructPix2PixPipeline, FluxKontextPipeline, QwenImageEditPipeline, "
        "or auto (read model_index.json). Default: the editor.pipeline setting.",
    ),
    steps: int | None = typer.Option(
        None, "--steps", min=1, help="Denoising steps. Default: the editor.steps setting."
    ),
    guidance: float | None = typer.Option(
        None,
        "--guidance",
        min=0,
        help="Text guidance (Qwen-Image-Edit: true CFG scale). Default: the setting, else the "
        "pipeline's usual value.",
    ),
    image_guidance: float | None = typer.Option(
        None,
        "--image-guidance",
        min=0,
        help="Image guidance, InstructPix2Pix only. Default: the setting, else 1.5.",
    ),
    max_pixels: int | None = typer.Option(
        None,
        "--max-pixels",
        min=1,
        help="Largest working size in pixels (bigger sources are scaled down, the result is "
        "scaled back). Default: the editor.max_pixels setting, else the pipeline's own cap "
        "(512² for InstructPix2Pix, 1024² for FLUX.1 Kontext and Qwen-Image-Edit).",
    ),
    device: str | None = typer.Option(
        None,
        "--device",
        help="torch device, e.g. cpu or cuda:0. Default: the editor.device setting.",
    ),
    dtype: str | None = typer.Option(
        None,
        "--dtype",
        help="auto, float32, bfloat16 or float16. Default: the editor.dtype setting.",
    ),
) -> None:
    """Edit one image with a diffusers editor and write the result as PNG."""
    settings = get_settings()
    if output.suffix.lower() != ".png":
        raise typer.BadParameter(f"{output}: the output is a PNG; name it *.png", param_hint="-o")
    if not output.parent.is_dir():
        raise typer.BadParameter(f"{output.parent}: no such folder", param_hint="-o")
    if output.is_dir():
        raise typer.BadParameter(
            f"{output} is a folder: name the PNG file to write", param_hint="-o"
        )
    if not instruction.strip():
        raise typer.BadParameter("the instruction is empty", param_hint="INSTRUCTION")
    try:
        data = image.read_bytes()
    except OSError as exc:
        raise typer.BadParameter(f"{image}: {exc.strerror or exc}", param_hint="IMAGE") from None
    try:
        source = decode_image(data, settings.store.image_limits())
    except ImageError as exc:
        raise typer.BadParameter(f"{image}: {exc}", param_hint="IMAGE") from None

    overrides = {
        "model": model,
        "pipeline": pipeline,
        "steps": steps,
        "guidance_scale": guidance,
        "image_guidance_scale": image_guidance,
        "max_pixels": max_pixels,
        "device": device,
        "dtype": dtype,
    }
    editor_settings = EditorSettings.model_validate(
        settings.editor.model_dump() | {k: v for k, v in overrides.items() if v is not None}
    )
    if not editor_settings.model:
        raise typer.BadParameter("no model: pass --model or set EDITLOOP_EDITOR__MODEL")
    # Imported once the input is checked: diffusers and torch take seconds to import.
    from policies.editor import InstructionEditor

    try:
        editor = InstructionEditor.from_settings(editor_settings)
        if checkpoint is not None:
            editor.use_checkpoint(checkpoint.name, checkpoint)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    result = editor.edit([EditRequest(image=source, instruction=instruction, seed=seed)])[0]
    if result.image is None:
        raise UserError(f"the edit failed: {result.error}")
    output.write_bytes(encode_png(result.image))
    typer.echo(
        f"wrote {output} ({result.image.width}x{result.image.height}, {editor.spec.name}, "
        f"checkpoint {result.checkpoint_version}, seed {seed}, {result.wall_time_s:.2f} s)"
    )
