"""The fine-tuning recipe: DeepSpeed ZeRO-2/3 on the accepted pool, resumable, one folder per run.

Launched once per rank by `deepspeed` or `torchrun` (or alone, as a single process), through
`editloop train CONFIG` or `python -m loop.cli.train CONFIG`:

    setup    distributed (NCCL on GPU, gloo on CPU), objective (every part in the compute
             dtype: bf16 on GPU; under ZeRO-3 the denoiser is built partitioned), data, DeepSpeed
             engine; resume from the newest DeepSpeed checkpoint in `output_dir/deepspeed/`
    encode   the frozen encoders' outputs for every example, cached by content
             (`policies.training.encodings`); then the encoders are freed
    train    `max_steps` optimizer steps, each on one aspect-ratio bucket; a DeepSpeed checkpoint
             every `save_every` steps; rank 0 writes the per-step loss to `loss_log.jsonl` and
             the step to `progress.json`
    save     the weights in the editor's own format (under ZeRO-3: a LoRA gathers its adapter
             alone, full weights are consolidated layer by layer on rank 0), with the loss log
             and the training metrics, into `output_dir/final/` (written aside, then renamed: it
             exists only when complete)
    cleanup  barrier, process group destroyed

Every random draw of step s comes from a generator seeded by (seed, s, micro-step, rank) and the
data order is a function of (seed, s) (`policies.training.data`), so a run killed and restarted
repeats no step and reaches the same weights as an uninterrupted one.
"""

import gc
import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from tqdm import tqdm

from policies.training.checkpointing import resume, run_data_key, save_deepspeed, save_final
from policies.training.config import (
    TrainConfig,
    deepspeed_config,
    learning_rate_factor,
    resolve_precision,
)
from policies.training.data import (
    EditExamples,
    Example,
    StepBatchSampler,
    aspect_buckets,
    build_loader,
    mixed_seed,
    read_manifest,
    read_supervised_set,
)
from policies.training.distributed import Dist, setup_distributed
from policies.training.ema import FP32EMA
from policies.training.encodings import (
    EncodedExamples,
    EncodingCache,
    encoder_fingerprint,
    precompute_encodings,
)
from policies.training.layout import (
    DIE_WITH_PARENT_ENV,
    FINAL_DIR,
    LOSS_LOG,
    METRICS_FILE,
    PROGRESS_FILE,
    TrainResult,
    append_loss,
    read_final,
    read_losses,
    truncate_loss_log,
    write_json,
)
from policies.training.lifetime import die_with_parent, seconds_since_start
from policies.training.objectives import build_objective, objective_name
from policies.training.objectives.base import Objective
from store.objects import ObjectStore

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class _Data:
    """What the training loop reads: a dataset, how to batch it and how to take its loss."""

    dataset: Any
    collate: Callable[[list[Any]], Any] | None
    loss: Callable[[Any, Any, torch.Generator], torch.Tensor]
    pool_buckets: list[int] | None
    replay_buckets: list[int] | None
    metrics: dict[str, float]


def _zero_init(ds_config: dict[str, Any]) -> Callable[[], Any]:
    """Under ZeRO-3: a context in which every parameter is partitioned as it is created, in the
    config's precision (DeepSpeed 0.19 ignores an explicit dtype on a CPU-only machine and picks
    bf16: `dtype or fp16 if fp16_supported else ...` binds the wrong way; the config's is right)."""
    return lambda: deepspeed.zero.Init(config_dict_or_path=ds_config)


def partitioned_fraction(module: torch.nn.Module) -> float:
    """The share of `module`'s parameter elements held as ZeRO-3 partitions (1.0: no rank holds
    any whole parameter; the module's own tensors are empty placeholders)."""
    total = partitioned = 0
    for parameter in module.parameters():
        numel = getattr(parameter, "ds_numel", parameter.numel())
        total += numel
        if hasattr(parameter, "ds_id") and parameter.numel() == 0:
            partitioned += numel
    return partitioned / total if total else 0.0


