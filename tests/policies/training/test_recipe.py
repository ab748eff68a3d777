"""The DeepSpeed recipe on the tiny InstructPix2Pix, on CPU, through its real command line.

Each run is `python -m loop.cli.train CONFIG` (what the trainer launches), alone or under
`torchrun --nproc_per_node 2` (gloo), reading a small fixed set of shapes-world edits from the
object store. What must hold: the loss on that fixed set (same noise, same timesteps, no
conditioning dropout) goes down, and the saved checkpoint loads in `InstructionEditor` and
changes its output.
"""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from loop.cli.app import app
from policies.editor import InstructionEditor
from policies.pixel_config import PixelEditorConfig
from policies.pixel_editor import PixelEditorModel, images_to_tensor
from policies.settings import EditorSettings
from policies.training.config import TrainConfig
from policies.training.data import EditExamples, read_manifest
from policies.training.layout import (
    DIE_WITH_PARENT_ENV,
    FINAL_DIR,
    LOSS_LOG,
    METRICS_FILE,
    PROGRESS_FILE,
)
from policies.training.objectives.ip2p import InstructPix2PixObjective
from policies.training.objectives.pixel import PixelObjective
from policies.types import EditRequest
from store.objects import LocalStore, ObjectStore
from store.s3 import S3Store
from tests.fixtures.services import free_port
from tests.fixtures.training import SUBPROCESS_ENV, TINY_RECIPE, put_fixed_set
from worlds.shapes.tasks import generate_single_op_tasks

EXAMPLES = 8
_BASE_FIGURES: dict[tuple[str, str], tuple[float, torch.Tensor]] = {}


