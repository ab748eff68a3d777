"""The fine-tuning recipe: DeepSpeed ZeRO-2/3 on the accepted pool, resumable, one folder per run.

Launched once per rank by `deepspeed` or `torchrun` (or alone, as a single process), through
`editloop train CONFIG` or `python -m loop.cli.train CONFIG`:

    setup    distributed (NCCL on GPU, gloo on CPU), objective, data, DeepSpeed engine; resume
             from the newest DeepSpeed checkpoint in `output_dir/deepspeed/` when there is one
    train    `max_steps` optimizer steps; a DeepSpeed checkpoint every `save_every` steps; rank 0
             writes the per-step loss to `loss_log.jsonl` and the step to `progress.json`
    save     the weights in the editor's own format, with the loss log and the training metrics,
             into `output_dir/final/` (written aside, then renamed: it exists only when complete)
    cleanup  barrier, process group destroyed

Every random draw of step s comes from a generator seeded by (seed, s, micro-step, rank) and the
data order is a function of (seed, s) (`policies.training.data`), so a run killed and restarted
repeats no step and reaches the same weights as an uninterrupted one.
"""

import ctypes
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from policies.training.config import TrainConfig, deepspeed_config, resolve_precision
from policies.training.data import (
    EditExamples,
    StepBatchSampler,
    build_loader,
    mixed_seed,
    read_manifest,
    read_supervised_set,
)
from policies.training.layout import (
    DEEPSPEED_DIR,
    DIE_WITH_PARENT_ENV,
    FINAL_DIR,
    LOSS_LOG,
    METRICS_FILE,
    PROGRESS_FILE,
    TrainResult,
    read_final,
)
from policies.training.objectives import build_objective, objective_name
from store.objects import ObjectStore

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class _Dist:
    rank: int
    world_size: int
    device: torch.device
    owns_group: bool  # created here, so destroyed at the end of the run


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent (the launcher) dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the request was in place
        os._exit(1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def setup_distributed() -> _Dist:
    """Join (or, without a launcher, create) the process group; one device per rank. A caller
    that set the group up itself (several runs in one process) keeps it after each run."""
    if "RANK" not in os.environ:
        # A plain `python -m ...` run: a world of one.
        os.environ.update(
            RANK="0",
            LOCAL_RANK="0",
            WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())),
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    owns_group = not dist.is_initialized()
    if owns_group:
        deepspeed.init_distributed(dist_backend=backend)
    return _Dist(
        rank=dist.get_rank(), world_size=dist.get_world_size(), device=device, owns_group=owns_group
    )


