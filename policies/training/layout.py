"""The files of a run folder (`TrainConfig.output_dir`), readable without loading DeepSpeed.

deepspeed/          DeepSpeed checkpoints (`step-00000050/`, ..., `latest`)
loss_log.jsonl      one line per optimizer step: step, train/loss, train/lr (rank 0)
progress.json       the last finished step (rank 0, rewritten every step)
final/              the editor-format checkpoint, its loss log and train_metrics.json;
                    present only when complete (written aside, then renamed)
"""

import json
from dataclasses import dataclass
from pathlib import Path

DEEPSPEED_DIR = "deepspeed"
FINAL_DIR = "final"
LOSS_LOG = "loss_log.jsonl"
PROGRESS_FILE = "progress.json"
METRICS_FILE = "train_metrics.json"
# Set by the trainer: a rank whose launcher died cannot finish its collectives; it exits too.
DIE_WITH_PARENT_ENV = "EDITLOOP_DIE_WITH_PARENT"


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced (also in `final/train_metrics.json`)."""

    final_dir: str
    kind: str  # full | lora
    objective: str  # ip2p | flow | pixel
    sample_count: int  # examples in the manifest (pool), without replay
    metrics: dict[str, float]


def read_final(output_dir: Path) -> TrainResult | None:
    """The result of a run that already finished in `output_dir`, or None."""
    metrics_file = output_dir / FINAL_DIR / METRICS_FILE
    if not metrics_file.is_file():
        return None
    return TrainResult(**json.loads(metrics_file.read_text())["result"])


def read_progress(output_dir: Path) -> int | None:
    """The last finished step of the run in `output_dir`, or None before the first."""
    try:
        return int(json.loads((output_dir / PROGRESS_FILE).read_text())["step"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None
