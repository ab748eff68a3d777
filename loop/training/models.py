"""The models a trainer loads between two training runs: the editor that verifies and gates a
checkpoint and the scorer of the gate, released after every job.

A trainer shares its node (its GPUs) with the training ranks it launches: an editor and a judge
left resident after a job's gate would sit on rank 0's GPU while the next job trains, and a
12B editor plus a 7B judge is about 40 GB in bf16.
"""

import gc
import logging
import sys
from collections.abc import Callable

from policies.types import Editor
from rewards.types import Scorer
from store.models import Checkpoint

log = logging.getLogger(__name__)

# (editor currently loaded or None, checkpoint wanted or None for the base) -> the editor.
EditorLoader = Callable[[Editor | None, Checkpoint | None], Editor]


class GateModels:
    """The editor (switched between checkpoints in place) and the scorer, loaded on first use
    and dropped by `release`."""

    def __init__(self, load_editor: EditorLoader, load_scorer: Callable[[], Scorer]) -> None:
        self._load_editor = load_editor
        self._load_scorer = load_scorer
        self._editor: Editor | None = None
        self._checkpoint: int | None = None
        self._scorer: Scorer | None = None

    def editor(self, checkpoint: Checkpoint | None) -> Editor:
        """The editor at `checkpoint` (None: the base model)."""
        wanted = checkpoint.id if checkpoint is not None else None
        if self._editor is None or wanted != self._checkpoint:
            self._editor = self._load_editor(self._editor, checkpoint)
            self._checkpoint = wanted
        return self._editor

    def scorer(self) -> Scorer:
        """The gate's scorer."""
        if self._scorer is None:
            self._scorer = self._load_scorer()
        return self._scorer

    @property
    def loaded(self) -> bool:
        """Whether an editor or a scorer is held."""
        return self._editor is not None or self._scorer is not None

    def release(self) -> None:
        """Drop the editor and the scorer and give their (GPU) memory back."""
        if not self.loaded:
            return
        self._editor = self._scorer = None
        self._checkpoint = None
        gc.collect()  # model graphs hold reference cycles (hooks, adapters)
        torch = sys.modules.get("torch")  # only a process that loaded a model has cached memory
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.info("released the gate's editor and scorer")
