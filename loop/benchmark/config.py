"""The self-improvement benchmark's settings: arms, conditions, the full, fast and demo settings.

Plain data, no models: the command line reads it for its options and help without torch.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policies.pixel_config import PixelEditorConfig

TRAIN_ORIGIN = "shapes-compound"
HELDOUT_ORIGIN = "heldout"
# Seeds of the task draws (added to the benchmark's seed); the parts of the task space they draw
# from are disjoint whatever the seeds (`worlds.shapes.partition`).
TRAIN_TASK_SEED = 100
GATE_COMPOUND_SEED = 500
GATE_SINGLE_SEED = 501
REPLAY_SEED = 7
NOISE_MODES = ("flip", "lenient")


@dataclass(frozen=True)
class ArmSpec:
    """What one arm of the benchmark does differently; everything else is shared (tasks, rounds,
    fine-tuning steps, batch, replay, gate)."""

    description: str
    max_reflections: int  # tries after the first (0: one step only)
    hindsight: bool  # train on hindsight examples of successful chains
    unfiltered: bool  # train on every judged sample, whatever its verdict
    matched_budget: bool = False  # k one-step samples per task, k = hindsight's calls per task
    oracle: bool = False  # the editor's edits are the ground-truth targets
    # Whether what it trains on depends on the judge's verdicts (only these run with judge noise).
    judged: bool = True


ARMS: dict[str, ArmSpec] = {
    "hindsight": ArmSpec("reflection + hindsight examples", 2, True, False),
    "reflect-direct": ArmSpec("reflection, trained on direct examples only", 2, False, False),
    "best-of-k": ArmSpec(
        "k one-step samples per task (hindsight's editor calls), trained on the successes",
        0,
        False,
        False,
        matched_budget=True,
    ),
    "reject": ArmSpec("one-step successes only", 0, False, False),
    "control": ArmSpec("every one-step sample, unfiltered", 0, False, True, judged=False),
    "oracle": ArmSpec(
        "ground-truth targets of the same tasks (the ceiling)",
        0,
        False,
        True,
        oracle=True,
        judged=False,
    ),
}
DEFAULT_ARMS: tuple[str, ...] = ("hindsight", "best-of-k", "control")


@dataclass(frozen=True)
class SelfImproveConfig:
    """One benchmark run; the defaults are the full setting of the hindsight experiment
    (docs/design.md, "Learning from judged edits")."""

    out_dir: Path  # results and one folder per seed, judge noise and arm
    pretrained_dir: Path | None = (
        None  # the pre-trained editors, reused; None: <out_dir>/pretrained
    )
    arms: tuple[str, ...] = DEFAULT_ARMS
    rounds: int = 3  # loop rounds per arm, each followed by fine-tuning and the gate
    tasks_per_round: int = 384  # compound tasks edited per round (fresh tasks every round)
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
    # Arm runs at once, each in a process of its own with one torch thread when several run
    # (0: as many as the CPUs, at least 3). Tiny models use one thread much better than two: on 2
    # cores three one-thread arms finish sooner than three two-thread arms in turn.
    parallel_arms: int = 0
    editor: PixelEditorConfig = field(default_factory=PixelEditorConfig)
    seed: int = 0  # the first seed
    seeds: int = 1  # the comparison is repeated with seeds seed, seed + 1, ...
    judge_noise: tuple[float, ...] = (0.0,)  # judge error rates, one condition each
    noise_mode: str = "flip"  # how the judge errs (rewards.shapes_judge.JudgeNoise)
    recipe: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides, every arm
    gallery_tasks: int = 12  # held-out compound tasks shown in the gallery

    def __post_init__(self) -> None:
        unknown = [arm for arm in self.arms if arm not in ARMS]
        if unknown or not self.arms or len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms={list(self.arms)}: choose distinct arms from {list(ARMS)}")
        if "best-of-k" in self.arms and "hindsight" not in self.arms:
            raise ValueError("arms: best-of-k takes its budget from the hindsight arm: add it")
        positive = (
            "rounds", "tasks_per_round", "pretrain_steps", "finetune_steps", "batch_size",
            "eval_tasks", "gate_tasks", "replay_examples", "edit_batch_size", "seeds",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be positive")
        if not 0 <= self.replay_fraction < 1:
            raise ValueError(f"replay_fraction={self.replay_fraction}: in [0, 1)")
        if self.parallel_arms < 0:
            raise ValueError(f"parallel_arms={self.parallel_arms}: 0 (automatic) or a count")
        if not self.judge_noise or any(not 0 <= p <= 1 for p in self.judge_noise):
            raise ValueError(f"judge_noise={list(self.judge_noise)}: probabilities in [0, 1]")
        if len(set(self.judge_noise)) != len(self.judge_noise):
            raise ValueError(f"judge_noise={list(self.judge_noise)}: each level once")
        if self.noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode={self.noise_mode!r}: one of {', '.join(NOISE_MODES)}")
        if self.gallery_tasks < 0 or self.gallery_tasks > self.eval_tasks:
            raise ValueError(f"gallery_tasks={self.gallery_tasks}: 0 to eval_tasks")

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seed, self.seed + self.seeds))


@dataclass(frozen=True)
class Condition:
    """One repetition of the comparison: a seed and a judge error rate."""

    seed: int
    noise: float

    @property
    def name(self) -> str:
        return f"seed-{self.seed}/noise-{self.noise:g}"


def condition_dir(config: SelfImproveConfig, condition: Condition) -> Path:
    """Where a condition's arms run: `<out>/seed-<s>/noise-<p>`."""
    return config.out_dir / f"seed-{condition.seed}" / f"noise-{condition.noise:g}"


