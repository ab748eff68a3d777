"""The inputs every arm of one seed shares: the pre-trained editor (shipped, or trained once and
kept), the loop's and the gate's task folders and the supervised replay set, each drawn from its
own part of the task space (`worlds.shapes.partition`), so that no two of them, the pre-training
stream and the evaluation share an edit, whatever the seed."""

import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
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
from policies.pixel_pretrain import (
    REPORT_NAME,
    PretrainConfig,
    matches_shipped,
    pretrain_pixel_editor,
    shipped_record,
    unpack_editor,
    weights_setting,
)
from worlds.shapes.partition import Part
from worlds.shapes.tasks import (
    ShapesTask,
    generate_compound_tasks,
    generate_single_op_tasks,
    task_to_meta,
)


@dataclass(frozen=True)
class TaskSets:
    """The tasks of one seed: the loop's compound tasks, the gate's (compound then single
    operation) and the supervised single-operation set replayed in fine-tuning."""

    train: list[ShapesTask]
    gate: list[ShapesTask]
    replay: list[ShapesTask]


def task_sets(config: SelfImproveConfig, seed: int) -> TaskSets:
    """The seed's task sets, each distinct and from its part: loop tasks for every round (`fresh`
    draws never repeat one), gate tasks, replay examples from the pre-training part."""
    return TaskSets(
        train=generate_compound_tasks(
            config.tasks_per_round * config.rounds,
            seed=TRAIN_TASK_SEED + seed,
            part=Part.LOOP,
            distinct=True,
        ),
        gate=generate_compound_tasks(
            config.gate_tasks, seed=GATE_COMPOUND_SEED + seed, part=Part.GATE, distinct=True
        )
        + generate_single_op_tasks(
            config.gate_tasks, seed=GATE_SINGLE_SEED + seed, part=Part.GATE, distinct=True
        ),
        replay=generate_single_op_tasks(
            config.replay_examples, seed=REPLAY_SEED + seed, part=Part.PRETRAIN, distinct=True
        ),
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


def pretrain_config(config: SelfImproveConfig, seed: int) -> PretrainConfig:
    """The pre-training of the seed's editor (the benchmark measures round 0 itself)."""
    return PretrainConfig(
        steps=config.pretrain_steps,
        batch_size=config.batch_size,
        learning_rate=config.pretrain_lr,
        seed=seed,
        eval_tasks=0,
        editor=config.editor,
    )


def base_editor_dir(config: SelfImproveConfig, seed: int) -> Path:
    """The folder of the seed's pre-trained editor: one per pre-training setting."""
    setting = weights_setting(pretrain_config(config, seed))
    key = hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:12]
    return (config.pretrained_dir or config.out_dir / "pretrained") / key


def _is_complete(folder: Path, pretrain: PretrainConfig) -> bool:
    report = folder / REPORT_NAME
    if not report.is_file():
        return False
    saved = dict(json.loads(report.read_text()).get("config", {}))
    for name in ("eval_tasks", "log_every"):
        saved.pop(name, None)
    return saved == weights_setting(pretrain)


def needs_pretraining(config: SelfImproveConfig, seed: int) -> bool:
    """Whether the seed's editor has to be pre-trained (neither kept nor shipped)."""
    pretrain = pretrain_config(config, seed)
    folder = base_editor_dir(config, seed)
    return not _is_complete(folder, pretrain) and not matches_shipped(pretrain)


def ensure_base_editor(
    config: SelfImproveConfig, seed: int, log: Log, progress: bool | None = None
) -> Path:
    """The seed's pre-trained editor: kept from an earlier run, unpacked from the shipped file
    (its SHA-256 checked), or pre-trained now and kept (`progress`: its bar, None: on a
    terminal)."""
    pretrain = pretrain_config(config, seed)
    folder = base_editor_dir(config, seed)
    if _is_complete(folder, pretrain):
        log(f"pre-trained editor (seed {seed}): reusing {folder}")
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    if matches_shipped(pretrain):
        record = shipped_record() or {}
        unpack_editor(folder)
        log(f"pre-trained editor (seed {seed}): the shipped one, sha256 {record['sha256'][:16]}…")
        return folder
    log(f"pre-training the editor on single operations (seed {seed}, {pretrain.steps} steps)")
    pretrain_pixel_editor(folder, replace(pretrain, log_every=200), log=log, progress=progress)
    return folder


def prepare_inputs(config: SelfImproveConfig, seed: int, log: Log) -> ArmFolders:
    """The seed's pre-trained editor, loop and gate task folders and replay set (the same for
    every arm and judge noise of the seed)."""
    base = ensure_base_editor(config, seed, log)
    sets = task_sets(config, seed)
    inputs = config.out_dir / f"seed-{seed}" / "inputs"
    shutil.rmtree(inputs, ignore_errors=True)
    return ArmFolders(
        base_editor=base,
        train_tasks=write_task_folder(inputs / "train", sets.train),
        gate_tasks=write_task_folder(inputs / "gate", sets.gate),
        replay=write_supervised_set(inputs / "replay", sets.replay),
    )
