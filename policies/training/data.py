"""Training examples: manifests, a seeded resumable order, and a DataLoader over the object store.

An `Example` is (source image, instruction, target image); its images are object keys in the
store, or local files for a replayed supervised set. The order of a run is a pure function of
(seed, step): step s draws the next slice of an endless sequence of seeded permutations of the
pool (and of the replay set), so a run resumed at step s sees exactly the batches an
uninterrupted run would, and no example twice within an epoch.

Examples are trained at aspect-ratio buckets: sizes whose area is at most the training
resolution squared, one per aspect ratio from 1:2 to 2:1, each example at the bucket nearest its
source's aspect ratio (cover-resized, centre-cropped). A step's whole global batch comes from one
bucket (a seeded draw weighted by the buckets' sizes), so every micro-batch stacks.
"""

import hashlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, get_worker_info

from policies.sizing import working_size
from store.images import decode_image
from store.objects import ObjectStore

KINDS = ("direct", "hindsight", "replay")


@dataclass(frozen=True)
class Example:
    """One training example: edit `source` with `instruction` to get `target`."""

    source: str  # object key, or a local path when `local`
    instruction: str
    target: str  # object key, or a local path when `local`
    kind: str  # direct | hindsight | replay
    local: bool = False  # the images are local files, not objects in the store
    attempt_id: int | None = None  # the accepted attempt it came from (pool examples)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r}: one of {KINDS}")
        if not self.instruction.strip():
            raise ValueError(f"instruction is empty (example {self.source} → {self.target})")


def write_manifest(path: Path, examples: Sequence[Example]) -> str:
    """Write `examples` as JSONL (atomically); returns the file's SHA-256."""
    text = "".join(json.dumps(asdict(e), sort_keys=True) + "\n" for e in examples)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return hashlib.sha256(text.encode()).hexdigest()


def read_manifest(path: Path) -> list[Example]:
    """The examples of a manifest; `ValueError` naming the line of a malformed one."""
    examples = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            examples.append(Example(**json.loads(line)))
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}:{number}: not a training example ({exc})") from None
    return examples


def read_supervised_set(path: Path) -> list[Example]:
    """A fixed supervised set for replay: JSONL lines `{"source", "instruction", "target"}` with
    image paths relative to the file's folder (or absolute); every file must exist."""
    examples = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            paths = [(path.parent / row[key]).resolve() for key in ("source", "target")]
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:
                raise ValueError(f"missing image files {missing}")
            examples.append(
                Example(
                    source=str(paths[0]),
                    instruction=row["instruction"],
                    target=str(paths[1]),
                    kind="replay",
                    local=True,
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}:{number}: not a supervised example ({exc!r})") from None
    return examples


# ---- order ---------------------------------------------------------------------------------


def mixed_seed(*parts: int | str) -> int:
    """A 63-bit seed from several parts (stable across processes, unlike `hash`)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


class EpochOrder:
    """Position p of an endless stream → an index in [0, size): epoch p // size is a seeded
    permutation; consecutive positions are cheap (one permutation cached)."""

    def __init__(self, size: int, seed: int, stream: str) -> None:
        if size <= 0:
            raise ValueError(f"size={size}: an order needs at least one example")
        self.size = size
        self.seed = seed
        self.stream = stream
        self._epoch = -1
        self._permutation: list[int] = []

    def __getitem__(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(mixed_seed(self.seed, self.stream, epoch))
            self._permutation = torch.randperm(self.size, generator=generator).tolist()
            self._epoch = epoch
        return self._permutation[offset]


def replay_per_step(global_batch: int, replay_fraction: float) -> int:
    """Replay examples in each global batch: the fraction rounded, at most the batch minus one."""
    if replay_fraction <= 0:
        return 0
    return min(global_batch - 1, max(1, round(global_batch * replay_fraction)))


def step_indices(
    step: int,
    *,
    pool: EpochOrder,
    replay: EpochOrder | None,
    global_batch: int,
    replay_count: int,
    seed: int,
) -> list[int]:
    """Dataset indices of the global batch of optimizer step `step` (replay indices are offset by
    the pool size), mixed by a seeded shuffle so replay spreads over ranks and micro-steps."""
    fresh = global_batch - replay_count
    indices = [pool[step * fresh + i] for i in range(fresh)]
    if replay_count:
        if replay is None:
            raise ValueError(f"replay_count={replay_count} without a replay order")
        indices += [pool.size + replay[step * replay_count + i] for i in range(replay_count)]
    generator = torch.Generator().manual_seed(mixed_seed(seed, "mix", step))
    return [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]


class BucketedOrder:
    """Step s → (bucket, pool indices, replay indices) when examples train at several sizes.

    The bucket of step s is a seeded draw weighted by the pool's bucket sizes; its examples are
    the next ones of that bucket's own endless seeded permutation stream (and of the replay set's
    stream for the same bucket: a bucket without replay examples trains on the pool alone).
    A pure function of (seed, step): the draws of earlier steps are replayed to find positions.
    """

    def __init__(
        self,
        pool_buckets: Sequence[int],
        replay_buckets: Sequence[int],
        *,
        global_batch: int,
        replay_count: int,
        seed: int,
    ) -> None:
        self.global_batch = global_batch
        self.replay_count = replay_count
        self.seed = seed
        self.buckets = sorted(set(pool_buckets))
        self.members = {b: [i for i, x in enumerate(pool_buckets) if x == b] for b in self.buckets}
        self.replay_members = {
            b: [i for i, x in enumerate(replay_buckets) if x == b] for b in self.buckets
        }
        self.pool_size = len(pool_buckets)
        self.weights = torch.tensor([len(self.members[b]) for b in self.buckets], dtype=torch.float)
        self.orders = {b: EpochOrder(len(self.members[b]), seed, f"pool/{b}") for b in self.buckets}
        self.replay_orders = {
            b: EpochOrder(len(m), seed, f"replay/{b}") for b, m in self.replay_members.items() if m
        }
        self._drawn: list[int] = []  # bucket of each step so far
        self._seen: dict[int, int] = {}  # steps that drew each bucket, up to len(_drawn)

    def _bucket(self, step: int) -> int:
        while len(self._drawn) <= step:
            generator = torch.Generator().manual_seed(
                mixed_seed(self.seed, "bucket", len(self._drawn))
            )
            index = int(torch.multinomial(self.weights, 1, generator=generator).item())
            self._drawn.append(self.buckets[index])
        return self._drawn[step]

    def step_indices(self, step: int) -> list[int]:
        """Dataset indices (replay offset by the pool size) of step `step`'s global batch."""
        bucket = self._bucket(step)
        before = sum(1 for b in self._drawn[:step] if b == bucket)
        replay = self.replay_count if bucket in self.replay_orders else 0
        fresh = self.global_batch - replay
        members = self.members[bucket]
        order = self.orders[bucket]
        indices = [members[order[before * fresh + i]] for i in range(fresh)]
        if replay:
            replay_members = self.replay_members[bucket]
            replay_order = self.replay_orders[bucket]
            indices += [
                self.pool_size + replay_members[replay_order[before * replay + i]]
                for i in range(replay)
            ]
        generator = torch.Generator().manual_seed(mixed_seed(self.seed, "mix", step))
        return [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]


