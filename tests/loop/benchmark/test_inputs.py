"""The benchmark's inputs: task sets disjoint by construction for any seed, a collision refused at
ingest, the shipped editor standing in for pre-training."""

import random
from pathlib import Path

import pytest

from loop.benchmark.config import SelfImproveConfig
from loop.benchmark.inputs import (
    ensure_base_editor,
    needs_pretraining,
    task_sets,
    write_task_folder,
)
from loop.benchmark.self_improve import ingest_folder
from loop.schema import ensure_schema
from loop.services import open_database, open_store
from loop.settings import Settings
from policies.pixel_pretrain import REPORT_NAME, PretrainConfig, eval_tasks
from worlds.shapes.partition import Part
from worlds.shapes.tasks import random_single_op_task


@pytest.mark.parametrize("seed", [0, 1, 2, 17, 100, 400])
def test_every_task_set_is_disjoint_from_the_others_for_any_seed(tmp_path: Path, seed: int) -> None:
    # Seeds that once made the loop's tasks equal the gate's (e.g. 400: 100 + 400 = 500) are here.
    config = SelfImproveConfig(
        out_dir=tmp_path, rounds=3, tasks_per_round=60, gate_tasks=40, replay_examples=200
    )
    sets = task_sets(config, seed)
    singles, compounds = eval_tasks(200)
    stream = random.Random(seed)  # what pre-training draws (`PretrainConfig.part`)
    pretraining = [
        random_single_op_task(stream, part=Part(PretrainConfig().part)) for _ in range(500)
    ]
    named = {
        "loop": sets.train,
        "gate": sets.gate,
        "replay": sets.replay,
        "evaluation": singles + compounds,
        "pre-training": pretraining,
    }
    keys = {name: {task.key for task in tasks} for name, tasks in named.items()}
    assert len(keys["loop"]) == len(sets.train) == 180  # fresh rounds never repeat a task
    assert len(keys["gate"]) == 80 and len(keys["evaluation"]) == 400
    for a in named:
        for b in named:
            if a < b and {a, b} != {"replay", "pre-training"}:  # replay is pre-training data
                assert not keys[a] & keys[b], (a, b, seed)


def test_a_task_arriving_from_another_part_is_refused_at_ingest(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "arm")
    ensure_schema(settings)
    factory, store = open_database(settings), open_store(settings)
    config = SelfImproveConfig(out_dir=tmp_path, rounds=1, tasks_per_round=3, gate_tasks=2)
    sets = task_sets(config, 0)
    train = write_task_folder(tmp_path / "train", sets.train)
    ingest_folder(settings, factory, store, train, "shapes-compound")
    with pytest.raises(RuntimeError, match="3 tasks were known already \\(3 of them from another"):
        ingest_folder(settings, factory, store, train, "heldout")


def test_the_shipped_editor_stands_in_for_the_default_pre_training(tmp_path: Path) -> None:
    config = SelfImproveConfig(out_dir=tmp_path, pretrained_dir=tmp_path / "models")
    assert not needs_pretraining(config, 0)  # shipped
    assert needs_pretraining(config, 1)  # another seed: pre-trained when run
    lines: list[str] = []
    folder = ensure_base_editor(config, 0, lines.append)
    assert (folder / REPORT_NAME).is_file() and "the shipped one" in lines[0]
    assert ensure_base_editor(config, 0, lines.append) == folder and "reusing" in lines[1]