def train(
    config: TrainConfig, open_store: Callable[[], ObjectStore], *, log_fn: Callable[[str], None]
) -> TrainResult:
    """Run (or resume, or find finished) the fine-tuning run of `config`; every rank calls it."""
    output_dir = Path(config.output_dir)
    finished = read_final(output_dir)
    if finished is not None:
        log_fn(f"{output_dir} already holds a finished run; nothing to do")
        return finished
    if os.environ.get(DIE_WITH_PARENT_ENV) == "1":
        die_with_parent()
    # DeepSpeed's ZeRO-3 calls a deprecated torch collective every step; one warning per step
    # would flood the launcher's log.
    warnings.filterwarnings("ignore", message=".*reduce_scatter_tensor", category=FutureWarning)

    # ---- setup -------------------------------------------------------------------------
    world = setup_distributed()
    rank0 = world.rank == 0
    output_dir.mkdir(parents=True, exist_ok=True)
    pool = read_manifest(Path(config.manifest))
    replay = read_supervised_set(Path(config.replay_manifest)) if config.replay_manifest else []
    if not pool:
        raise ValueError(f"manifest={config.manifest!r} holds no examples: nothing to train on")
    precision = resolve_precision(config.precision, world.device.type)
    ds_config = deepspeed_config(config, precision=precision)
    torch.manual_seed(config.seed)  # adapter initialisation (LoRA) is the same on every rank
    objective = build_objective(config, world.device, _DTYPES[precision])
    module = objective.trainable()
    parameters = [p for p in module.parameters() if p.requires_grad]
    optimizer, schedule = None, None
    if "optimizer" not in ds_config:  # a user config may name its own (e.g. FusedAdam on GPU)
        optimizer = torch.optim.AdamW(
            parameters, lr=config.learning_rate, weight_decay=config.weight_decay
        )
        warmup = config.warmup_steps
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / (warmup + 1))
        )
    engine, _, _, _ = deepspeed.initialize(
        model=module,
        model_parameters=parameters,
        optimizer=optimizer,
        lr_scheduler=schedule,
        config=ds_config,
        dist_init_required=False,
    )
    ema = EMAModel(parameters, decay=config.ema_decay) if config.ema_decay > 0 else None
    data_key = _data_key(config, world.world_size)
    start_step = _resume(engine, ema, output_dir, data_key, log_fn)
    sampler = StepBatchSampler(
        pool_size=len(pool),
        replay_size=len(replay),
        replay_fraction=config.replay_fraction,
        micro_batch=config.micro_batch_size,
        accumulation=config.gradient_accumulation,
        world_size=world.world_size,
        rank=world.rank,
        seed=config.seed,
        start_step=start_step,
        max_steps=config.max_steps,
    )
    loader = build_loader(
        EditExamples(pool + replay, open_store, config.resolution),
        sampler,
        num_workers=config.num_workers,
        prefetch_factor=config.prefetch_factor,
        pin_memory=world.device.type == "cuda",
    )
    if rank0:
        _truncate_loss_log(output_dir / LOSS_LOG, start_step)

    # ---- train -------------------------------------------------------------------------
    engine.train()
    batches = iter(loader)
    bar = tqdm(
        total=config.max_steps,
        initial=start_step,
        desc="train",
        unit="step",
        disable=not (rank0 and config.progress_bar),
    )
    started = time.perf_counter()
    for step in range(start_step, config.max_steps):
        step_loss = torch.zeros((), device=world.device)
        for micro in range(config.gradient_accumulation):
            generator = torch.Generator().manual_seed(
                mixed_seed(config.seed, "noise", step, micro, world.rank)
            )
            loss = objective.loss(engine, next(batches), generator)
            engine.backward(loss)
            engine.step()
            step_loss += loss.detach() / config.gradient_accumulation
        if ema is not None:
            ema.step(parameters)
        dist.all_reduce(step_loss)
        mean_loss = step_loss.item() / world.world_size
        done = step + 1
        if rank0:
            _append_loss(output_dir / LOSS_LOG, done, mean_loss, engine.get_lr()[0])
            _write_json(output_dir / PROGRESS_FILE, {"step": done, "max_steps": config.max_steps})
            bar.set_postfix(loss=f"{mean_loss:.4f}")
            bar.update(1)
        if config.save_every and done % config.save_every == 0 and done < config.max_steps:
            _save_deepspeed(engine, ema, output_dir, done, data_key, config.keep_checkpoints)
    bar.close()
    seconds = time.perf_counter() - started

    # ---- save --------------------------------------------------------------------------
    result = TrainResult(
        final_dir=str(output_dir / FINAL_DIR),
        kind=objective.kind,
        objective=objective_name(config),
        sample_count=len(pool),
        metrics={},
    )
    staging = output_dir / f".{FINAL_DIR}-tmp"
    if rank0:
        shutil.rmtree(staging, ignore_errors=True)
    with _whole_parameters(module, config.zero_stage), _ema_weights(ema, parameters):
        if rank0:
            objective.save(staging)
    if rank0:
        losses = _read_losses(output_dir / LOSS_LOG)
        steps_run = config.max_steps - start_step
        samples = steps_run * config.global_batch_per_rank * world.world_size
        window = max(1, min(10, len(losses) // 4))
        metrics = {
            "train/steps": float(config.max_steps),
            "train/resumed_at_step": float(start_step),
            "train/loss_first": sum(losses[:window]) / window,
            "train/loss_last": sum(losses[-window:]) / window,
            "train/examples": float(len(pool)),
            "train/replay_examples": float(len(replay)),
            "train/world_size": float(world.world_size),
            "train/seconds": seconds,
            "train/samples_per_s": samples / seconds if seconds > 0 else 0.0,
        }
        result = TrainResult(**{**asdict(result), "metrics": metrics})
        shutil.copy(output_dir / LOSS_LOG, staging / LOSS_LOG)
        summary = {"result": asdict(result), "config": asdict(config), "precision": precision}
        _write_json(staging / METRICS_FILE, summary)
        staging.replace(output_dir / FINAL_DIR)
        log_fn(
            f"trained {config.max_steps} steps (from step {start_step}), loss "
            f"{metrics['train/loss_first']:.4f} → {metrics['train/loss_last']:.4f}; "
            f"saved {output_dir / FINAL_DIR}"
        )

    # ---- cleanup -----------------------------------------------------------------------
    dist.barrier()
    if world.owns_group:
        dist.destroy_process_group()
    return result


def _data_key(config: TrainConfig, world_size: int) -> dict[str, Any]:
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


def _resume(
    engine: Any, ema: EMAModel | None, output_dir: Path, data_key: dict, log_fn: Callable
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


def _save_deepspeed(
    engine: Any, ema: EMAModel | None, output_dir: Path, step: int, data_key: dict, keep: int
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


def _whole_parameters(module: torch.nn.Module, zero_stage: int) -> AbstractContextManager[Any]:
    """Every rank enters it; inside, ZeRO-3's partitioned parameters are whole again."""
    if zero_stage != 3:
        return nullcontext()
    return deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)


class _ema_weights(AbstractContextManager[None]):  # noqa: N801 - used like a function
    """Inside, the trained parameters hold the EMA weights (restored on exit)."""

    def __init__(self, ema: EMAModel | None, parameters: list[torch.nn.Parameter]) -> None:
        self.ema = ema
        self.parameters = parameters

    def __enter__(self) -> None:
        if self.ema is not None:
            self.ema.store(self.parameters)
            self.ema.copy_to(self.parameters)

    def __exit__(self, *exc: object) -> None:
        if self.ema is not None:
            self.ema.restore(self.parameters)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


def _append_loss(path: Path, step: int, loss: float, lr: float) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps({"step": step, "train/loss": loss, "train/lr": lr}) + "\n")


def _loss_rows(path: Path) -> Iterator[dict[str, Any]]:
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                yield json.loads(line)


def _read_losses(path: Path) -> list[float]:
    return [row["train/loss"] for row in _loss_rows(path)]


def _truncate_loss_log(path: Path, step: int) -> None:
    """Keep the rows of steps up to `step`: later ones were logged after the checkpoint resumed
    from, and are run again."""
    rows = [row for row in _loss_rows(path) if row["step"] <= step]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tmp.replace(path)
