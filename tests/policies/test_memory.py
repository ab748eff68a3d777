"""The memory planner's arithmetic: exact byte counts where they are exact, and each memory
setting moving what it should."""

import pytest

from policies.architectures import Component, DenoiserShape, EditorArchitecture
from policies.memory import GIB, OVERHEAD_GIB, TrainingSetup, edit_worker, training_rank

# A 10 GiB-parameter transformer with two 1 GiB-parameter encoders.
P = GIB
ARCH = EditorArchitecture(
    name="test",
    pipeline="FluxKontextPipeline",
    components=(
        Component("transformer", 10 * P),
        Component("text_encoder", P),
        Component("vae", P // 8),
    ),
    denoiser="transformer",
    shape=DenoiserShape(
        "transformer", hidden=3072, blocks=50, pixels_per_token=256, text_tokens=512
    ),
    lora_features=1_000_000,
    vae_channels=256,
    default_max_pixels=1024 * 1024,
    train_resolution=1024,
)


def rank(stage: int, mode: str, offload: bool = False, ckpt: bool = True, gpus: int = 8):
    return training_rank(
        ARCH, TrainingSetup(stage, mode, offload, ckpt), gpus=gpus, resolution=512, micro_batch=1
    )


def test_full_training_bytes_per_parameter() -> None:
    zero2, zero3 = rank(2, "full"), rank(3, "full")
    # bf16 weights whole on every ZeRO-2 rank; bf16 grads and fp32 master + Adam partitioned.
    assert zero2.parts["weights"] == 20
    assert zero2.parts["gradients"] == 20 / 8 and zero2.parts["optimizer"] == 120 / 8
    # ZeRO-3 partitions the weights too (plus a few gathered blocks).
    assert zero3.parts["weights"] == pytest.approx(20 / 8 + 2 * 2 * 10 / 50)
    offloaded = rank(3, "full", offload=True)
    assert offloaded.parts["optimizer"] == 0 and offloaded.host_gib == pytest.approx(15 + 2.5)


def test_lora_trains_only_the_adapter_and_checkpointing_cuts_activations() -> None:
    lora = rank(2, "lora")
    assert lora.parts["optimizer"] == pytest.approx(12 * 8 * 1_000_000 / 8 / GIB)
    assert rank(2, "lora", ckpt=False).parts["activations"] > 10 * lora.parts["activations"]
    assert rank(3, "lora").total_gib < lora.total_gib


def test_an_encode_pass_larger_than_training_is_the_peak() -> None:
    heavy = EditorArchitecture(**{**ARCH.__dict__, "components": (
        Component("transformer", P), Component("text_encoder", 30 * P),
    )})  # fmt: skip
    estimate = training_rank(
        heavy, TrainingSetup(3, "lora", False, True), gpus=8, resolution=256, micro_batch=1
    )
    assert estimate.peak_before and estimate.total_gib == pytest.approx(60 + OVERHEAD_GIB)
    assert estimate.steady_gib < estimate.total_gib and not rank(2, "full").peak_before


def test_edit_worker_offload_and_vae_settings() -> None:
    none = edit_worker(ARCH, pixels=1024 * 1024, batch=4)
    model = edit_worker(ARCH, pixels=1024 * 1024, batch=4, offload="model")
    sequential = edit_worker(ARCH, pixels=1024 * 1024, batch=4, offload="sequential")
    assert none.parts["weights"] == pytest.approx(2 * (11 + 1 / 8))
    assert model.parts["weights"] == 20 and model.host_gib == none.parts["weights"]
    assert sequential.parts["weights"] < 1
    sliced = edit_worker(ARCH, pixels=1024 * 1024, batch=4, vae_slicing=True, vae_tiling=True)
    assert sliced.parts["vae decode"] == pytest.approx(none.parts["vae decode"] / 4 / 4)
    with pytest.raises(ValueError, match="offload='disk'"):
        edit_worker(ARCH, pixels=1, batch=1, offload="disk")
