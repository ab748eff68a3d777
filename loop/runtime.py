"""What a worker process and a trainer need, built from the settings (the models' composition)."""

from pathlib import Path

from loop.services import open_database, open_store
from loop.settings import Settings, SettingsError
from loop.training.jobs import TrainerParts
from loop.training.models import GateModels
from policies.checkpoints import fetch_checkpoint
from policies.editor import BASE_VERSION, InstructionEditor
from policies.pixel_editor import PixelEditor, PixelEditorModel, is_pixel_editor
from policies.tiny import ensure_tiny_editor
from policies.training.settings import TrainingSettings
from policies.types import Editor
from rewards.factory import judge_model_dir, load_judges, reflector_problem, verdict_thresholds
from rewards.settings import JudgeSettings
from rewards.shapes_judge import ShapesReflector, ShapesScorer
from rewards.types import Reflector, Scorer
from store.models import Checkpoint
from store.objects import ObjectStore
from workers.context import ModelCache, WorkerContext

TINY_EDITOR_DIR = Path("models") / "tiny-instruct-pix2pix"


def editor_model_dir(settings: Settings) -> Path | str:
    """The editor checkpoint: `editor.model`, or the tiny InstructPix2Pix (built once)."""
    if settings.editor.model:
        return settings.editor.model
    return ensure_tiny_editor(settings.data_dir / TINY_EDITOR_DIR)


def load_editor(
    settings: Settings, store: ObjectStore, old: Editor | None, checkpoint: Checkpoint | None
) -> Editor:
    """The editor at `checkpoint` (None: base), switching `old` in place when given."""
    model_dir = editor_model_dir(settings)
    if is_pixel_editor(model_dir):
        return load_pixel_editor(settings, store, model_dir, checkpoint)
    editor = old if isinstance(old, InstructionEditor) else None
    if editor is None:
        editor = InstructionEditor.from_settings(settings.editor, model=model_dir)
    if checkpoint is None:
        if editor.version != BASE_VERSION:
            editor.use_base()
    else:
        editor.use_checkpoint(checkpoint.version, _fetch(settings, store, checkpoint))
    return editor


def load_pixel_editor(
    settings: Settings, store: ObjectStore, model_dir: Path | str, checkpoint: Checkpoint | None
) -> PixelEditor:
    """The shapes world's pixel editor: a checkpoint is a whole editor folder (tiny: reloaded)."""
    folder = model_dir if checkpoint is None else _fetch(settings, store, checkpoint)
    version = BASE_VERSION if checkpoint is None else checkpoint.version
    return PixelEditor.from_pretrained(
        folder, version, batch_size=settings.editor.batch_size, device=settings.editor.device
    )


def _fetch(settings: Settings, store: ObjectStore, checkpoint: Checkpoint) -> Path:
    if not checkpoint.object_prefix:
        raise ValueError(f"checkpoint {checkpoint.version} has no object prefix")
    return fetch_checkpoint(store, checkpoint.object_prefix, settings.data_dir / "checkpoint-cache")


# The tiny judge is random: at ImgEdit-Judge's 1 MP bounds and answer lengths it would only
# spend minutes of CPU on gibberish, so the embedded default feeds it small images, short answers.
TINY_JUDGE_LIMITS = {
    "min_pixels": 56 * 56,
    "max_pixels": 112 * 112,
    "max_new_tokens": 24,
    "reflector_max_new_tokens": 24,
}


def judge_settings(settings: Settings) -> JudgeSettings:
    """The judge section as a worker uses it: on the editor's device unless it names its own,
    and the tiny judge's small limits when no model is given."""
    judge = settings.judge
    if not judge.device:
        judge = judge.model_copy(update={"device": settings.editor.device})
    if not judge.model:
        judge = judge.model_copy(update=TINY_JUDGE_LIMITS)
    return judge


