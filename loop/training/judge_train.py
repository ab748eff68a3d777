"""`editloop train-judge`: the pool's judge or reflector examples → TRL fine-tuning → a checkpoint.

A standalone job (not a leased `train_job`): it selects the examples (`judge_data`), fine-tunes
with `rewards/sft.py` and publishes through the editor's publish code (`publish.py`: staged,
verified by loading it back, manifest last), the row `ready` with its `role`. No gate decides on
a judge checkpoint yet: it stays `ready` until a reviewer promotes it.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from loop.export.splits import TRAIN, VALIDATION
from loop.training.judge_data import JudgeExample, chat_row, select_examples
from loop.training.pool import PoolFilter
from loop.training.publish import content_version, folder_files, publish_checkpoint
from rewards.prompts import JudgePrompts
from rewards.sft import SFTOptions, train_sft
from rewards.verdict import VerdictThresholds
from rewards.vlm import load_vision_language_model
from store.images import ImageLimits, decode_image
from store.models import CheckpointRole
from store.objects import ObjectStore


@dataclass(frozen=True)
class JudgeTraining:
    """What to fine-tune, on which examples, and how."""

    role: CheckpointRole
    base_model: Path
    pool_filter: PoolFilter
    options: SFTOptions
    confirmed_only: bool = True
    val_fraction: float = 0.1
    split_seed: int = 0


@dataclass(frozen=True)
class JudgeTrainResult:
    """The published checkpoint and what it was trained on."""

    checkpoint_id: int
    version: str
    train_examples: int
    validation_examples: int
    metrics: dict[str, float]


def train_judge(
    *,
    factory: sessionmaker[Session],
    store: ObjectStore,
    job: JudgeTraining,
    prompts: JudgePrompts,
    thresholds: VerdictThresholds,
    limits: ImageLimits,
    work_dir: Path,
) -> JudgeTrainResult:
    """Select, fine-tune and publish; ValueError when the pool holds no training example."""
    examples = select_examples(
        factory,
        job.pool_filter,
        job.role,
        thresholds,
        confirmed_only=job.confirmed_only,
        seed=job.split_seed,
        val_fraction=job.val_fraction,
    )
    train = [e for e in examples if e.split == TRAIN]
    validation = [e for e in examples if e.split == VALIDATION]
    if not train:
        which = "confirmed " if job.confirmed_only else ""
        raise ValueError(
            f"no {which}{job.role.value} examples in the pool ({len(examples)} in validation): "
            "run rounds with a reflector first"
            + (", or pass --include-unconfirmed" if job.confirmed_only else "")
        )
    result = train_sft(
        job.base_model,
        _rows(train, prompts, store, limits),
        _rows(validation, prompts, store, limits),
        work_dir,
        job.options,
    )
    files = folder_files(result.folder)
    version = content_version(job.role.value, files)
    checkpoint_id = publish_checkpoint(
        factory=factory,
        store=store,
        folder=result.folder,
        version=version,
        parent_id=None,  # the base is a model folder, not a checkpoint row
        kind="full",  # LoRA is merged before saving: every judge checkpoint loads the same way
        data_filter=_provenance(job),
        sample_count=len(train),
        train_metrics=result.metrics,
        verify=lambda folder: load_vision_language_model(folder),
        role=job.role,
    )
    return JudgeTrainResult(checkpoint_id, version, len(train), len(validation), result.metrics)


def _rows(
    examples: list[JudgeExample], prompts: JudgePrompts, store: ObjectStore, limits: ImageLimits
) -> list[dict[str, Any]]:
    cache: dict[str, Image.Image] = {}

    def image(key: str) -> Image.Image:
        if key not in cache:
            cache[key] = decode_image(store.get(key), limits)
        return cache[key]

    return [chat_row(example, prompts, image) for example in examples]


def _provenance(job: JudgeTraining) -> dict[str, Any]:
    """The checkpoint row's record of its data: the filter, the base and the method."""
    return {
        **job.pool_filter.to_dict(),
        "role": job.role.value,
        "base_model": str(job.base_model),
        "confirmed_only": job.confirmed_only,
        "val_fraction": job.val_fraction,
        "split_seed": job.split_seed,
        "method": "lora" if job.options.lora else "full",
    }
