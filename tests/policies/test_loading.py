"""Loading for real-size editors: the target dtype straight onto the device, offload and VAE
memory settings, per-pipeline defaults, the worker's device pinning (all on the tiny editors)."""

from pathlib import Path

import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from policies.devices import pin_cuda_device
from policies.editor import InstructionEditor
from policies.loading import load_arguments
from policies.pipelines import PIPELINES, resolve_knobs
from policies.settings import EditorSettings
from policies.types import EditRequest
from tests.policies.test_editor import assert_same_up_to_rounding

REQUEST = EditRequest(Image.new("RGB", (40, 24), (200, 40, 40)), "make it blue", seed=3)


def floating_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    tensors = [*module.parameters(), *module.buffers()]
    return [t for t in tensors if t.is_floating_point()]


def test_bf16_editors_load_every_weight_in_bf16_and_edit(tiny_editor_model: Path) -> None:
    editor = InstructionEditor.from_settings(
        EditorSettings(steps=2, max_pixels=64 * 64, dtype="bfloat16"), model=tiny_editor_model
    )
    modules = {
        name: component
        for name, component in editor.pipeline.components.items()
        if isinstance(component, torch.nn.Module)
    }
    assert {"vae", editor.spec.denoiser} <= set(modules)
    for name, module in modules.items():
        dtypes = {t.dtype for t in floating_tensors(module)}
        # Qwen2.5-VL keeps its rotary inverse frequencies in fp32 by design (a buffer).
        assert torch.bfloat16 in dtypes and dtypes <= {torch.bfloat16, torch.float32}, name
        parameters = {p.dtype for p in module.parameters() if p.is_floating_point()}
        assert parameters == {torch.bfloat16}, (name, parameters)
    (result,) = editor.edit([REQUEST])
    assert result.ok and result.image is not None and result.image.size == (40, 24)


def test_memory_arguments_load_shard_by_shard_in_the_target_dtype() -> None:
    cuda = load_arguments(torch.device("cuda", 3), torch.bfloat16, "none")
    assert cuda == {
        "dtype": torch.bfloat16,
        "low_cpu_mem_usage": True,
        "local_files_only": True,
        "device_map": "cuda",  # loaded under torch.cuda.device(3): straight onto cuda:3
    }
    offloaded = load_arguments(torch.device("cuda", 0), torch.bfloat16, "model")
    assert "device_map" not in offloaded and offloaded["low_cpu_mem_usage"] is True
    with pytest.raises(ValueError, match="offload='disk'"):
        load_arguments(torch.device("cpu"), torch.float32, "disk")
    with pytest.raises(ValidationError):
        EditorSettings(offload="disk")


def test_model_offload_and_vae_slicing_edit_the_same_pixels(tiny_instruct_pix2pix: Path) -> None:
    plain = InstructionEditor.from_settings(
        EditorSettings(steps=2, max_pixels=64 * 64), model=tiny_instruct_pix2pix
    )
    saving = InstructionEditor.from_settings(
        EditorSettings(
            steps=2, max_pixels=64 * 64, offload="model", vae_slicing=True, vae_tiling=True
        ),
        model=tiny_instruct_pix2pix,
    )
    pipeline = saving.pipeline
    # diffusers' model offload hooks are in place (on CPU they move nothing), and the VAE
    # decodes a batch one image at a time, in tiles.
    assert pipeline._offload_device is not None and hasattr(pipeline.unet, "_hf_hook")
    assert pipeline.vae.use_slicing and pipeline.vae.use_tiling
    requests = [REQUEST, EditRequest(REQUEST.image, "make it green", seed=4)]
    # Slicing decodes one image at a time: a batch of one sums in another order than of two.
    for a, b in zip(plain.edit(requests), saving.edit(requests), strict=True):
        assert_same_up_to_rounding(a.image, b.image)


def test_each_pipeline_has_its_model_card_defaults(tiny_instruct_pix2pix: Path) -> None:
    unset = {"steps": None, "guidance_scale": None}
    assert resolve_knobs(PIPELINES["FluxKontextPipeline"], unset) == {
        "steps": 28,
        "guidance_scale": 2.5,
    }
    assert resolve_knobs(PIPELINES["QwenImageEditPipeline"], unset) == {
        "steps": 50,
        "guidance_scale": 4.0,
    }
    assert resolve_knobs(PIPELINES["StableDiffusionInstructPix2PixPipeline"], unset)["steps"] == 20
    assert PIPELINES["StableDiffusionInstructPix2PixPipeline"].max_pixels == 512 * 512
    assert PIPELINES["FluxKontextPipeline"].max_pixels == 1024 * 1024
    editor = InstructionEditor.from_settings(EditorSettings(), model=tiny_instruct_pix2pix)
    assert editor.max_pixels == 512 * 512 and editor.knobs["steps"] == 20
    assert (
        InstructionEditor.from_settings(
            EditorSettings(max_pixels=4096, steps=3), model=tiny_instruct_pix2pix
        ).max_pixels
        == 4096
    )


@pytest.mark.parametrize("device", ["", "cpu", "cuda:0", "cuda:7", "cuda:x", "cuda"])
def test_pinning_a_device_changes_nothing_without_that_gpu(device: str) -> None:
    pin_cuda_device(device)  # no GPU here: every name is a no-op, never an error
    assert not torch.cuda.is_initialized()
