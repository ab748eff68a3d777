"""The self-improvement benchmark's settings: its arms, the full, fast and demo settings.

Plain data, no models: the command line reads it for its options and help without torch.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from policies.pixel_config import PixelEditorConfig

TRAIN_ORIGIN = "shapes-compound"
HELDOUT_ORIGIN = "heldout"
# Task seeds, apart from each other and from the evaluation's (998, 999) and pre-training's.
TRAIN_TASK_SEED = 100
GATE_COMPOUND_SEED = 500
GATE_SINGLE_SEED = 501
REPLAY_SEED = 7


@dataclass(frozen=True)
class ArmSpec:
    """What one arm of the benchmark does differently; everything else is shared."""

    description: str
    max_reflections: int  # tries after the first (0: one step only)
    hindsight: bool  # train on hindsight examples of successful chains
    unfiltered: bool  # train on every judged sample, whatever its verdict


ARMS: dict[str, ArmSpec] = {
    "hindsight": ArmSpec("reflection + hindsight examples", 2, True, False),
    "reject": ArmSpec("one-step successes only", 0, False, False),
    "control": ArmSpec("every one-step sample, unfiltered", 0, False, True),
}


@dataclass(frozen=True)
class SelfImproveConfig:
    """One benchmark run; the defaults are the full setting of the hindsight experiment
    (docs/design.md, "Learning from judged edits")."""

    out_dir: Path  # results and one folder per arm
    pretrained_dir: Path | None = None  # the pre-trained editor, reused; None: <out_dir>/pretrained
    arms: tuple[str, ...] = tuple(ARMS)
    rounds: int = 3  # loop rounds per arm, each followed by fine-tuning and the gate
    tasks_per_round: int = 384  # compound tasks edited per round (one sample each)
    pretrain_steps: int = 1200  # single-operation pre-training, batch `batch_size`
    pretrain_lr: float = 1e-3
    finetune_steps: int = 120  # DeepSpeed optimizer steps per round (the budget of every arm)
    batch_size: int = 32  # examples per step, pre-training and fine-tuning
    finetune_lr: float = 3e-4
    replay_fraction: float = 0.5  # share of every fine-tuning batch from the supervised set
    replay_examples: int = 2000  # size of the supervised single-operation set replayed
    eval_tasks: int = 200  # held-out tasks of each kind measured after every round
    gate_tasks: int = 64  # held-out tasks of each kind the gate edits (others than eval's)
    gate_margin: float = 0.25  # promote unless the gate's mean score drops by more (1-5 scale)
    edit_batch_size: int = 128  # attempts per edit task (and editor call)
    # Arms run at once, each in a process of its own with cpus / parallel_arms torch threads
    # (0: all arms at once). Tiny models use one thread much better than two: on 2 cores three
    # one-thread arms finish sooner than three two-thread arms in turn.
    parallel_arms: int = 0
    editor: PixelEditorConfig = field(default_factory=PixelEditorConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [arm for arm in self.arms if arm not in ARMS]
        if unknown or not self.arms:
            raise ValueError(f"arms={list(self.arms)}: choose from {list(ARMS)}")
        positive = (
            "rounds", "tasks_per_round", "pretrain_steps", "finetune_steps", "batch_size",
            "eval_tasks", "gate_tasks", "replay_examples", "edit_batch_size",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be positive")
        if not 0 <= self.replay_fraction < 1:
            raise ValueError(f"replay_fraction={self.replay_fraction}: in [0, 1)")
        if self.parallel_arms < 0:
            raise ValueError(f"parallel_arms={self.parallel_arms}: 0 (all) or a positive count")


# The fast variant the test suite runs: the mechanics at toy size, not the improvement.
FAST = {
    "rounds": 2,
    "tasks_per_round": 32,
    "pretrain_steps": 500,
    "pretrain_lr": 2e-3,
    "finetune_steps": 4,
    "batch_size": 32,
    "replay_examples": 32,
    "eval_tasks": 16,
    "gate_tasks": 4,
    "gate_margin": 4.0,  # promote whatever the toy editor does: the test checks the hand-over
    "edit_batch_size": 32,
    "editor": PixelEditorConfig(block_out_channels=(16, 32, 32), embedding_dim=32),
}

# The setting `editloop demo` runs: one arm, two rounds; about 10 minutes on 2 CPU cores, 6 of
# them pre-training the editor (kept, so about 4 after).
DEMO = {
    "arms": ("hindsight",),
    "rounds": 2,
    "tasks_per_round": 256,
    "eval_tasks": 100,
}


@dataclass
class ArmFolders:
    """The inputs every arm shares, written once per benchmark run."""

    base_editor: Path
    train_tasks: Path
    gate_tasks: Path
    replay: Path


Log = Callable[[str], None]


def pretrained_dir(data_dir: Path) -> Path:
    """Where the pre-trained shapes editor is kept: shared by the demo and the benchmark, and
    reused while the pre-training setting is the same."""
    return data_dir / "models" / "shapes-pixel-editor"
