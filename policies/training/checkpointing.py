"""Saving and resuming a training run: the DeepSpeed checkpoints of a run folder, what resuming
may rely on (the data order's key), and the final checkpoint in the editor's own format."""

import hashlib
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist

from policies.training.config import (
    TrainConfig,
)
from policies.training.ema import FP32EMA
from policies.training.layout import (
    DEEPSPEED_DIR,
)
from policies.training.objectives.base import Objective

log = logging.getLogger(__name__)


def save_final(
    engine: Any,
    objective: Objective,
    module: torch.nn.Module,
    zero_stage: int,
    folder: Path,
    rank0: bool,
) -> None:
    """Write the trained weights on rank 0; every rank calls it (ZeRO-3 gathers collectively).

    ZeRO-2: every rank holds whole weights, rank 0 saves them. ZeRO-3: a LoRA gathers its
    adapter's parameters only (a few MB; the frozen base stays partitioned); full weights go
    through DeepSpeed's 16-bit consolidation, one layer at a time onto rank 0's host memory, and
    are written as diffusers shards. No rank ever gathers every weight at once.
    """
    if zero_stage != 3:
        if rank0:
            objective.save(folder)
        return
    if objective.kind == "lora":
        trainable = [p for p in module.parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters(trainable, modifier_rank=None):
            if rank0:
                objective.save(folder)
        return
    state_dict = engine._zero3_consolidated_16bit_state_dict()
    if rank0:
        objective.save(folder, state_dict)


def run_data_key(config: TrainConfig, world_size: int) -> dict[str, Any]:
    """What must not change between a checkpoint and its resumption (else the data order does)."""
    manifests = [Path(config.manifest)] + (
        [Path(config.replay_manifest)] if config.replay_manifest else []
    )
    return {
        "manifests": [_sha256(path) for path in manifests],
        "seed": config.seed,
        "world_size": world_size,
        "micro_batch_size": config.micro_batch_size,
        "gradient_accumulation": config.gradient_accumulation,
        "replay_fraction": config.replay_fraction,
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def resume(
    engine: Any, ema: FP32EMA | None, output_dir: Path, data_key: dict, log_fn: Callable
) -> int:
    """Load the newest DeepSpeed checkpoint, if any; returns the step to continue from."""
    folder = output_dir / DEEPSPEED_DIR
    if not (folder / "latest").is_file():
        return 0
    path, client = engine.load_checkpoint(str(folder))
    if path is None:
        raise RuntimeError(f"{folder}: `latest` names a checkpoint DeepSpeed cannot load")
    if client.get("data_key") != data_key:
        raise ValueError(
            f"output_dir={str(output_dir)!r} holds checkpoints of a run with other data or "
            f"batch shape ({client.get('data_key')} ≠ {data_key}); use a fresh output_dir"
        )
    if ema is not None:
        ema.load_state_dict(client["ema"])
    step = int(client["step"])
    log_fn(f"resumed from the DeepSpeed checkpoint at step {step} ({path})")
    return step


def save_deepspeed(
    engine: Any, ema: FP32EMA | None, output_dir: Path, step: int, data_key: dict, keep: int
) -> None:
    """A DeepSpeed checkpoint (every rank writes its shard); then the oldest beyond `keep` go."""
    folder = output_dir / DEEPSPEED_DIR
    client = {"step": step, "data_key": data_key}
    if ema is not None:
        client["ema"] = ema.state_dict()
    # DeepSpeed writes `latest` only after every shard is saved: a crash mid-save resumes from
    # the previous checkpoint.
    engine.save_checkpoint(str(folder), tag=f"step-{step:08d}", client_state=client)
    dist.barrier()
    if dist.get_rank() == 0:
        tags = sorted(p for p in folder.glob("step-*") if p.is_dir())
        for old in tags[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
