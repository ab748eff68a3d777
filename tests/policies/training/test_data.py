"""Run config, DeepSpeed config filling, the seeded resumable order and the image loader."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from policies.training.config import (
    TrainConfig,
    deepspeed_config,
    learning_rate_factor,
    load_train_config,
    parse_overrides,
    resolve_precision,
)
from policies.training.data import (
    EditExamples,
    EpochOrder,
    Example,
    StepBatchSampler,
    aspect_buckets,
    build_loader,
    nearest_bucket,
    read_manifest,
    read_supervised_set,
    replay_per_step,
    to_training_tensor,
    write_manifest,
)
from policies.training.settings import TrainingSettings
from store.images import encode_png
from store.objects import LocalStore, ObjectStore

BASE = {"model": "m", "manifest": "x.jsonl", "output_dir": "out"}


# ---- config ------------------------------------------------------------------------------------


def test_config_file_with_typed_overrides(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    path.write_text(json.dumps(BASE | {"max_steps": 7}))
    config = load_train_config(
        path, parse_overrides(["zero_stage=3", "learning_rate=0.5", "progress_bar=false"])
    )
    assert (config.max_steps, config.zero_stage, config.learning_rate) == (7, 3, 0.5)
    assert config.progress_bar is False
    assert load_train_config(path) == TrainConfig(**BASE, max_steps=7)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"zero_stage": 1}, "zero_stage"),
        ({"resolution": 30}, "resolution"),
        ({"mode": "qlora"}, "mode"),
        ({"drop_text": 0.6, "drop_image": 0.6}, "drop_text"),
        ({"replay_fraction": 0.5}, "replay_manifest"),
        ({"ema_decay": 0.99, "zero_stage": 3}, "ema_decay"),
        ({"manifest": ""}, "manifest"),
        ({"gradient_checkpointing": "yes"}, "gradient_checkpointing"),
        ({"lr_schedule": "linear"}, "lr_schedule"),
        ({"lr_schedule": "cosine", "warmup_steps": 100}, "warmup_steps"),
    ],
)
def test_bad_config_values_are_named(change: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        TrainConfig(**(BASE | change))


def test_unknown_keys_and_bad_override_values_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    path.write_text(json.dumps(BASE | {"max_step": 3}))
    with pytest.raises(ValueError, match="max_step"):
        load_train_config(path)
    path.write_text(json.dumps(BASE))
    with pytest.raises(ValueError, match="max_steps='ten'"):
        load_train_config(path, {"max_steps": "ten"})
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["max_steps"])


def test_deepspeed_config_fills_auto_and_refuses_conflicts(tmp_path: Path) -> None:
    config = TrainConfig(**BASE, micro_batch_size=3, gradient_accumulation=2, zero_stage=3)
    filled = deepspeed_config(config, precision="bf16")
    assert filled["train_micro_batch_size_per_gpu"] == 3
    assert filled["gradient_accumulation_steps"] == 2
    assert filled["bf16"]["enabled"] is True and filled["fp16"]["enabled"] is False
    assert filled["zero_optimization"]["stage"] == 3

    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"zero_optimization": {"stage": 2}, "gradient_clipping": 0.5}))
    with pytest.raises(ValueError, match="gradient_clipping=0.5"):
        deepspeed_config(TrainConfig(**BASE, deepspeed_config=str(user)), precision="fp32")
    with pytest.raises(ValueError, match="ZeRO stage 2"):
        deepspeed_config(
            TrainConfig(**BASE, deepspeed_config=str(user), zero_stage=3), precision="fp32"
        )
    agreeing = TrainConfig(**BASE, deepspeed_config=str(user), max_grad_norm=0.5)
    assert deepspeed_config(agreeing, precision="fp32")["gradient_clipping"] == 0.5


def test_precision_is_fp32_on_cpu_and_half_precision_is_refused_there() -> None:
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", "cuda") == "bf16"
    with pytest.raises(ValueError, match="precision='bf16' on CPU"):
        resolve_precision("bf16", "cpu")


def test_training_settings_check_the_recipe_at_startup() -> None:
    assert TrainingSettings(recipe={"max_steps": 5}).recipe == {"max_steps": 5}
    with pytest.raises(ValueError, match="unexpected keyword argument 'max_stepz'"):
        TrainingSettings(recipe={"max_stepz": 5})
    with pytest.raises(ValueError, match="zero_stage"):
        TrainingSettings(recipe={"zero_stage": 4})
    with pytest.raises(ValueError, match="output_dir"):
        TrainingSettings(recipe={"output_dir": "elsewhere"})


# ---- order -------------------------------------------------------------------------------------


def test_an_epoch_visits_every_example_once_and_epochs_differ() -> None:
    order = EpochOrder(10, seed=3, stream="pool")
    first, second = [order[p] for p in range(10)], [order[p] for p in range(10, 20)]
    assert sorted(first) == sorted(second) == list(range(10))
    assert first != second
    assert [EpochOrder(10, seed=3, stream="pool")[p] for p in range(10)] == first
    assert [EpochOrder(10, seed=4, stream="pool")[p] for p in range(10)] != first


def _sampler(**overrides: int | float) -> StepBatchSampler:
    options = dict(
        pool_size=12, replay_size=0, replay_fraction=0.0, micro_batch=2, accumulation=2,
        world_size=2, rank=0, seed=0, start_step=0, max_steps=6,
    ) | overrides  # fmt: skip
    return StepBatchSampler(**options)  # type: ignore[arg-type]


def test_ranks_split_each_global_batch_and_a_resumed_sampler_continues_the_same_order() -> None:
    # Global batch = 2 (micro) x 2 (ranks) x 2 (accumulation) = 8 examples per step.
    ranks = [list(_sampler(rank=r)) for r in (0, 1)]
    assert all(len(batches) == 6 * 2 for batches in ranks)  # 6 steps x 2 micro-steps
    for step in range(6):
        micro = slice(2 * step, 2 * step + 2)
        seen = [i for r in (0, 1) for batch in ranks[r][micro] for i in batch]
        assert len(seen) == 8
    # 6 steps x 8 = 48 positions = 4 epochs of 12: every example exactly 4 times.
    counts = Counter(i for r in (0, 1) for batch in ranks[r] for i in batch)
    assert set(counts.values()) == {4} and len(counts) == 12
    # Resuming at step 4 gives exactly the batches of steps 4 and 5 (micro-steps 8..11).
    assert list(_sampler(rank=1, start_step=4)) == ranks[1][8:]


def test_replay_takes_its_share_of_every_global_batch() -> None:
    # 8 per step, replay_fraction 0.25 → 2 replay examples (indices >= pool size 12) per step.
    assert replay_per_step(8, 0.25) == 2 and replay_per_step(8, 0.01) == 1
    assert replay_per_step(8, 0.99) == 7
    ranks = [list(_sampler(rank=r, replay_size=5, replay_fraction=0.25)) for r in (0, 1)]
    for step in range(6):
        micro = slice(2 * step, 2 * step + 2)
        replayed = [i for r in (0, 1) for batch in ranks[r][micro] for i in batch if i >= 12]
        assert len(replayed) == 2
    with pytest.raises(ValueError, match="empty replay set"):
        _sampler(replay_fraction=0.25)


# ---- manifests and images ----------------------------------------------------------------------


def _png(path: Path, value: int, size: tuple[int, int] = (24, 16)) -> Path:
    Image.new("RGB", size, (value, 255 - value, 0)).save(path)
    return path


def test_manifest_round_trip_and_bad_lines(tmp_path: Path) -> None:
    examples = [
        Example("a.png", "make it red", "b.png", "direct", attempt_id=3),
        Example("s.png", "make it red and blue", "b.png", "hindsight", attempt_id=3),
    ]
    write_manifest(tmp_path / "m.jsonl", examples)
    assert read_manifest(tmp_path / "m.jsonl") == examples
    (tmp_path / "bad.jsonl").write_text(
        json.dumps({"source": "a", "instruction": " ", "target": "b", "kind": "direct"}) + "\n"
    )
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*instruction is empty"):
        read_manifest(tmp_path / "bad.jsonl")


def test_supervised_set_paths_are_relative_to_the_file_and_must_exist(tmp_path: Path) -> None:
    _png(tmp_path / "s.png", 10)
    _png(tmp_path / "t.png", 200)
    path = tmp_path / "set.jsonl"
    path.write_text(json.dumps({"source": "s.png", "instruction": "x", "target": "t.png"}) + "\n")
    (example,) = read_supervised_set(path)
    assert example.kind == "replay" and example.local and Path(example.target).is_file()
    path.write_text(json.dumps({"source": "s.png", "instruction": "x", "target": "no.png"}))
    with pytest.raises(ValueError, match=r"set.jsonl:1: .*missing image files"):
        read_supervised_set(path)


def test_training_tensor_is_a_center_crop_in_minus_one_to_one() -> None:
    image = Image.new("RGB", (48, 32), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 2, 32))  # a white band at the left edge, cropped away
    tensor = to_training_tensor(image, 16)
    # 48x32 → 24x16 (the band and its bicubic spill: columns 0-2), center crop 16x16 drops
    # columns 0-3 and 20-23.
    assert tensor.shape == (3, 16, 16)
    assert tensor.min().item() == -1.0 and tensor.max().item() < -0.99


def _store_examples(store: ObjectStore, tmp_path: Path, n: int) -> list[Example]:
    examples = []
    for i in range(n):
        source = encode_png(Image.new("RGB", (16, 16), (i * 10, 0, 0)))
        target = encode_png(Image.new("RGB", (16, 16), (0, i * 10, 0)))
        store.put(f"img/s{i}.png", source)
        store.put(f"img/t{i}.png", target)
        examples.append(Example(f"img/s{i}.png", f"edit {i}", f"img/t{i}.png", "direct"))
    return examples


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_streams_store_and_local_images_in_sampler_order(
    object_store: ObjectStore, tmp_path: Path, workers: int
) -> None:
    pool = _store_examples(object_store, tmp_path, 6)
    replay = [
        Example(
            str(_png(tmp_path / "rs.png", 1)), "replayed", str(_png(tmp_path / "rt.png", 2)),
            "replay", local=True,
        )
    ]  # fmt: skip
    sampler = StepBatchSampler(
        pool_size=6, replay_size=1, replay_fraction=0.25, micro_batch=4, accumulation=1,
        world_size=1, rank=0, seed=0, start_step=0, max_steps=3,
    )  # fmt: skip
    dataset = EditExamples(pool + replay, lambda: object_store, resolution=16)
    loader = build_loader(dataset, sampler, num_workers=workers, prefetch_factor=2)
    batches = list(loader)
    assert len(batches) == 3
    expected = [[(pool + replay)[i].instruction for i in batch] for batch in sampler]
    assert [list(b["instruction"]) for b in batches] == expected
    assert sum(b["instruction"].count("replayed") for b in batches) == 3  # one per step
    first = batches[0]
    assert first["source"].shape == first["target"].shape == (4, 3, 16, 16)
    index = next(iter(sampler))[0]
    red = (index * 10) / 127.5 - 1 if index < 6 else 1 / 127.5 - 1
    assert torch.allclose(first["source"][0, 0], torch.full((16, 16), red))


def test_a_missing_object_is_a_clear_error(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects")
    dataset = EditExamples([Example("no/such.png", "x", "t.png", "direct")], lambda: store, 16)
    with pytest.raises(KeyError, match="no/such.png"):
        dataset[0]
    store.put("bad.png", b"not an image")
    dataset = EditExamples([Example("bad.png", "x", "t.png", "direct")], lambda: store, 16)
    with pytest.raises(ValueError, match="source image 'bad.png'.*undecodable"):
        dataset[0]


def test_pixel_values_survive_the_loader() -> None:
    array = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)
    tensor = to_training_tensor(Image.fromarray(array), 16)
    back = ((tensor.permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
    assert np.array_equal(back, array)


# ---- real-size data: aspect-ratio buckets, a learning-rate schedule -----------------------------


def test_buckets_keep_the_area_under_the_resolution_and_the_multiple() -> None:
    buckets = aspect_buckets(1024, 16)
    assert buckets[0] == (1024, 1024)
    assert (1184, 880) in buckets and (880, 1184) in buckets  # 4:3 and 3:4
    for width, height in buckets:
        assert width * height <= 1024 * 1024 and width % 16 == 0 and height % 16 == 0
    assert len(buckets) == len(set(buckets)) == 9
    assert buckets[nearest_bucket(1920, 1080, buckets)] == (1360, 768)  # 16:9
    assert buckets[nearest_bucket(512, 512, buckets)] == (1024, 1024)
    assert buckets[nearest_bucket(600, 1300, buckets)][0] < buckets[0][0]  # portrait
    assert aspect_buckets(32, 8)[0] == (32, 32)


def test_a_non_square_image_is_cover_resized_and_centre_cropped() -> None:
    image = Image.new("RGB", (300, 100), (255, 255, 255))
    image.paste((0, 0, 0), (140, 0, 160, 100))  # a dark band in the middle survives the crop
    tensor = to_training_tensor(image, (64, 32))
    assert tensor.shape == (3, 32, 64)
    assert tensor[:, :, 32].max().item() < -0.9 and tensor[:, :, 0].min().item() > 0.9


def test_bucketed_steps_take_one_bucket_each_and_are_a_function_of_the_step() -> None:
    # Pool: 6 examples in bucket 0 (square), 3 in bucket 1 (landscape); replay in bucket 0 only.
    pool_buckets = [0, 1, 0, 0, 1, 0, 0, 1, 0]
    kwargs = {
        "pool_size": 9, "replay_size": 2, "replay_fraction": 0.25, "micro_batch": 2,
        "accumulation": 1, "world_size": 2, "seed": 3, "max_steps": 12,
        "pool_buckets": pool_buckets, "replay_buckets": [0, 0],
    }  # fmt: skip
    ranks = [list(StepBatchSampler(rank=r, start_step=0, **kwargs)) for r in (0, 1)]
    buckets_seen = Counter()
    for step in range(12):
        batch = ranks[0][step] + ranks[1][step]
        kinds = {pool_buckets[i] if i < 9 else 0 for i in batch}
        assert len(kinds) == 1  # one size per step: every micro-batch stacks
        bucket = kinds.pop()
        buckets_seen[bucket] += 1
        replayed = [i for i in batch if i >= 9]
        assert len(replayed) == (1 if bucket == 0 else 0)  # replay only where it has examples
    assert set(buckets_seen) == {0, 1}
    # Resumed at step 5, the same batches as the uninterrupted run.
    resumed = list(StepBatchSampler(rank=0, start_step=5, **kwargs))
    assert resumed == ranks[0][5:]


def test_one_bucket_keeps_the_plain_order() -> None:
    kwargs = {
        "pool_size": 7, "replay_size": 0, "replay_fraction": 0.0, "micro_batch": 3,
        "accumulation": 2, "world_size": 1, "rank": 0, "seed": 1, "start_step": 0,
        "max_steps": 5,
    }  # fmt: skip
    plain = list(StepBatchSampler(**kwargs))
    assert list(StepBatchSampler(**kwargs, pool_buckets=[2] * 7)) == plain


def test_learning_rate_warms_up_then_holds_or_decays() -> None:
    def factors(schedule: str) -> list[float]:
        return [
            learning_rate_factor(step, warmup=3, max_steps=10, schedule=schedule)
            for step in range(10)
        ]

    assert factors("constant")[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors("constant")[4:] == [1.0] * 6
    cosine = factors("cosine")
    assert cosine[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a > b for a, b in zip(cosine[3:], cosine[4:], strict=False))
    assert cosine[-1] == pytest.approx(0.5 * (1 + np.cos(np.pi * 6 / 7)))
