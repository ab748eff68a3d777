"""What a worker process needs, built once by the composition root and handed to the tasks."""

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from policies.types import Editor
from rewards.types import Reflector, Scorer
from rewards.verdict import VerdictThresholds
from store.images import ImageLimits
from store.models import Checkpoint
from store.objects import ObjectStore

# Given the editor currently loaded (or None) and the checkpoint wanted (None = the base model),
# return an editor with that checkpoint, reusing the loaded base weights where it can.
EditorLoader = Callable[[Editor | None, Checkpoint | None], Editor]
JudgeLoader = Callable[[], tuple[Scorer, Reflector | None]]
# Given the judge and reflector checkpoints wanted (None: the configured model of that role),
# return the scorer and the reflector with them.
JudgeCheckpointLoader = Callable[
    [Checkpoint | None, Checkpoint | None], tuple[Scorer, Reflector | None]
]


@dataclass
class ModelCache:
    """One editor and one judge per process, loaded on first use; the editor swaps checkpoints,
    and so do the judge and the reflector where `load_judges_at` is given."""

    load_editor: EditorLoader
    load_judges: JudgeLoader
    # None: judges that have no checkpoints (the shapes world's exact ones) ignore them.
    load_judges_at: JudgeCheckpointLoader | None = None
    _editor: Editor | None = None
    _editor_checkpoint: int | None = None
    _editor_version: str | None = None
    _judges: tuple[Scorer, Reflector | None] | None = None
    _judges_at: tuple[int | None, int | None] = (None, None)

    def editor(self, checkpoint: Checkpoint | None) -> Editor:
        """The editor at `checkpoint` (None: base), swapping in place when another is loaded."""
        wanted = checkpoint.id if checkpoint is not None else None
        if self._editor is None or wanted != self._editor_checkpoint:
            # The loader receives the old editor so that it can reuse and free it: never two
            # full editors alive for longer than the swap.
            self._editor = self.load_editor(self._editor, checkpoint)
            self._editor_checkpoint = wanted
            self._editor_version = checkpoint.version if checkpoint is not None else "base"
        return self._editor

    @property
    def loaded_checkpoint(self) -> str | None:
        """The version of the editor checkpoint loaded ("base"), None before the first edit."""
        return self._editor_version if self._editor is not None else None

    def judges(
        self, judge: Checkpoint | None = None, reflector: Checkpoint | None = None
    ) -> tuple[Scorer, Reflector | None]:
        """The scorer and the reflector (None when the run uses the scorer alone), at the
        `judge` and `reflector` checkpoints (None: the configured models), swapped on change."""
        wanted = (judge.id if judge else None, reflector.id if reflector else None)
        if self.load_judges_at is None:
            wanted = (None, None)
        if self._judges is None or wanted != self._judges_at:
            # The old models go before the new ones load: never two judges in memory at once.
            self._judges = None
            if wanted == (None, None) or self.load_judges_at is None:
                self._judges = self.load_judges()
            else:
                self._judges = self.load_judges_at(judge, reflector)
            self._judges_at = wanted
        return self._judges


@dataclass
class WorkerContext:
    session_factory: sessionmaker[Session]
    store: ObjectStore
    models: ModelCache
    image_limits: ImageLimits = ImageLimits()
    thresholds: VerdictThresholds = VerdictThresholds()
    judge_timeout_s: float = 900.0
    retries: int = 5
    worker_name: str = "in-process"  # recorded on the attempts this process starts editing


_context: WorkerContext | None = None


def set_worker_context(context: WorkerContext | None) -> None:
    """Install (or clear) the process's context; done by `editloop worker` / `editloop run`."""
    global _context
    _context = context


def get_worker_context() -> WorkerContext:
    """The installed context; a clear error when the process was started without one."""
    if _context is None:
        raise RuntimeError(
            "this process has no editloop worker context: start workers with `editloop worker`"
        )
    return _context
