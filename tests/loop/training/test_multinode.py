"""Multi-node training on one machine: two launchers (torchrun, one rank each, as two nodes
would start them from the trainer's settings) form one gloo job that trains exactly as one
launcher with two ranks does; and ZeRO-3 builds the denoiser partitioned on both ranks."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loop.training.launcher import launch_command
from policies.training.config import TrainConfig
from policies.training.layout import DIE_WITH_PARENT_ENV, FINAL_DIR, LOSS_LOG, METRICS_FILE
from policies.training.settings import TrainingSettings
from store.objects import LocalStore
from tests.fixtures.services import free_port
from tests.fixtures.training import SUBPROCESS_ENV, TINY_RECIPE, put_fixed_set

REPO = Path(__file__).resolve().parents[3]


def environment(data_dir: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDITLOOP_")}
    return clean | SUBPROCESS_ENV | {DIE_WITH_PARENT_ENV: "1", "EDITLOOP_DATA_DIR": str(data_dir)}


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT)


def finish(processes: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    try:
        for process, log in zip(processes, logs, strict=True):
            code = process.wait(timeout=400)
            assert code == 0, log.read_text()[-4000:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*all_gather_into_tensor:FutureWarning")
def test_two_nodes_train_like_one_node_with_as_many_ranks(
    tiny_instruct_pix2pix: Path, tmp_path: Path
) -> None:
    manifest = put_fixed_set(LocalStore(tmp_path / "objects"), tmp_path / "manifest.jsonl")
    env = environment(tmp_path)

    def config(name: str) -> Path:
        path = tmp_path / f"{name}.json"
        run = TrainConfig(
            **(TINY_RECIPE | {"micro_batch_size": 2}), model=str(tiny_instruct_pix2pix),
            manifest=str(manifest), output_dir=str(tmp_path / name), max_steps=4, zero_stage=3,
            save_every=0,
        )  # fmt: skip
        path.write_text(run.to_json())
        return path

    one_node = launch_command(TrainingSettings(nproc_per_node=2), config("one-node"))
    logs = [tmp_path / "one-node.log"]
    finish([start(one_node, env, logs[0])], logs)

    endpoint = f"127.0.0.1:{free_port()}"
    two_nodes = config("two-nodes")
    commands = [
        launch_command(
            TrainingSettings(nnodes=2, node_rank=rank, rdzv_endpoint=endpoint), two_nodes
        )
        for rank in (0, 1)
    ]
    assert commands[1][commands[1].index("--node_rank") + 1] == "1"
    logs = [tmp_path / f"node{rank}.log" for rank in (0, 1)]
    finish([start(c, env, log) for c, log in zip(commands, logs, strict=True)], logs)

    def losses(name: str) -> list[float]:
        lines = (tmp_path / name / LOSS_LOG).read_text().splitlines()
        return [json.loads(line)["train/loss"] for line in lines]

    assert losses("two-nodes") == pytest.approx(losses("one-node"), rel=1e-5)
    weights = [
        load_file(tmp_path / name / FINAL_DIR / "unet" / "diffusion_pytorch_model.safetensors")
        for name in ("one-node", "two-nodes")
    ]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=1e-5, atol=1e-6)
    metrics = json.loads((tmp_path / "two-nodes" / FINAL_DIR / METRICS_FILE).read_text())
    assert metrics["result"]["metrics"]["train/world_size"] == 2
    # ZeRO-3: before the engine, neither rank held a whole parameter of the UNet.
    assert metrics["result"]["metrics"]["train/zero3_partitioned_at_init"] == 1.0
