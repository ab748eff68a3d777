"""The run config of the fine-tuning recipe, and the DeepSpeed config it fills in.

`TrainConfig` is a frozen dataclass written to a JSON file by whoever prepares a run (the trainer
writes `train_config.json` into the job folder) and read back by every rank, with `key=value`
overrides from the command line. The DeepSpeed JSON (the shipped `configs/zero{2,3}.json`, or the
user's own) may say `"auto"` where the recipe's config decides: batch size, accumulation,
clipping and precision; a concrete value there must agree with the recipe's.
"""

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, get_type_hints

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
OBJECTIVES = ("auto", "ip2p", "flow", "pixel")
SWITCHES = ("auto", "on", "off")
LR_SCHEDULES = ("constant", "cosine")
TIMESTEP_SAMPLINGS = ("logit_normal", "uniform")
MODES = ("full", "lora")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    """One fine-tuning run. Paths are local; images come from the object store or local files."""

    model: str  # base editor: a diffusers folder (a supported edit pipeline) or a pixel editor
    manifest: str  # JSONL of training examples (policies.training.data.write_manifest)
    output_dir: str  # run folder: DeepSpeed checkpoints, loss log, progress, final checkpoint
    init_checkpoint: str = ""  # parent fine-tune applied on the base before training; "" = base
    objective: str = "auto"  # ip2p, flow, pixel, or auto (from the model folder's pipeline)
    mode: str = "full"  # full: every denoiser weight; lora: a peft adapter on the denoiser
    lora_rank: int = 8  # adapter rank (mode lora)
    lora_alpha: float = 8.0  # adapter scale numerator (scale = alpha / rank)
    max_steps: int = 100  # optimizer steps of the whole run (a resumed run counts from 0)
    micro_batch_size: int = 4  # examples per rank and forward pass
    gradient_accumulation: int = 1  # forward passes per optimizer step
    learning_rate: float = 1e-4  # AdamW, after warm-up
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    warmup_steps: int = 0  # linear learning-rate warm-up, optimizer steps
    lr_schedule: str = "constant"  # after warm-up: constant, or cosine decay to 0 at max_steps
    max_grad_norm: float = 1.0  # gradient clipping norm; 0 = none
    # Training area: resolution² pixels (aspect-ratio buckets up to it, or a square of this
    # side); 0 = the editor's own (InstructPix2Pix 256, the transformer editors 1024, the pixel
    # editor its size).
    resolution: int = 0
    aspect_buckets: bool = True  # buckets of aspect ratios 1:2..2:1; false = square crops
    gradient_checkpointing: str = "auto"  # on, off, auto (on for the transformer editors)
    # Folder of the frozen encoders' cached outputs (content-addressed, so runs can share it);
    # "" = <output_dir>/encodings.
    encoding_cache: str = ""
    seed: int = 0  # data order, noise, timesteps, conditioning dropout
    drop_text: float = 0.05  # P(text dropped only), InstructPix2Pix CFG training (Brooks+ 2023)
    drop_image: float = 0.05  # P(source image dropped only)
    drop_both: float = 0.05  # P(both dropped)
    timestep_sampling: str = "logit_normal"  # flow noise levels: logit_normal(0, 1) or uniform
    ema_decay: float = 0.0  # exponential moving average of the weights; 0 = off (ZeRO-2 only)
    zero_stage: int = 2  # 2 or 3: which shipped DeepSpeed config (must match a user config)
    deepspeed_config: str = ""  # a DeepSpeed JSON that replaces the shipped one
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU), fp32, bf16, fp16
    save_every: int = 50  # optimizer steps between DeepSpeed checkpoints; 0 = never
    keep_checkpoints: int = 2  # DeepSpeed checkpoints kept (older ones are deleted)
    replay_manifest: str = ""  # JSONL of a fixed supervised set mixed in; "" = none
    replay_fraction: float = 0.0  # share of every global batch drawn from the replay set
    num_workers: int = 2  # DataLoader worker processes per rank (0 = in the training process)
    prefetch_factor: int = 2  # batches each loader worker prepares ahead
    progress_bar: bool = True  # tqdm on rank 0

    def __post_init__(self) -> None:
        for name in ("model", "manifest", "output_dir"):
            if not getattr(self, name):
                raise ValueError(f"{name} is empty: it is required")
        checks = {
            "objective": self.objective in OBJECTIVES,
            "gradient_checkpointing": self.gradient_checkpointing in SWITCHES,
            "lr_schedule": self.lr_schedule in LR_SCHEDULES,
            "mode": self.mode in MODES,
            "precision": self.precision in PRECISIONS,
            "timestep_sampling": self.timestep_sampling in TIMESTEP_SAMPLINGS,
            "zero_stage": self.zero_stage in (2, 3),
            "lora_rank": self.lora_rank > 0,
            "lora_alpha": self.lora_alpha > 0,
            "max_steps": self.max_steps > 0,
            "micro_batch_size": self.micro_batch_size > 0,
            "gradient_accumulation": self.gradient_accumulation > 0,
            "learning_rate": self.learning_rate > 0,
            "weight_decay": self.weight_decay >= 0,
            "warmup_steps": self.warmup_steps >= 0,
            "max_grad_norm": self.max_grad_norm >= 0,
            "resolution": self.resolution >= 0 and self.resolution % 8 == 0,
            "seed": self.seed >= 0,
            "ema_decay": 0 <= self.ema_decay < 1,
            "save_every": self.save_every >= 0,
            "keep_checkpoints": self.keep_checkpoints > 0,
            "replay_fraction": 0 <= self.replay_fraction < 1,
            "num_workers": self.num_workers >= 0,
            "prefetch_factor": self.prefetch_factor > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} is not valid ({_HELP[name]})")
        drops = (self.drop_text, self.drop_image, self.drop_both)
        if any(p < 0 for p in drops) or sum(drops) > 1:
            raise ValueError(
                f"drop_text={self.drop_text}, drop_image={self.drop_image}, "
                f"drop_both={self.drop_both}: probabilities >= 0 adding up to at most 1"
            )
        if self.replay_fraction > 0 and not self.replay_manifest:
            raise ValueError(f"replay_fraction={self.replay_fraction} needs a replay_manifest")
        if self.ema_decay > 0 and self.zero_stage == 3:
            raise ValueError(
                f"ema_decay={self.ema_decay} with zero_stage=3: EMA needs whole weights on each "
                "rank; use ZeRO-2 or ema_decay=0"
            )
        if self.lr_schedule == "cosine" and self.warmup_steps >= self.max_steps:
            raise ValueError(
                f"warmup_steps={self.warmup_steps} >= max_steps={self.max_steps}: a cosine "
                "schedule needs steps after the warm-up"
            )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @property
    def global_batch_per_rank(self) -> int:
        """Examples one rank sees per optimizer step."""
        return self.micro_batch_size * self.gradient_accumulation