class StepBatchSampler:
    """Micro-batches of one rank, from optimizer step `start_step` to `max_steps`.

    Global batch of step s = micro_batch x ranks x accumulation; micro-step a of rank r takes
    positions a*B*W + r*B ... + B of it (B micro batch, W ranks). With `pool_buckets` (the size
    bucket of each pool example, and `replay_buckets` of each replay example) spanning several
    buckets, each step's batch comes from one bucket (`BucketedOrder`); with one bucket the order
    is the plain one.
    """

    def __init__(
        self,
        *,
        pool_size: int,
        replay_size: int,
        replay_fraction: float,
        micro_batch: int,
        accumulation: int,
        world_size: int,
        rank: int,
        seed: int,
        start_step: int,
        max_steps: int,
        pool_buckets: Sequence[int] | None = None,
        replay_buckets: Sequence[int] | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} not in [0, world_size={world_size})")
        if not 0 <= start_step <= max_steps:
            raise ValueError(f"start_step={start_step} not in [0, max_steps={max_steps}]")
        self.micro_batch = micro_batch
        self.accumulation = accumulation
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.start_step = start_step
        self.max_steps = max_steps
        self.global_batch = micro_batch * world_size * accumulation
        self.replay_count = replay_per_step(self.global_batch, replay_fraction)
        if self.replay_count and replay_size <= 0:
            raise ValueError(f"replay_fraction={replay_fraction} with an empty replay set")
        self.pool = EpochOrder(pool_size, seed, "pool")
        self.replay = EpochOrder(replay_size, seed, "replay") if self.replay_count else None
        self.bucketed: BucketedOrder | None = None
        if pool_buckets is not None:
            if len(pool_buckets) != pool_size:
                raise ValueError(f"{len(pool_buckets)} pool buckets for {pool_size} examples")
            replay_buckets = list(replay_buckets or [])
            if self.replay_count and len(replay_buckets) != replay_size:
                raise ValueError(f"{len(replay_buckets)} replay buckets for {replay_size}")
            if len(set(pool_buckets) | set(replay_buckets if self.replay_count else [])) > 1:
                self.bucketed = BucketedOrder(
                    pool_buckets,
                    replay_buckets if self.replay_count else [],
                    global_batch=self.global_batch,
                    replay_count=self.replay_count,
                    seed=seed,
                )

    def __len__(self) -> int:
        return (self.max_steps - self.start_step) * self.accumulation

    def __iter__(self) -> Iterator[list[int]]:
        b, w = self.micro_batch, self.world_size
        for step in range(self.start_step, self.max_steps):
            if self.bucketed is not None:
                batch = self.bucketed.step_indices(step)
            else:
                batch = step_indices(
                    step,
                    pool=self.pool,
                    replay=self.replay,
                    global_batch=self.global_batch,
                    replay_count=self.replay_count,
                    seed=self.seed,
                )
            for micro in range(self.accumulation):
                start = micro * b * w + self.rank * b
                yield batch[start : start + b]


