"""`editloop judge SOURCE EDITED "instruction"`: scores, verdict and reflection for one pair."""

from pathlib import Path

import typer
from PIL import Image

from loop.cli.errors import UserError
from loop.settings import get_settings
from rewards.judging import judge_items
from rewards.settings import JudgeSettings
from rewards.types import JudgeItem, Reflection, Scores
from rewards.verdict import VerdictDecision, decide_verdict, image_change
from store.images import ImageError, ImageLimits, decode_image
from store.taxonomy import EditType, parse_edit_type


def _read_image(path: Path, role: str, limits: ImageLimits) -> Image.Image:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{role} image {path}: {exc.strerror or exc}") from None
    try:
        return decode_image(data, limits)
    except ImageError as exc:
        raise UserError(f"{role} image {path}: {exc}") from None


def judge(
    source: Path = typer.Argument(..., help="The original image (PNG, JPEG, ...)."),
    edited: Path = typer.Argument(..., help="The edited image to judge against SOURCE."),
    instruction: str = typer.Argument(..., help="The edit instruction that was applied to SOURCE."),
    type: str = typer.Option(
        "replace",
        "--type",
        "-t",
        help="Edit type, ImgEdit taxonomy: add, remove, replace, alter (adjust), action, "
        "extract, background, style, hybrid (compose), visual-reference, other.",
    ),
    model: Path | None = typer.Option(
        None,
        "--model",
        help="Qwen2.5-VL judge folder, e.g. ImgEdit-Judge. Default: the judge.model setting, "
        "else the tiny local model (random weights: its answers are unparseable).",
    ),
    prompts: Path | None = typer.Option(
        None,
        "--prompts",
        help="ImgEdit prompts.json ({edit_type: prompt}). Default: the judge.prompts_file "
        "setting, else editloop's own prompts.",
    ),
    continuous: bool | None = typer.Option(
        None,
        "--continuous/--integer",
        help="Scores as expected values over 1-5 from the score tokens' probabilities, or the "
        "integers the judge wrote. Default: the judge.continuous setting.",
    ),
    device: str | None = typer.Option(
        None,
        "--device",
        help="torch device, e.g. cpu or cuda:0. Default: the judge.device setting.",
    ),
) -> None:
    """Judge one edit: print the scores, the reflection and the verdict."""
    settings = get_settings()
    try:
        edit_type = parse_edit_type(type)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if not instruction.strip():
        raise UserError("the instruction is empty")
    overrides = {
        "model": str(model) if model is not None else None,
        "prompts_file": str(prompts) if prompts is not None else None,
        "continuous": continuous,
        "device": device,
    }
    judge_settings = JudgeSettings.model_validate(
        settings.judge.model_dump() | {k: v for k, v in overrides.items() if v is not None}
    )
    limits = settings.store.image_limits()
    item = JudgeItem(
        source=_read_image(source, "source", limits),
        edited=_read_image(edited, "edited", limits),
        instruction=instruction,
        edit_type=edit_type,
    )
    # Imported once the input is checked: transformers and torch take seconds to import.
    from rewards.factory import judge_model_dir, load_judges

    try:
        judges = load_judges(judge_settings, judge_model_dir(judge_settings, settings.data_dir))
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    (scores,), (reflection,) = judge_items(judges.scorer, judges.reflector, [item])
    change = image_change(item.source, item.edited)
    decision = decide_verdict(
        scores,
        reflection,
        tries_left=judge_settings.max_reflections,
        change=change,
        thresholds=judges.thresholds,
    )
    typer.echo(
        report(edit_type, scores, reflection, change, decision, judges.scorer.prompts.origin)
    )


def _printable(text: str) -> str:
    # Model text may hold control characters (a random model's certainly does): show them escaped.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def report(
    edit_type: EditType,
    scores: Scores,
    reflection: Reflection,
    change: float,
    decision: VerdictDecision,
    prompts_origin: str,
) -> str:
    """The one-off judgment as the lines `editloop judge` prints."""
    lines = [f"judge       {scores.model} (type {edit_type.value}, prompts: {prompts_origin})"]
    dims = (scores.following, scores.quality, scores.preservation)
    if scores.overall is None:
        lines.append(f"scores      {scores.status.value}: {scores.detail}")
    else:
        for name, value in zip(scores.dimension_names, dims, strict=True):
            lines.append(f"  {name:<36} {value:.2f}")
        status = scores.status.value + (f": {scores.detail}" if scores.detail else "")
        lines.append(f"  {'overall':<36} {scores.overall:.2f}  ({status})")
    lines.append(f"change      {change:.4f}")
    tries = f"{reflection.tries} {'try' if reflection.tries == 1 else 'tries'}"
    why = f" ({reflection.detail})" if reflection.detail else ""
    lines.append(f"reflector   {reflection.model}: {reflection.tag.value} after {tries}{why}")
    if reflection.new_instruction:
        lines.append(f"  new instruction: {_printable(reflection.new_instruction)}")
    lines.append(f"  target: {_printable(reflection.target_description or '-')}")
    lines.append(f"  think: {_printable(reflection.think or '-')}")
    lines.append(
        f"verdict     {decision.verdict.value} ({decision.reason.value}: {decision.detail})"
    )
    if decision.new_instruction:
        lines.append(f"  edit again with: {_printable(decision.new_instruction)}")
    lines.append(f"raw judge output: {scores.raw_output!r}")
    lines.append(f"raw reflector output: {reflection.raw_output!r}")
    return "\n".join(lines)
