"""Training throughput: the DeepSpeed ZeRO-2 recipe vs a plain PyTorch loop, and data loading
from S3 (moto) vs local files.

Side by side in one run, repetitions interleaved in a rotating order (load from other processes
on a shared machine falls on both alike), median and best:

(a) samples/s of `policies.training.recipe.train` (DeepSpeed ZeRO-2, one CPU rank, gloo; with
    its per-step loss all-reduce, loss log and progress file) vs a plain loop with the same
    tiny InstructPix2Pix, objective, data order, AdamW, clipping and warm-up schedule: the cost
    of DeepSpeed and the recipe's bookkeeping (target ratio >= 0.8 on CPU). Each contender's
    clock runs over its training steps only (model loading and engine set-up excluded).
(b) examples/s of the recipe's DataLoader (`EditExamples`, 2 workers, prefetch 2) reading PNG
    pairs from a moto S3 server vs from a local-folder store.

    .venv/bin/python bench/train.py [--steps 30] [--reps 3] [--threads 1]
"""

import argparse
import logging
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import diffusers
import numpy as np
import torch
from moto.server import ThreadedMotoServer
from PIL import Image

from policies.tiny import build_tiny_instruct_pix2pix
from policies.training.config import TrainConfig
from policies.training.data import (
    EditExamples,
    Example,
    StepBatchSampler,
    build_loader,
    mixed_seed,
    read_manifest,
    write_manifest,
)
from policies.training.distributed import setup_distributed
from policies.training.objectives.ip2p import InstructPix2PixObjective
from policies.training.recipe import train
from store.images import encode_png
from store.objects import LocalStore, ObjectStore
from store.s3 import S3Store

SIDE = 64  # training resolution, pixels


def put_examples(store: ObjectStore, n: int, prefix: str) -> list[Example]:
    """`n` random 64x64 PNG pairs in `store`."""
    rng = np.random.default_rng(0)
    examples = []
    for i in range(n):
        source = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
        store.put(f"{prefix}/{i}-s.png", encode_png(Image.fromarray(source)))
        store.put(f"{prefix}/{i}-t.png", encode_png(Image.fromarray(255 - source)))
        examples.append(
            Example(f"{prefix}/{i}-s.png", f"edit {i}", f"{prefix}/{i}-t.png", "direct")
        )
    return examples


def _free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def recipe_samples_per_s(config: TrainConfig, store: ObjectStore) -> float:
    """One run of the recipe in this process (a world of one); its own samples/s figure."""
    result = train(config, lambda: store, log_fn=lambda message: None)
    return result.metrics["train/samples_per_s"]


def plain_samples_per_s(config: TrainConfig, store: ObjectStore) -> float:
    """The same training without DeepSpeed: plain AdamW steps on the UNet."""
    objective = InstructPix2PixObjective(config, torch.device("cpu"), torch.float32)
    unet = objective.unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.learning_rate)
    warmup = config.warmup_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / (warmup + 1))
    )
    sampler = StepBatchSampler(
        pool_size=len(read_manifest(Path(config.manifest))), replay_size=0, replay_fraction=0.0,
        micro_batch=config.micro_batch_size, accumulation=1, world_size=1, rank=0,
        seed=config.seed, start_step=0, max_steps=config.max_steps,
    )  # fmt: skip
    dataset = EditExamples(read_manifest(Path(config.manifest)), lambda: store, config.resolution)
    batches = iter(build_loader(dataset, sampler, num_workers=0, prefetch_factor=2))
    started = time.perf_counter()
    for step in range(config.max_steps):
        generator = torch.Generator().manual_seed(mixed_seed(config.seed, "noise", step, 0, 0))
        loss = objective.loss(unet, next(batches), generator)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), config.max_grad_norm)
        optimizer.step()
        schedule.step()
        loss.item()  # the recipe reads the loss every step too
    seconds = time.perf_counter() - started
    return config.max_steps * config.micro_batch_size / seconds