@pytest.fixture(scope="module")
def local_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data dir whose objects/ hold the fixed set, its manifest)."""
    data_dir = tmp_path_factory.mktemp("recipe-data")
    store = LocalStore(data_dir / "objects")
    return data_dir, put_fixed_set(store, data_dir / "manifest.jsonl")


def run_recipe(
    config: TrainConfig, *, env: dict[str, str], nproc: int = 1
) -> subprocess.CompletedProcess[str]:
    """Run the recipe as the trainer does; fails the test with the ranks' output if it fails."""
    path = Path(config.output_dir).with_suffix(".json")
    path.write_text(config.to_json())
    launcher = [sys.executable, "-m", "loop.cli.train"]
    if nproc > 1:
        launcher = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(free_port()), "-m", "loop.cli.train",
        ]  # fmt: skip
    environment = {k: v for k, v in os.environ.items() if not k.startswith("EDITLOOP_")}
    result = subprocess.run(
        [*launcher, str(path)],
        env=environment | SUBPROCESS_ENV | {DIE_WITH_PARENT_ENV: "1"} | env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def fixed_set_loss(
    model: Path, manifest: Path, store: ObjectStore, checkpoint: Path | None = None
) -> float:
    """Mean InstructPix2Pix loss of the fixed set under 4 fixed noise draws, no dropout."""
    config = TrainConfig(
        model=str(model),
        manifest=str(manifest),
        output_dir="unused",
        init_checkpoint=str(checkpoint or ""),
        resolution=32,
        drop_text=0.0,
        drop_image=0.0,
        drop_both=0.0,
    )
    objective = InstructPix2PixObjective(config, torch.device("cpu"), torch.float32)
    objective.unet.eval()
    dataset = EditExamples(read_manifest(manifest), lambda: store, 32)
    batch = {
        "source": torch.stack([dataset[i]["source"] for i in range(len(dataset))]),
        "target": torch.stack([dataset[i]["target"] for i in range(len(dataset))]),
        "instruction": [dataset[i]["instruction"] for i in range(len(dataset))],
    }
    with torch.no_grad():
        losses = [
            objective.loss(objective.unet, batch, torch.Generator().manual_seed(seed)).item()
            for seed in range(4)
        ]
    return sum(losses) / len(losses)


def edit_once(model: Path, checkpoint: Path | None) -> torch.Tensor:
    editor = InstructionEditor.from_settings(
        EditorSettings(steps=2, max_pixels=64 * 64), model=model
    )
    if checkpoint is not None:
        editor.use_checkpoint("trained", checkpoint)
    task = generate_single_op_tasks(1, seed=9)[0]
    result = editor.edit([EditRequest(task.source_image().resize((32, 32)), task.instruction, 0)])
    assert result[0].image is not None, result[0].error
    return torch.tensor(list(result[0].image.getdata()), dtype=torch.float32)


def check_run(
    config: TrainConfig,
    model: Path,
    manifest: Path,
    store: ObjectStore,
    *,
    kind: str,
    max_ratio: float = 0.9,
) -> dict:
    """The run's files are complete, its loss went down on the fixed set, and its checkpoint
    changes the editor's output; returns its training metrics."""
    out = Path(config.output_dir)
    steps = [json.loads(line)["step"] for line in (out / LOSS_LOG).read_text().splitlines()]
    assert steps == list(range(1, config.max_steps + 1))
    assert json.loads((out / PROGRESS_FILE).read_text())["step"] == config.max_steps
    final = out / FINAL_DIR
    summary = json.loads((final / METRICS_FILE).read_text())
    assert summary["result"]["kind"] == kind
    assert summary["result"]["sample_count"] == EXAMPLES
    assert (final / LOSS_LOG).read_text() == (out / LOSS_LOG).read_text()
    key = (str(model), manifest.read_text())  # the base model's figures, computed once
    if key not in _BASE_FIGURES:
        _BASE_FIGURES[key] = (fixed_set_loss(model, manifest, store), edit_once(model, None))
    before, base_edit = _BASE_FIGURES[key]
    after = fixed_set_loss(model, manifest, store, final)
    assert after < max_ratio * before, (before, after)
    assert not torch.equal(base_edit, edit_once(model, final))
    return summary["result"]["metrics"]


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_one_process_zero_fine_tunes_the_tiny_editor(
    stage: int, tiny_instruct_pix2pix: Path, local_set: tuple[Path, Path], tmp_path: Path
) -> None:
    data_dir, manifest = local_set
    config = TrainConfig(
        **TINY_RECIPE,
        model=str(tiny_instruct_pix2pix),
        manifest=str(manifest),
        output_dir=str(tmp_path / "run"),
        max_steps=30,
        zero_stage=stage,
        save_every=10,
    )
    run_recipe(config, env={"EDITLOOP_DATA_DIR": str(data_dir)})
    store = LocalStore(data_dir / "objects")
    metrics = check_run(config, tiny_instruct_pix2pix, manifest, store, kind="full")
    assert metrics["train/world_size"] == 1 and metrics["train/resumed_at_step"] == 0
    # Periodic DeepSpeed checkpoints, the oldest pruned (keep 2): steps 10 and 20.
    tags = sorted(p.name for p in (tmp_path / "run/deepspeed").glob("step-*"))
    assert tags == ["step-00000010", "step-00000020"]


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_torchrun_two_ranks_stream_from_s3(
    stage: int, tiny_instruct_pix2pix: Path, s3_store: S3Store, moto_endpoint: str, tmp_path: Path
) -> None:
    manifest = put_fixed_set(s3_store, tmp_path / "manifest.jsonl")
    config = TrainConfig(
        **(TINY_RECIPE | {"micro_batch_size": 2, "num_workers": 1}),
        model=str(tiny_instruct_pix2pix),
        manifest=str(manifest),
        output_dir=str(tmp_path / "run"),
        max_steps=20,
        zero_stage=stage,
        save_every=0,
    )
    env = {
        "EDITLOOP_DATA_DIR": str(tmp_path),
        "EDITLOOP_STORE__BACKEND": "s3",
        "EDITLOOP_STORE__S3_ENDPOINT": moto_endpoint,
        "EDITLOOP_STORE__S3_ACCESS_KEY": "testing",
        "EDITLOOP_STORE__S3_SECRET_KEY": "testing",
        "EDITLOOP_STORE__S3_BUCKET": s3_store.bucket,
    }
    run_recipe(config, env=env, nproc=2)
    metrics = check_run(config, tiny_instruct_pix2pix, manifest, s3_store, kind="full")
    assert metrics["train/world_size"] == 2


@pytest.mark.slow
def test_lora_with_ema_saves_an_adapter_the_editor_loads(
    tiny_instruct_pix2pix: Path, local_set: tuple[Path, Path], tmp_path: Path
) -> None:
    data_dir, manifest = local_set
    config = TrainConfig(
        **(TINY_RECIPE | {"learning_rate": 1e-2}),
        model=str(tiny_instruct_pix2pix),
        manifest=str(manifest),
        output_dir=str(tmp_path / "run"),
        max_steps=30,
        mode="lora",
        lora_rank=4,
        lora_alpha=8.0,
        ema_decay=0.8,
        save_every=0,
    )
    run_recipe(config, env={"EDITLOOP_DATA_DIR": str(data_dir)})
    final = tmp_path / "run" / FINAL_DIR
    assert (final / "pytorch_lora_weights.safetensors").is_file()
    assert not (final / "unet").exists()
    # A rank-4 adapter on the attention projections of a 1.4 M-parameter UNet whose capacity is
    # mostly convolutions: 30 steps lower the fixed-set loss by ~5% (full fine-tuning: ~35%).
    store = LocalStore(data_dir / "objects")
    check_run(config, tiny_instruct_pix2pix, manifest, store, kind="lora", max_ratio=0.98)


def test_a_bad_config_exits_1_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"model": "m", "manifest": "x", "output_dir": "o"}))
    result = CliRunner().invoke(app, ["train", str(path), "--set", "zero_stage=1"])
    assert result.exit_code == 1
    assert "zero_stage=1 is not valid (2 or 3)" in result.output


