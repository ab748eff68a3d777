"""The inputs every arm shares, written once per benchmark run: the pre-trained editor (kept and
reused across runs), the training and gate task folders, and the supervised replay set."""

import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from loop.benchmark.config import (
    GATE_COMPOUND_SEED,
    GATE_SINGLE_SEED,
    REPLAY_SEED,
    TRAIN_TASK_SEED,
    ArmFolders,
    Log,
    SelfImproveConfig,
)
from policies.pixel_pretrain import REPORT_NAME, PretrainConfig, pretrain_pixel_editor
from worlds.shapes.tasks import (
    ShapesTask,
    generate_compound_tasks,
    generate_single_op_tasks,
    task_to_meta,
)


def write_task_folder(folder: Path, tasks: Sequence[ShapesTask]) -> Path:
    """Source images and an `instructions.jsonl` (the `editloop ingest` folder format)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, task in enumerate(tasks):
        name = f"{index:05d}.png"
        task.source_image().save(folder / name)
        row = {"image": name, "instruction": task.instruction, "edit_type": task.edit_type}
        rows.append(json.dumps({**row, "shapes": task_to_meta(task)}))
    (folder / "instructions.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def write_supervised_set(folder: Path, tasks: Sequence[ShapesTask]) -> Path:
    """Source and exact target images with a `replay.jsonl` (`read_supervised_set`'s format)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, task in enumerate(tasks):
        source, target = f"{index:05d}-source.png", f"{index:05d}-target.png"
        task.source_image().save(folder / source)
        task.target_image().save(folder / target)
        rows.append(
            json.dumps({"source": source, "instruction": task.instruction, "target": target})
        )
    path = folder / "replay.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def ensure_base_editor(config: SelfImproveConfig, log: Log) -> Path:
    """The pre-trained editor of this configuration, trained once and reused by later runs."""
    pretrain = PretrainConfig(
        steps=config.pretrain_steps,
        batch_size=config.batch_size,
        learning_rate=config.pretrain_lr,
        seed=config.seed,
        eval_tasks=0,  # the benchmark measures round 0 itself, like every later round
        editor=config.editor,
    )
    # One folder per pre-training setting, so that settings do not overwrite each other.
    key = hashlib.sha256(json.dumps(asdict(pretrain), sort_keys=True).encode()).hexdigest()[:12]
    folder = (config.pretrained_dir or config.out_dir / "pretrained") / key
    report = folder / REPORT_NAME
    if report.is_file() and json.loads(report.read_text()).get("config") == asdict(pretrain):
        log(f"pre-trained editor: reusing {folder}")
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    log(f"pre-training the editor on single operations ({config.pretrain_steps} steps)")
    pretrain_pixel_editor(folder, pretrain, log=log)
    return folder


def prepare_inputs(config: SelfImproveConfig, log: Log) -> ArmFolders:
    """Pre-trained editor, training and gate task folders, replay set (same for every arm)."""
    base = ensure_base_editor(config, log)
    inputs = config.out_dir / "inputs"
    shutil.rmtree(inputs, ignore_errors=True)
    train = generate_compound_tasks(
        config.tasks_per_round * config.rounds, seed=TRAIN_TASK_SEED + config.seed
    )
    gate = generate_compound_tasks(
        config.gate_tasks, seed=GATE_COMPOUND_SEED
    ) + generate_single_op_tasks(config.gate_tasks, seed=GATE_SINGLE_SEED)
    replay = generate_single_op_tasks(config.replay_examples, seed=REPLAY_SEED)
    return ArmFolders(
        base_editor=base,
        train_tasks=write_task_folder(inputs / "train", train),
        gate_tasks=write_task_folder(inputs / "gate", gate),
        replay=write_supervised_set(inputs / "replay", replay),
    )