def _prepare_data(
    config: TrainConfig,
    objective: Objective,
    examples: list[Example],
    open_store: Callable[[], ObjectStore],
    world: "Dist",
    output_dir: Path,
    log_fn: Callable[[str], None],
) -> _Data:
    """The training data: for objectives with frozen encoders, every example encoded once into
    the cache and the encoders freed; for the pixel editor, images."""
    resolution = config.resolution or objective.train_resolution  # type: ignore[attr-defined]
    if not hasattr(objective, "encode_examples"):
        dataset = EditExamples(examples, open_store, resolution)
        return _Data(dataset, None, objective.loss, None, None, {})
    multiple = objective.multiple  # type: ignore[attr-defined]
    if config.aspect_buckets:
        buckets = aspect_buckets(resolution, multiple)
    else:
        side = max(multiple, resolution // multiple * multiple)
        buckets = [(side, side)]
    images = EditExamples(examples, open_store, resolution, buckets)
    cache = EncodingCache(Path(config.encoding_cache or output_dir / "encodings"))
    dtype = objective.dtype  # type: ignore[attr-defined]
    fingerprint = encoder_fingerprint(
        objective.model_dir,  # type: ignore[attr-defined]
        objective.encoders,  # type: ignore[attr-defined]
        dtype,
    )
    manifest_key = hashlib.sha256(
        "".join(json.dumps(asdict(e), sort_keys=True) for e in examples).encode()
    ).hexdigest()[:16]
    bar = tqdm(
        total=len(examples),
        desc="encode",
        unit="example",
        disable=not (world.rank == 0 and config.progress_bar),
    )
    index = precompute_encodings(
        objective,  # type: ignore[arg-type]
        images,
        cache,
        fingerprint=fingerprint,
        rank=world.rank,
        world_size=world.world_size,
        batch_size=config.micro_batch_size,
        index_dir=output_dir / "encodings-index" / manifest_key,
        barrier=dist.barrier,
        num_workers=config.num_workers,
        # Every rank encodes a share; the bar counts rank 0's, scaled to the whole.
        progress=lambda n: bar.update(n * world.world_size),
    )
    bar.close()
    # The frozen encoders' memory goes to training now (T5-XXL or a 7B Qwen2.5-VL: 10-16 GB).
    objective.free_encoders()  # type: ignore[attr-defined]
    gc.collect()
    if world.device.type == "cuda":
        torch.cuda.empty_cache()
    counts = torch.tensor([index.computed, index.reused], dtype=torch.float64)
    dist.all_reduce(counts)
    computed, reused = counts.tolist()
    log_fn(f"encoded {computed:.0f} examples, {reused:.0f} found in {cache.folder}; encoders freed")
    return _Data(
        dataset=EncodedExamples(cache, index.keys),
        collate=objective.collate,  # type: ignore[attr-defined]
        loss=objective.loss_encoded,  # type: ignore[attr-defined]
        pool_buckets=index.buckets,
        replay_buckets=None,
        metrics={
            "train/encodings_computed": computed,
            "train/encodings_reused": reused,
            "train/buckets": float(len(set(index.buckets))),
            "train/resolution": float(resolution),
        },
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
    # Where a job's time goes besides optimizer steps: the process start and imports before
    # this call, the setup (process group, models, data, DeepSpeed) and the save after.
    startup_s, entered = seconds_since_start(), time.perf_counter()
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
    dtype = _DTYPES[precision]
    torch.manual_seed(config.seed)  # adapter initialisation (LoRA) is the same on every rank
    zero_init = _zero_init(ds_config) if config.zero_stage == 3 else None
    objective = build_objective(config, world.device, dtype, zero_init)
    module = objective.trainable()
    # Measured before the engine: under ZeRO-3 no rank ever held the whole denoiser.
    partitioned = partitioned_fraction(module)
    data = _prepare_data(config, objective, pool + replay, open_store, world, output_dir, log_fn)
    parameters = [p for p in module.parameters() if p.requires_grad]
    optimizer, schedule = None, None
    if "optimizer" not in ds_config:  # a user config may name its own (e.g. FusedAdam on GPU)
        optimizer = torch.optim.AdamW(
            parameters, lr=config.learning_rate, weight_decay=config.weight_decay
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: learning_rate_factor(
                step,
                warmup=config.warmup_steps,
                max_steps=config.max_steps,
                schedule=config.lr_schedule,
            ),
        )
    engine, _, _, _ = deepspeed.initialize(
        model=module,
        model_parameters=parameters,
        optimizer=optimizer,
        lr_scheduler=schedule,
        config=ds_config,
        dist_init_required=False,
    )
    ema = FP32EMA(parameters, config.ema_decay) if config.ema_decay > 0 else None
    data_key = run_data_key(config, world.world_size)
    start_step = resume(engine, ema, output_dir, data_key, log_fn)
    buckets = data.pool_buckets
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
        pool_buckets=buckets[: len(pool)] if buckets is not None else None,
        replay_buckets=buckets[len(pool) :] if buckets is not None else None,
    )
    loader = build_loader(
        data.dataset,
        sampler,
        num_workers=config.num_workers,
        prefetch_factor=config.prefetch_factor,
        pin_memory=world.device.type == "cuda",
        collate_fn=data.collate,
    )
    if rank0:
        truncate_loss_log(output_dir / LOSS_LOG, start_step)

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
    setup_s = started - entered
    for step in range(start_step, config.max_steps):
        step_loss = torch.zeros((), device=world.device)
        for micro in range(config.gradient_accumulation):
            generator = torch.Generator().manual_seed(
                mixed_seed(config.seed, "noise", step, micro, world.rank)
            )
            loss = data.loss(engine, next(batches), generator)
            engine.backward(loss)
            engine.step()
            step_loss += loss.detach() / config.gradient_accumulation
        if ema is not None:
            ema.step(parameters)
        dist.all_reduce(step_loss)
        mean_loss = step_loss.item() / world.world_size
        done = step + 1
        if rank0:
            append_loss(output_dir / LOSS_LOG, done, mean_loss, engine.get_lr()[0])
            write_json(output_dir / PROGRESS_FILE, {"step": done, "max_steps": config.max_steps})
            bar.set_postfix(loss=f"{mean_loss:.4f}")
            bar.update(1)
        if config.save_every and done % config.save_every == 0 and done < config.max_steps:
            save_deepspeed(engine, ema, output_dir, done, data_key, config.keep_checkpoints)
    bar.close()
    saving = time.perf_counter()
    seconds = saving - started

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
    with _ema_weights(ema, parameters):
        save_final(engine, objective, module, config.zero_stage, staging, rank0)
    if rank0:
        losses = read_losses(output_dir / LOSS_LOG)
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
            "train/startup_seconds": startup_s,
            "train/setup_seconds": setup_s,
            "train/save_seconds": time.perf_counter() - saving,
            "train/samples_per_s": samples / seconds if seconds > 0 else 0.0,
            "train/zero3_partitioned_at_init": partitioned,
            "train/gradient_checkpointing": float(
                bool(getattr(module, "is_gradient_checkpointing", False))
            ),
            **data.metrics,
        }
        result = TrainResult(**{**asdict(result), "metrics": metrics})
        shutil.copy(output_dir / LOSS_LOG, staging / LOSS_LOG)
        summary = {"result": asdict(result), "config": asdict(config), "precision": precision}
        write_json(staging / METRICS_FILE, summary)
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


class _ema_weights(AbstractContextManager[None]):  # noqa: N801 - used like a function
    """Inside, the trained parameters hold the EMA weights (restored on exit)."""

    def __init__(self, ema: FP32EMA | None, parameters: list[torch.nn.Parameter]) -> None:
        self.ema = ema
        self.parameters = parameters

    def __enter__(self) -> None:
        if self.ema is not None:
            self.ema.store(self.parameters)
            self.ema.copy_to(self.parameters)

    def __exit__(self, *exc: object) -> None:
        if self.ema is not None:
            self.ema.restore(self.parameters)
