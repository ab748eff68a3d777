"""The pipeline table: auto-detection, knob mapping and refusal, scheduler, dtype, model lookup."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler

from policies.editor import InstructionEditor
from policies.loading import resolve_model_dir, torch_dtype
from policies.pipelines import PIPELINES, pipeline_spec, resolve_knobs
from policies.settings import EditorSettings


def test_auto_reads_the_class_from_model_index(
    tiny_instruct_pix2pix: Path, tiny_flux_kontext: Path, tiny_qwen_image_edit: Path
) -> None:
    assert (
        pipeline_spec("auto", tiny_instruct_pix2pix).name
        == "StableDiffusionInstructPix2PixPipeline"
    )
    assert pipeline_spec("auto", tiny_flux_kontext).name == "FluxKontextPipeline"
    assert pipeline_spec("auto", tiny_qwen_image_edit).name == "QwenImageEditPipeline"


def test_unknown_pipeline_lists_the_supported_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="FluxKontextPipeline") as caught:
        pipeline_spec("StableDiffusionXLPipeline", tmp_path)
    assert "pipeline='StableDiffusionXLPipeline'" in str(caught.value)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    with pytest.raises(ValueError, match="KandinskyPipeline"):
        pipeline_spec("auto", tmp_path)


def test_auto_without_model_index_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model_index.json"):
        pipeline_spec("auto", tmp_path)


def test_knobs_map_to_each_pipelines_arguments() -> None:
    ip2p = PIPELINES["StableDiffusionInstructPix2PixPipeline"]
    qwen = PIPELINES["QwenImageEditPipeline"]
    knobs = resolve_knobs(ip2p, {"steps": 3, "guidance_scale": None, "image_guidance_scale": 2.0})
    # Unset guidance takes the pipeline's usual value; set ones are kept.
    assert knobs == {"steps": 3, "guidance_scale": 7.5, "image_guidance_scale": 2.0}
    assert ip2p.arguments["image_guidance_scale"] == "image_guidance_scale"
    # Qwen-Image-Edit's text guidance is its true classifier-free guidance scale.
    assert qwen.arguments["guidance_scale"] == "true_cfg_scale"
    assert resolve_knobs(qwen, {"steps": 2, "guidance_scale": None}) == {
        "steps": 2,
        "guidance_scale": 4.0,
    }


@pytest.mark.parametrize("name", ["FluxKontextPipeline", "QwenImageEditPipeline"])
def test_image_guidance_is_refused_where_there_is_none(name: str) -> None:
    with pytest.raises(ValueError, match=f"image_guidance_scale=1.5 is not supported by {name}"):
        resolve_knobs(PIPELINES[name], {"steps": 2, "image_guidance_scale": 1.5})


def test_unknown_knob_is_refused() -> None:
    with pytest.raises(ValueError, match="strength"):
        resolve_knobs(PIPELINES["FluxKontextPipeline"], {"steps": 2, "strength": 0.5})


def test_editor_refuses_an_unsupported_knob_before_loading(tiny_flux_kontext: Path) -> None:
    settings = EditorSettings(steps=2, image_guidance_scale=1.2)
    with pytest.raises(ValueError, match="image_guidance_scale=1.2 is not supported by Flux"):
        InstructionEditor.from_settings(settings, model=tiny_flux_kontext)


def test_scheduler_by_class_name(tiny_instruct_pix2pix: Path) -> None:
    default = InstructionEditor.from_settings(EditorSettings(steps=2), tiny_instruct_pix2pix)
    assert isinstance(default.pipeline.scheduler, EulerAncestralDiscreteScheduler)
    chosen = InstructionEditor.from_settings(
        EditorSettings(steps=2, scheduler="DPMSolverMultistepScheduler"), tiny_instruct_pix2pix
    )
    assert isinstance(chosen.pipeline.scheduler, DPMSolverMultistepScheduler)
    with pytest.raises(ValueError, match="scheduler='NoSuchScheduler'.*EulerDiscreteScheduler"):
        InstructionEditor.from_settings(
            EditorSettings(steps=2, scheduler="NoSuchScheduler"), tiny_instruct_pix2pix
        )


def test_dtype_names() -> None:
    assert torch_dtype("auto", "cpu") == torch.float32
    assert torch_dtype("auto", "cuda:0") == torch.bfloat16
    assert torch_dtype("float16", "cpu") == torch.float16
    with pytest.raises(ValueError, match="dtype='fp8'"):
        torch_dtype("fp8", "cpu")


def test_model_is_a_folder_or_a_cached_hub_id(tmp_path: Path, tiny_flux_kontext: Path) -> None:
    assert resolve_model_dir(str(tiny_flux_kontext)) == tiny_flux_kontext.resolve()
    # HF_HUB_OFFLINE is set for tests and the lookup is local-only anyway: never a download.
    with pytest.raises(ValueError, match="never downloads"):
        resolve_model_dir("someone/not-in-the-cache")
    with pytest.raises(ValueError, match="never downloads"):
        resolve_model_dir(tmp_path / "missing")
    with pytest.raises(ValueError, match="model is empty"):
        resolve_model_dir("")
