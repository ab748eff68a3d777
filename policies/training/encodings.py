"""The frozen encoders' outputs, computed once per example and cached on disk.

Before the training loop, every rank encodes its share of the job's examples (VAE latent
posteriors of source and target, text or text-and-image embeddings of the instruction and of the
null prompt) with the objective's frozen encoders and writes each example to the cache under a
key that hashes its content: the images' bytes, the instruction, the training size and the
encoders (`encoder_fingerprint`). After a barrier every rank reads the merged index, the
objective frees its encoders (their memory goes to the denoiser) and the training loop reads
encodings from the cache (`EncodedExamples`). A resumed run, or a run sharing the cache folder
with an earlier one, finds what was already encoded and encodes only what is new.
"""

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset, Subset

from policies.training.data import EditExamples

Encoding = dict[str, torch.Tensor]


class EncodingObjective(Protocol):
    """An objective whose frozen encoders can run ahead of training (`ip2p`, `flow`)."""

    def encode_examples(self, batch: dict[str, Any]) -> list[Encoding]:
        """One encoding per example of a batch of one size (CPU tensors)."""

    def collate(self, encodings: list[Encoding]) -> dict[str, torch.Tensor]:
        """A micro-batch from per-example encodings (what `loss_encoded` takes)."""

    def free_encoders(self) -> None:
        """Drop the frozen encoders (after every example is encoded)."""


def encoder_fingerprint(model_dir: Path, components: Sequence[str], dtype: torch.dtype) -> str:
    """A short hash that changes when the frozen encoders' weights or the dtype change: each
    component's config and its weight files' names and sizes."""
    digest = hashlib.sha256(str(dtype).encode())
    for name in sorted(components):
        folder = model_dir / name
        for path in sorted(folder.glob("*")):
            if path.suffix == ".json":
                digest.update(path.read_bytes())
            elif path.is_file():
                digest.update(f"{path.name}:{path.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def encoding_key(fingerprint: str, item: dict[str, Any], size: tuple[int, int]) -> str:
    """The cache key of one example: its content and the encoders that read it."""
    parts = [
        fingerprint,
        item["source_sha256"],
        item["target_sha256"],
        item["instruction"],
        f"{size[0]}x{size[1]}",
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class EncodingCache:
    """Encodings as safetensors files under `folder`, one per key (two-character fan-out)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def get(self, key: str) -> Encoding:
        """The encoding under `key`; `FileNotFoundError` when it was never written."""
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no encoding under key {key}")
        return load_file(path)

    def put(self, key: str, encoding: Encoding) -> None:
        """Write (atomically: a temporary file renamed) the encoding under `key`."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        os.close(fd)
        try:
            save_file({k: v.contiguous() for k, v in encoding.items()}, tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@dataclass(frozen=True)
class EncodedIndex:
    """Where each example's encoding is (`keys`), its bucket, and what this rank did."""

    keys: list[str]
    buckets: list[int]
    computed: int  # encodings this rank wrote
    reused: int  # encodings this rank found in the cache


def _rank_items(dataset: EditExamples, rank: int, world_size: int, workers: int) -> Iterator[Any]:
    indices = list(range(rank, len(dataset), world_size))
    loader = DataLoader(
        Subset(dataset, indices),
        batch_size=None,
        num_workers=workers,
        prefetch_factor=2 if workers else None,
    )
    yield from zip(indices, loader, strict=True)


def precompute_encodings(
    objective: EncodingObjective,
    dataset: EditExamples,
    cache: EncodingCache,
    *,
    fingerprint: str,
    rank: int,
    world_size: int,
    batch_size: int,
    index_dir: Path,
    barrier: Callable[[], None],
    num_workers: int = 0,
    progress: Callable[[int], None] = lambda n: None,
) -> EncodedIndex:
    """Encode this rank's share of `dataset` (every `world_size`-th example) into `cache`, in
    batches of one size, skipping what the cache holds; then, after `barrier`, the whole index.

    Each rank writes `index_dir/index-<rank>.json` (example → key, bucket); every rank reads all
    of them after the barrier, so the sampler sees every example's bucket.
    """
    mine: dict[int, tuple[str, int]] = {}
    pending: dict[int, list[tuple[str, dict[str, Any]]]] = {}  # bucket -> waiting items
    computed = reused = 0

    def flush(bucket: int) -> None:
        nonlocal computed
        items = pending.pop(bucket, [])
        if not items:
            return
        batch = {
            "source": torch.stack([item["source"] for _, item in items]),
            "target": torch.stack([item["target"] for _, item in items]),
            "instruction": [item["instruction"] for _, item in items],
        }
        with torch.no_grad():
            encodings = objective.encode_examples(batch)
        for (key, _), encoding in zip(items, encodings, strict=True):
            cache.put(key, encoding)
        computed += len(items)
        progress(len(items))

    for index, item in _rank_items(dataset, rank, world_size, num_workers):
        bucket = int(item["bucket"])
        key = encoding_key(fingerprint, item, dataset.buckets[bucket])
        mine[index] = (key, bucket)
        if cache.has(key):
            reused += 1
            progress(1)
            continue
        pending.setdefault(bucket, []).append((key, item))
        if len(pending[bucket]) >= batch_size:
            flush(bucket)
    for bucket in list(pending):
        flush(bucket)
    index_dir.mkdir(parents=True, exist_ok=True)
    _write_json(index_dir / f"index-{rank:05d}.json", {str(i): v for i, v in mine.items()})
    barrier()
    merged: dict[int, tuple[str, int]] = {}
    for path in sorted(index_dir.glob("index-*.json")):
        merged |= {
            int(i): (key, bucket) for i, (key, bucket) in json.loads(path.read_text()).items()
        }
    missing = sorted(set(range(len(dataset))) - set(merged))
    if missing:
        raise RuntimeError(f"{index_dir}: no encoding index for examples {missing[:5]}")
    keys = [merged[i][0] for i in range(len(dataset))]
    buckets = [merged[i][1] for i in range(len(dataset))]
    return EncodedIndex(keys, buckets, computed, reused)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


class EncodedExamples(Dataset[Encoding]):
    """The training loop's dataset: example i's encoding, read from the cache."""

    def __init__(self, cache: EncodingCache, keys: Sequence[str]) -> None:
        self.cache = cache
        self.keys = list(keys)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> Encoding:
        return self.cache.get(self.keys[index])
