"""The files of a run folder (`TrainConfig.output_dir`), readable without loading DeepSpeed.

deepspeed/          DeepSpeed checkpoints (`step-00000050/`, ..., `latest`)
loss_log.jsonl      one line per optimizer step: step, train/loss, train/lr (rank 0)
progress.json       the last finished step (rank 0, rewritten every step)
final/              the editor-format checkpoint, its loss log and train_metrics.json;
                    present only when complete (written aside, then renamed)
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as JSON atomically (aside, then renamed)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


def append_loss(path: Path, step: int, loss: float, lr: float) -> None:
    """Add one step's line to the loss log."""
    with path.open("a") as handle:
        handle.write(json.dumps({"step": step, "train/loss": loss, "train/lr": lr}) + "\n")


def loss_rows(path: Path) -> Iterator[dict[str, Any]]:
    """The loss log's rows (none when it does not exist)."""
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                yield json.loads(line)


def read_losses(path: Path) -> list[float]:
    """The loss of every logged step, in order."""
    return [row["train/loss"] for row in loss_rows(path)]


def truncate_loss_log(path: Path, step: int) -> None:
    """Keep the rows of steps up to `step`: later ones were logged after the checkpoint resumed
    from, and are run again."""
    rows = [row for row in loss_rows(path) if row["step"] <= step]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tmp.replace(path)
