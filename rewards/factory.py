"""Building the judges from the `judge` settings section (called by the composition root)."""

from dataclasses import dataclass
from pathlib import Path

from rewards.imgedit_judge import ImgEditJudge
from rewards.prompts import JudgePrompts, editloop_prompts, load_imgedit_prompts
from rewards.reflector import ReasonEditReflector
from rewards.settings import JudgeSettings
from rewards.tiny import ensure_tiny_qwen_vl, is_tiny_judge
from rewards.verdict import VerdictThresholds
from rewards.vlm import PixelBounds, load_vision_language_model

TINY_MODEL_DIR = Path("models") / "tiny-qwen-vl"


@dataclass(frozen=True)
class Judges:
    """The scorer, the reflector (possibly on the same weights; None when not asked for) and
    the verdict thresholds."""

    scorer: ImgEditJudge
    reflector: ReasonEditReflector | None
    thresholds: VerdictThresholds


def reflector_problem(settings: JudgeSettings) -> str | None:
    """Why the settings cannot reflect, or None: a real ImgEdit-Judge (any judge folder but
    editloop's tiny random one) with no `reflector_model`. ImgEdit-Judge is a scoring fine-tune
    of Qwen2.5-VL: asked for ReasonEdit's reflection it answers with scores, never the tags."""
    if settings.backend != "imgedit" or not settings.model or settings.reflector_model:
        return None
    folder = Path(settings.model).expanduser()
    # A folder that holds no checkpoint is the loader's to report (with its own fix).
    if is_tiny_judge(folder) or not (folder / "config.json").is_file():
        return None
    return (
        f"judge.model={settings.model!r} is a judge checkpoint and judge.reflector_model is "
        "empty: ImgEdit-Judge is a scoring fine-tune that does not follow the reflection format; "
        "set EDITLOOP_JUDGE__REFLECTOR_MODEL (REFLECTOR_MODEL in .env) to a general "
        "Qwen2.5-VL-Instruct folder (e.g. Qwen2.5-VL-7B-Instruct), or to the judge's own folder "
        "if it is an instruction model (its weights are then shared)"
    )


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


def load_judges(settings: JudgeSettings, model_dir: Path, *, with_reflector: bool = True) -> Judges:
    """Load the judge from `model_dir` and (`with_reflector`) the reflector from
    `settings.reflector_model` on `settings.device` (empty: cpu).

    A `reflector_model` that is empty (the tiny judge) or the judge's own folder shares the
    judge's loaded weights (one copy in memory). Raises `ValueError` (`reflector_problem`) for a
    real ImgEdit-Judge without a reflector model.
    """
    problem = reflector_problem(settings) if with_reflector else None
    if problem is not None:
        raise ValueError(problem)
    prompts = judge_prompts(settings)  # read before loading weights: a bad file fails fast
    bounds = PixelBounds(settings.min_pixels, settings.max_pixels)
    device = settings.device or "cpu"
    vlm = load_vision_language_model(model_dir, device, settings.dtype)
    shared = not settings.reflector_model or _same_folder(settings.reflector_model, model_dir)
    reflector_vlm = vlm
    if with_reflector and not shared:
        reflector_vlm = load_vision_language_model(
            Path(settings.reflector_model), device, settings.dtype
        )
    scorer = ImgEditJudge(
        vlm,
        prompts=prompts,
        bounds=bounds,
        batch_size=settings.batch_size,
        max_new_tokens=settings.max_new_tokens,
        continuous=settings.continuous,
    )
    reflector = None
    if with_reflector:
        reflector = ReasonEditReflector(
            reflector_vlm,
            bounds=bounds,
            batch_size=settings.batch_size,
            max_new_tokens=settings.reflector_max_new_tokens,
            retries=settings.reflector_retries,
        )
    return Judges(scorer, reflector, verdict_thresholds(settings))


def _same_folder(path: str, model_dir: Path) -> bool:
    return Path(path).expanduser().resolve() == model_dir.expanduser().resolve()