# ---- sizes ---------------------------------------------------------------------------------

# Width:height of the training buckets, 1:2 to 2:1 (the shapes most edit datasets hold).
ASPECT_RATIOS = ((1, 1), (4, 3), (3, 4), (3, 2), (2, 3), (16, 9), (9, 16), (2, 1), (1, 2))


def aspect_buckets(resolution: int, multiple: int) -> list[tuple[int, int]]:
    """The training sizes (width, height) at `resolution`: per aspect ratio the largest size of
    area at most resolution² with sides multiples of `multiple`; duplicates dropped, square
    first. E.g. 1024 at multiple 16: 1024x1024, 1184x880, 880x1184, 1248x832, ..."""
    sizes: list[tuple[int, int]] = []
    for w, h in ASPECT_RATIOS:
        # A source far larger than the cap keeps its aspect ratio while scaled down to it.
        size = working_size(w * 4096, h * 4096, multiple=multiple, max_pixels=resolution**2)
        if size not in sizes:
            sizes.append(size)
    return sizes


def nearest_bucket(width: int, height: int, buckets: Sequence[tuple[int, int]]) -> int:
    """The index of the bucket whose aspect ratio is nearest (in log ratio) to width:height."""
    aspect = math.log(width / height)
    return min(
        range(len(buckets)), key=lambda i: abs(math.log(buckets[i][0] / buckets[i][1]) - aspect)
    )


# ---- images --------------------------------------------------------------------------------


def to_training_tensor(image: Image.Image, size: int | tuple[int, int]) -> torch.Tensor:
    """An RGB image → (3, height, width) float32 in [-1, 1] at `size` (width, height; an int is
    a square): resized to cover it (bicubic), then centre-cropped."""
    target_w, target_h = (size, size) if isinstance(size, int) else size
    width, height = image.size
    scale = max(target_w / width, target_h / height)
    resized = (max(target_w, round(width * scale)), max(target_h, round(height * scale)))
    if resized != image.size:
        image = image.resize(resized, Image.Resampling.BICUBIC)
    left, top = (resized[0] - target_w) // 2, (resized[1] - target_h) // 2
    image = image.crop((left, top, left + target_w, top + target_h))
    array = np.asarray(image, dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


class EditExamples(Dataset[dict[str, Any]]):
    """Examples as tensors: `{"source", "target"}` (3, H, W) in [-1, 1], `"instruction"`, and
    the SHA-256 of each image's bytes (`source_sha256`, `target_sha256`: cache keys).

    Each example is at `resolution` (a square side), or with `buckets` at the bucket nearest its
    source's aspect ratio (`"bucket"`: its index). Images are read from the object store (opened
    lazily, once per loader process: a client's connection pool must not be shared across fork)
    or from local files.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        open_store: Callable[[], ObjectStore],
        resolution: int,
        buckets: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        self.examples = list(examples)
        self.open_store = open_store
        self.resolution = resolution
        self.buckets = list(buckets) if buckets else [(resolution, resolution)]
        self._store: ObjectStore | None = None

    def __len__(self) -> int:
        return len(self.examples)

    def _read(self, example: Example, name: str) -> tuple[Image.Image, str]:
        where = getattr(example, name)
        if example.local:
            data = Path(where).read_bytes()
        else:
            if self._store is None:
                self._store = self.open_store()
            data = self._store.get(where)
        try:
            return decode_image(data), hashlib.sha256(data).hexdigest()
        except ValueError as exc:
            raise ValueError(f"{name} image {where!r} of a training example: {exc}") from None

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.examples[index]
        source, source_sha256 = self._read(example, "source")
        target, target_sha256 = self._read(example, "target")
        bucket = nearest_bucket(source.width, source.height, self.buckets)
        size = self.buckets[bucket]
        return {
            "source": to_training_tensor(source, size),
            "target": to_training_tensor(target, size),
            "instruction": example.instruction,
            "bucket": bucket,
            "source_sha256": source_sha256,
            "target_sha256": target_sha256,
        }


def _fresh_store_in_worker(_worker_id: int) -> None:
    info = get_worker_info()
    if info is not None and isinstance(info.dataset, EditExamples):
        info.dataset._store = None


def build_loader(
    dataset: Dataset[Any],
    sampler: StepBatchSampler,
    *,
    num_workers: int,
    prefetch_factor: int,
    pin_memory: bool = False,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader[Any]:
    """A DataLoader yielding the sampler's micro-batches in order (`num_workers` processes, each
    `prefetch_factor` batches ahead)."""
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        worker_init_fn=_fresh_store_in_worker,
        pin_memory=pin_memory,
        collate_fn=collate_fn,
    )