def loader_examples_per_s(examples: list[Example], store: ObjectStore, batch: int) -> float:
    """One pass over `examples` with the recipe's loader (2 workers, prefetch 2)."""
    sampler = StepBatchSampler(
        pool_size=len(examples), replay_size=0, replay_fraction=0.0, micro_batch=batch,
        accumulation=1, world_size=1, rank=0, seed=0, start_step=0,
        max_steps=len(examples) // batch,
    )  # fmt: skip
    dataset = EditExamples(examples, lambda: store, SIDE)
    started = time.perf_counter()
    seen = sum(len(b["instruction"]) for b in build_loader(dataset, sampler, num_workers=2,
                                                           prefetch_factor=2))  # fmt: skip
    return seen / (time.perf_counter() - started)


def interleaved(contenders: dict[str, Callable[[], float]], reps: int) -> dict[str, list[float]]:
    """Each contender's figure per repetition, in a rotating order."""
    names = list(contenders)
    figures: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            figures[name].append(contenders[name]())
    return figures


def report(title: str, figures: dict[str, list[float]], unit: str, target: str) -> None:
    print(title)
    names = list(figures)
    base = statistics.median(figures[names[0]])
    for name in names:
        median = statistics.median(figures[name])
        ratio = f"  ratio {median / base:.2f}" if name != names[0] else ""
        print(f"  {name:<28} median {median:8.1f} {unit}  best {max(figures[name]):8.1f}{ratio}")
    print(f"  {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="training steps per repetition")
    parser.add_argument("--batch", type=int, default=8, help="examples per step")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per contender")
    parser.add_argument("--examples", type=int, default=256, help="examples for the loader bench")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's access log
    diffusers.utils.logging.disable_progress_bar()

    # One process group for every recipe run (DeepSpeed keeps its groups for the process).
    os.environ["MASTER_PORT"] = _free_port()
    setup_distributed()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            model = build_tiny_instruct_pix2pix(root / "tiny-ip2p")
            local = LocalStore(root / "objects")
            s3 = S3Store(endpoint=f"{host}:{port}", access_key="testing", secret_key="testing",
                         bucket="bench-train")  # fmt: skip
            train_set = put_examples(local, 64, "train")
            write_manifest(root / "manifest.jsonl", train_set)
            runs = iter(range(10**6))

            def config() -> TrainConfig:
                return TrainConfig(
                    model=str(model), manifest=str(root / "manifest.jsonl"),
                    output_dir=str(root / f"run-{next(runs)}"), max_steps=args.steps,
                    micro_batch_size=args.batch, resolution=SIDE, learning_rate=1e-4,
                    num_workers=0, save_every=0, progress_bar=False, zero_stage=2,
                )  # fmt: skip

            trainer = interleaved(
                {
                    "plain PyTorch loop": lambda: plain_samples_per_s(config(), local),
                    "DeepSpeed ZeRO-2 recipe": lambda: recipe_samples_per_s(config(), local),
                },
                args.reps,
            )
            loader_set = {
                "local files": put_examples(local, args.examples, "loader"),
                "S3 (moto)": put_examples(s3, args.examples, "loader"),
            }
            stores: dict[str, ObjectStore] = {"local files": local, "S3 (moto)": s3}
            loading = interleaved(
                {
                    name: (lambda n=name: loader_examples_per_s(loader_set[n], stores[n], 16))
                    for name in loader_set
                },
                args.reps,
            )
    finally:
        moto.stop()
    print(
        f"tiny InstructPix2Pix ({SIDE}x{SIDE}, batch {args.batch}, {args.steps} steps x "
        f"{args.reps} reps, {args.threads} torch thread(s), CPU)"
    )
    report("(a) training", trainer, "samples/s", "target: DeepSpeed / plain >= 0.8")
    report(
        f"(b) data loading ({args.examples} pairs of {SIDE}x{SIDE} PNG, 2 workers, batch 16)",
        loading,
        "examples/s",
        "an example is two images (source and target)",
    )


if __name__ == "__main__":
    main()