def load_model_judges(
    settings: Settings, *, with_reflector: bool = True
) -> tuple[Scorer, Reflector | None]:
    """The scorer and the reflector the settings name (ImgEdit-Judge + ReasonEdit, or the shapes
    world's exact judges); without `with_reflector` (the trainer's gate) no reflector is loaded."""
    if settings.judge.backend == "shapes":
        return ShapesScorer(), ShapesReflector() if with_reflector else None
    judge = judge_settings(settings)
    judges = load_judges(
        judge, judge_model_dir(judge, settings.data_dir), with_reflector=with_reflector
    )
    return judges.scorer, judges.reflector


def load_judges_at(
    settings: Settings,
    store: ObjectStore,
    judge: Checkpoint | None,
    reflector: Checkpoint | None,
) -> tuple[Scorer, Reflector | None]:
    """The scorer and the reflector with promoted judge/reflector checkpoints (`editloop
    train-judge`) in place of the configured models; None keeps a role's configured model."""
    configured = judge_settings(settings)
    base = judge_model_dir(configured, settings.data_dir)
    # A reflector left empty shares the judge's folder: pin it to the base before the judge
    # moves, so that a fine-tuned judge never becomes the reflector too.
    reflector_dir = configured.reflector_model or str(base)
    update = {"reflector_model": reflector_dir}
    if reflector is not None:
        update["reflector_model"] = str(_fetch(settings, store, reflector))
    model_dir = _fetch(settings, store, judge) if judge is not None else base
    judges = load_judges(configured.model_copy(update=update), model_dir)
    return judges.scorer, judges.reflector


def check_judges(settings: Settings) -> None:
    """Refuse, before any model is loaded, judge settings that cannot reflect (a real
    ImgEdit-Judge without `judge.reflector_model`): `SettingsError` naming the setting."""
    problem = reflector_problem(settings.judge)
    if problem is not None:
        raise SettingsError(problem)


def build_worker_context(settings: Settings, worker_name: str = "in-process") -> WorkerContext:
    """Database, store and lazily loaded models for one worker process (or the eager loop);
    refuses judge settings that cannot reflect (`check_judges`) before anything starts."""
    check_judges(settings)
    store = open_store(settings)
    return WorkerContext(
        session_factory=open_database(settings),
        store=store,
        models=ModelCache(
            load_editor=lambda old, checkpoint: load_editor(settings, store, old, checkpoint),
            load_judges=lambda: load_model_judges(settings),
            load_judges_at=(
                None
                if settings.judge.backend == "shapes"
                else lambda judge, reflector: load_judges_at(settings, store, judge, reflector)
            ),
        ),
        image_limits=settings.store.image_limits(),
        thresholds=verdict_thresholds(settings.judge),
        judge_timeout_s=settings.worker.dispatch_timeout_s,
        retries=settings.store.retries,
        worker_name=worker_name,
    )


def build_trainer_parts(settings: Settings, training: TrainingSettings) -> TrainerParts:
    """The trainer's parts from the settings: database, store, the gate's editor and scorer
    (no reflector: the gate scores only), released after every job."""
    store = open_store(settings)
    models = GateModels(
        load_editor=lambda old, checkpoint: load_editor(settings, store, old, checkpoint),
        load_scorer=lambda: load_model_judges(settings, with_reflector=False)[0],
    )

    def verify(folder: Path) -> None:
        editor = models.editor(None)
        if isinstance(editor, PixelEditor):
            PixelEditorModel.from_pretrained(folder)  # a pixel checkpoint is a whole editor
            return
        # Load the candidate into the base editor, then put the editor back on the base weights
        # (the state the model holder believes it is in).
        if not isinstance(editor, InstructionEditor):
            raise ValueError(f"cannot verify a checkpoint with a {type(editor).__name__}")
        editor.use_checkpoint("candidate-under-verification", folder)
        editor.use_base()

    return TrainerParts(
        factory=open_database(settings),
        store=store,
        settings=training,
        work_dir=training.work_dir or settings.data_dir / "training",
        model=str(editor_model_dir(settings)),
        cache_dir=settings.data_dir / "checkpoint-cache",
        editor_for=models.editor,
        verify=verify,
        load_scorer=models.scorer,
        release=models.release,
    )
