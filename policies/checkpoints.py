"""Fine-tuned checkpoints on top of a base model: their layout, in-place weight loading, fetching.

A checkpoint folder holds either a LoRA adapter (`pytorch_lora_weights.safetensors`, as diffusers'
`save_lora_weights` writes it) or full weights of one or more pipeline components, each in a
folder named after the component (`unet/`, `transformer/`, ...) as `save_pretrained` writes it.
In the object store a checkpoint is the same files under a key prefix.
"""

import json
import os
import shutil
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from store.objects import ObjectStore

LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"


@dataclass(frozen=True)
class CheckpointLayout:
    """What a checkpoint folder holds: a LoRA adapter, or full weights of named components."""

    kind: Literal["lora", "full"]
    components: tuple[str, ...] = ()


def inspect_checkpoint(folder: Path, components: Collection[str]) -> CheckpointLayout:
    """The layout of the checkpoint at `folder`; `components` are the pipeline's module names.

    Raises `ValueError` for a missing folder, or one that holds neither or both kinds.
    """
    if not folder.is_dir():
        raise ValueError(f"checkpoint={str(folder)!r}: no such folder")
    has_lora = (folder / LORA_WEIGHTS_FILE).is_file()
    full = tuple(sorted(name for name in components if (folder / name / "config.json").is_file()))
    if has_lora and full:
        raise ValueError(
            f"checkpoint={str(folder)!r}: holds both {LORA_WEIGHTS_FILE} and full weights of "
            f"{list(full)}; a checkpoint is one or the other"
        )
    if has_lora:
        return CheckpointLayout("lora")
    if full:
        return CheckpointLayout("full", full)
    raise ValueError(
        f"checkpoint={str(folder)!r}: holds neither {LORA_WEIGHTS_FILE} nor a component folder "
        f"with config.json (one of {sorted(components)})"
    )


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of one saved component: its single file, or the shards of its index."""
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise ValueError(f"{folder}: several safetensors indexes {[p.name for p in indexes]}")
    if indexes:
        weight_map = json.loads(indexes[0].read_text())["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        raise ValueError(
            f"{folder}: expected one .safetensors file (or an index), "
            f"found {[p.name for p in files]}"
        )
    return files


def load_weights_in_place(module: torch.nn.Module, folder: Path) -> None:
    """Copy the weights saved in `folder` into `module`'s own tensors, one file at a time.

    Nothing new is allocated for the module (its parameters keep their storage, device and dtype),
    so switching weights leaves memory flat, and at most one shard is in host memory at once.
    Every key, and only those, must be present with the module's shapes: checked before copying.
    """
    targets = module.state_dict()
    files = weight_files(folder)
    found: dict[str, tuple[int, ...]] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                found[key] = tuple(handle.get_slice(key).get_shape())
    missing = sorted(set(targets) - set(found))
    unexpected = sorted(set(found) - set(targets))
    wrong = sorted(
        key for key in set(found) & set(targets) if found[key] != tuple(targets[key].shape)
    )
    if missing or unexpected or wrong:
        raise ValueError(
            f"{folder}: weights do not fit {type(module).__name__}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]} (first 5 of each)"
        )
    with torch.no_grad():
        for file in files:
            for key, tensor in load_file(file).items():
                targets[key].copy_(tensor)


def download_prefix(store: ObjectStore, prefix: str, folder: Path) -> dict[str, str]:
    """Stream every object under `prefix/` into `folder` (same relative paths), one file at a
    time; returns {relative path: SHA-256 of the bytes received}. `FileNotFoundError` when
    nothing is stored there."""
    keys = list(store.list(prefix + "/"))
    if not keys:
        raise FileNotFoundError(f"no checkpoint in the object store under {prefix + '/'!r}")
    digests = {}
    for key in keys:
        relative = key[len(prefix) + 1 :]
        if any(part in {"", ".", ".."} for part in relative.split("/")):
            raise ValueError(f"object key {key!r} does not name a file inside the checkpoint")
        digests[relative] = store.fget(key, folder.joinpath(*relative.split("/")))
    return digests


def fetch_checkpoint(store: ObjectStore, prefix: str, cache_dir: Path) -> Path:
    """A local folder with the checkpoint stored under `prefix`, downloaded once into `cache_dir`.

    Published checkpoints never change (they are written under a temporary prefix and published
    atomically), so a folder already in the cache is reused as is. Files are streamed to disk
    (a shard is never whole in memory) into a temporary folder renamed into place, so a crash
    never leaves a half checkpoint that looks complete.
    Raises `FileNotFoundError` when nothing is stored under `prefix`.
    """
    prefix = prefix.strip("/")
    parts = prefix.split("/")
    if not prefix or any(part in {"", ".", ".."} for part in parts):
        raise ValueError(f"prefix={prefix!r}: use a relative '/'-separated key prefix")
    target = cache_dir.joinpath(*parts)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        download_prefix(store, prefix, staging)
        try:
            os.replace(staging, target)
        except OSError:
            # Another process published the same checkpoint into the cache first; keep theirs.
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