def arm_dir(config: SelfImproveConfig, condition: Condition, arm: str) -> Path:
    """One arm's embedded deployment (database, objects, job folders, gallery edits)."""
    return condition_dir(config, condition) / "arms" / arm


def base_gallery_dir(config: SelfImproveConfig, seed: int) -> Path:
    """The pre-trained editor's gallery edits (round 0 of every arm of the seed)."""
    return config.out_dir / f"seed-{seed}" / "gallery-base"


def run_name(arm: str) -> str:
    """The loop run of an arm, in its own database."""
    return f"self-improve-{arm}"


def conditions(config: SelfImproveConfig) -> list[Condition]:
    """Every (seed, judge noise) the configuration repeats the comparison under."""
    return [Condition(s, p) for p in config.judge_noise for s in config.seed_list]


def arms_under(config: SelfImproveConfig, noise: float) -> list[str]:
    """The arms run under a judge error rate: with noise, only those whose training data depend on
    the verdicts (control and oracle train on every sample: the noise only reaches their gate)."""
    return [arm for arm in config.arms if noise == 0 or ARMS[arm].judged]


# The fast variant the test suite runs: the mechanics of every arm at toy size, not the
# improvement. It edits with the shipped pre-trained editor (no pre-training).
FAST: dict[str, Any] = {
    "arms": tuple(ARMS),
    "rounds": 2,
    "tasks_per_round": 24,
    "finetune_steps": 3,
    "replay_examples": 32,
    "eval_tasks": 16,
    "gate_tasks": 4,
    "gate_margin": 4.0,  # promote whatever the toy run does: the test checks the hand-over
    "edit_batch_size": 64,
    "gallery_tasks": 4,
}

# The setting `editloop demo` runs: one arm, two rounds, from the shipped pre-trained editor.
DEMO: dict[str, Any] = {
    "arms": ("hindsight",),
    "rounds": 2,
    "tasks_per_round": 256,
    "eval_tasks": 100,
}


@dataclass
class ArmFolders:
    """The inputs every arm of one seed shares, written once per benchmark run."""

    base_editor: Path
    train_tasks: Path
    gate_tasks: Path
    replay: Path


Log = Callable[[str], None]


def pretrained_dir(data_dir: Path) -> Path:
    """Where pre-trained shapes editors are kept: shared by the demo and the benchmark, one
    folder per pre-training setting, reused while it is the same."""
    return data_dir / "models" / "shapes-pixel-editor"