_HELP = {
    "objective": f"one of {OBJECTIVES}",
    "gradient_checkpointing": f"one of {SWITCHES}",
    "lr_schedule": f"one of {LR_SCHEDULES}",
    "mode": f"one of {MODES}",
    "precision": f"one of {PRECISIONS}",
    "timestep_sampling": f"one of {TIMESTEP_SAMPLINGS}",
    "zero_stage": "2 or 3",
    "lora_rank": "positive",
    "lora_alpha": "positive",
    "max_steps": "positive",
    "micro_batch_size": "positive",
    "gradient_accumulation": "positive",
    "learning_rate": "positive",
    "weight_decay": ">= 0",
    "warmup_steps": ">= 0",
    "max_grad_norm": ">= 0",
    "resolution": "0 (the editor's) or a positive multiple of 8",
    "seed": ">= 0",
    "ema_decay": "in [0, 1)",
    "save_every": ">= 0",
    "keep_checkpoints": "positive",
    "replay_fraction": "in [0, 1)",
    "num_workers": ">= 0",
    "prefetch_factor": "positive",
}


def _parse_value(name: str, kind: Any, text: str) -> Any:
    if kind is bool:
        if text.lower() not in {"true", "false", "1", "0"}:
            raise ValueError(f"{name}={text!r}: use true or false")
        return text.lower() in {"true", "1"}
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{name}={text!r}: not a {kind.__name__}") from None


def parse_overrides(items: list[str]) -> dict[str, str]:
    """`["key=value", ...]` → `{key: value}`; ValueError for an item without `=`."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r}: write it as key=value")
        overrides[key.strip()] = value.strip()
    return overrides


def load_train_config(path: Path, overrides: Mapping[str, str] | None = None) -> TrainConfig:
    """The `TrainConfig` in the JSON file at `path`, with `key=value` overrides applied."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"config={str(path)!r}: no such file") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"config={str(path)!r} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config={str(path)!r}: expected a JSON object")
    types = get_type_hints(TrainConfig)
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted((set(data) | set(overrides or {})) - known)
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; the keys are {sorted(known)}")
    for key, text in (overrides or {}).items():
        data[key] = _parse_value(key, types[key], text)
    return TrainConfig(**data)


def learning_rate_factor(step: int, *, warmup: int, max_steps: int, schedule: str) -> float:
    """The learning rate of optimizer step `step` (0-based) as a fraction of the configured one:
    linear warm-up over `warmup` steps ((step + 1) / (warmup + 1)), then constant, or a cosine
    from 1 down to 0 at `max_steps`."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, max_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def resolve_precision(precision: str, device_type: str) -> str:
    """fp32, bf16 or fp16 for `device_type`; half precision is refused on CPU."""
    if precision == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    if precision in ("bf16", "fp16") and device_type == "cpu":
        raise ValueError(f"precision={precision!r} on CPU: use fp32 (or auto)")
    return precision


def deepspeed_config(config: TrainConfig, *, precision: str) -> dict[str, Any]:
    """The DeepSpeed config of a run: the JSON file with its `"auto"` values filled in.

    Raises `ValueError` when the file's ZeRO stage or a concrete value disagrees with `config`.
    """
    path = Path(config.deepspeed_config or CONFIG_DIR / f"zero{config.zero_stage}.json")
    try:
        ds = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"deepspeed_config={str(path)!r}: cannot read it ({exc})") from None
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage != config.zero_stage:
        raise ValueError(
            f"deepspeed_config={str(path)!r} has ZeRO stage {stage}, the run config says "
            f"zero_stage={config.zero_stage}: make them agree"
        )
    wanted: dict[tuple[str, ...], Any] = {
        ("train_micro_batch_size_per_gpu",): config.micro_batch_size,
        ("gradient_accumulation_steps",): config.gradient_accumulation,
        ("gradient_clipping",): config.max_grad_norm,
        ("bf16", "enabled"): precision == "bf16",
        ("fp16", "enabled"): precision == "fp16",
    }
    for keys, value in wanted.items():
        parent = ds
        for key in keys[:-1]:
            parent = parent.setdefault(key, {})
        current = parent.get(keys[-1], "auto")
        if current == "auto":
            parent[keys[-1]] = value
        elif current != value:
            raise ValueError(
                f"deepspeed_config={str(path)!r} sets {'.'.join(keys)}={current!r}, the run "
                f'config implies {value!r}: write "auto" there or change the run config'
            )
    # DeepSpeed derives the global batch from micro batch x accumulation x ranks (and checks a
    # concrete value against that product itself).
    if ds.get("train_batch_size") == "auto":
        del ds["train_batch_size"]
    return ds