def test_a_lora_parent_is_continued_at_its_rank(
    tiny_instruct_pix2pix: Path, tiny_lora_checkpoint: Path
) -> None:
    config = TrainConfig(
        model=str(tiny_instruct_pix2pix), manifest="unused", output_dir="unused",
        init_checkpoint=str(tiny_lora_checkpoint), mode="lora", lora_rank=4,
    )  # fmt: skip
    objective = InstructPix2PixObjective(config, torch.device("cpu"), torch.float32)
    trainable = {n: p for n, p in objective.unet.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    # The parent's up-projections are random (not peft's zero init): they were loaded.
    assert all(p.abs().sum() > 0 for n, p in trainable.items() if "lora_B" in n)
    with pytest.raises(ValueError, match="lora_rank=8, but init_checkpoint has rank 4"):
        InstructPix2PixObjective(
            dataclasses.replace(config, lora_rank=8), torch.device("cpu"), torch.float32
        )


# ---- the pixel editor's objective (issue 8 trains it with this recipe) ------------------------


def test_pixel_objective_trains_and_saves_a_pixel_editor(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = PixelEditorConfig(block_out_channels=(8, 16), embedding_dim=16)
    PixelEditorModel(config).save_pretrained(tmp_path / "base")
    task = generate_single_op_tasks(1, seed=0)[0]
    train_config = TrainConfig(
        model=str(tmp_path / "base"), manifest="unused", output_dir="unused", resolution=16
    )
    objective = PixelObjective(train_config, torch.device("cpu"))
    batch = {
        "source": images_to_tensor([task.source_image()] * 4),
        "target": images_to_tensor([task.target_image()] * 4),
        "instruction": [task.instruction] * 4,
    }
    module = objective.trainable()
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-3)

    def loss() -> float:
        with torch.no_grad():
            return objective.loss(module, batch, torch.Generator().manual_seed(0)).item()

    before = loss()
    for step in range(20):
        value = objective.loss(module, batch, torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    assert loss() < before
    objective.save(tmp_path / "trained")
    reloaded = PixelEditorModel.from_pretrained(tmp_path / "trained")
    assert torch.equal(reloaded.word_embedding.weight, module.word_embedding.weight)
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="works at 16x16"):
        PixelObjective(dataclasses.replace(train_config, resolution=32), cpu)
    with pytest.raises(ValueError, match="trained in full"):
        PixelObjective(dataclasses.replace(train_config, mode="lora"), cpu)


def test_a_full_parent_cannot_take_a_lora(
    tiny_instruct_pix2pix: Path, tiny_full_checkpoint: Path
) -> None:
    config = TrainConfig(
        model=str(tiny_instruct_pix2pix), manifest="unused", output_dir="unused",
        init_checkpoint=str(tiny_full_checkpoint), mode="lora",
    )  # fmt: skip
    with pytest.raises(ValueError, match="train mode=full on top of it"):
        InstructPix2PixObjective(config, torch.device("cpu"), torch.float32)
