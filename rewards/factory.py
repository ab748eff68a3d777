"""Building the judges from the `judge` settings section (called by the composition root)."""

from dataclasses import dataclass
from pathlib import Path

from rewards.imgedit_judge import ImgEditJudge
from rewards.prompts import JudgePrompts, editloop_prompts, load_imgedit_prompts
from rewards.reflector import ReasonEditReflector
from rewards.settings import JudgeSettings
from rewards.tiny import ensure_tiny_qwen_vl
from rewards.verdict import VerdictThresholds
from rewards.vlm import PixelBounds, load_vision_language_model

TINY_MODEL_DIR = Path("models") / "tiny-qwen-vl"


@dataclass(frozen=True)
class Judges:
    """The scorer, the reflector (possibly on the same weights) and the verdict thresholds."""

    scorer: ImgEditJudge
    reflector: ReasonEditReflector
    thresholds: VerdictThresholds


def judge_model_dir(settings: JudgeSettings, data_dir: Path) -> Path:
    """The judge checkpoint: `settings.model`, or the tiny model under `data_dir` (built once)."""
    if settings.model:
        return Path(settings.model)
    return ensure_tiny_qwen_vl(data_dir / TINY_MODEL_DIR)


def judge_prompts(settings: JudgeSettings) -> JudgePrompts:
    """The user's ImgEdit `prompts.json` if `settings.prompts_file` is set, else editloop's own."""
    if settings.prompts_file:
        return load_imgedit_prompts(Path(settings.prompts_file))
    return editloop_prompts()


def verdict_thresholds(settings: JudgeSettings) -> VerdictThresholds:
    """The verdict rule's thresholds from the settings."""
    return VerdictThresholds(
        success_min_overall=settings.success_min_overall,
        success_min_dimension=settings.success_min_dimension,
        noop_max_change=settings.noop_max_change,
    )


def load_judges(settings: JudgeSettings, model_dir: Path) -> Judges:
    """Load the judge from `model_dir` and the reflector from `settings.reflector_model`.

    An empty `reflector_model` shares the judge's loaded weights (one copy in memory).
    """
    prompts = judge_prompts(settings)  # read before loading weights: a bad file fails fast
    bounds = PixelBounds(settings.min_pixels, settings.max_pixels)
    vlm = load_vision_language_model(model_dir, settings.device)
    reflector_vlm = (
        load_vision_language_model(Path(settings.reflector_model), settings.device)
        if settings.reflector_model
        else vlm
    )
    scorer = ImgEditJudge(
        vlm,
        prompts=prompts,
        bounds=bounds,
        batch_size=settings.batch_size,
        max_new_tokens=settings.max_new_tokens,
        continuous=settings.continuous,
    )
    reflector = ReasonEditReflector(
        reflector_vlm,
        bounds=bounds,
        batch_size=settings.batch_size,
        max_new_tokens=settings.reflector_max_new_tokens,
        retries=settings.reflector_retries,
    )
    return Judges(scorer, reflector, verdict_thresholds(settings))
