"""Tiny editors: reproducible builds, saved like real checkpoints, loaded by the real path."""

import json
from pathlib import Path

import pytest
import torch

from policies.editor import InstructionEditor
from policies.qwen_processor import QwenImageEditProcessor
from policies.settings import EditorSettings
from policies.tiny import TINY_BUILDERS, ensure_tiny_editor
from tests.fixtures.editors import TINY_IDS, TINY_PIPELINES


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


@pytest.mark.parametrize("name", TINY_PIPELINES, ids=TINY_IDS)
def test_builds_are_identical_byte_for_byte(name: str, tmp_path: Path) -> None:
    first = _files(TINY_BUILDERS[name](tmp_path / "a"))
    second = _files(TINY_BUILDERS[name](tmp_path / "b"))
    assert first.keys() == second.keys()
    assert [key for key in first if first[key] != second[key]] == []
    # A different seed gives different weights.
    third = _files(TINY_BUILDERS[name](tmp_path / "c", seed=1))
    assert any(first[key] != third[key] for key in first if key.endswith(".safetensors"))


@pytest.mark.parametrize(
    ("name", "multiple", "denoiser"),
    [
        ("StableDiffusionInstructPix2PixPipeline", 8, "unet"),
        ("FluxKontextPipeline", 16, "transformer"),
        ("QwenImageEditPipeline", 16, "transformer"),
    ],
    ids=TINY_IDS,
)
def test_loaded_through_from_pretrained(
    name: str,
    multiple: int,
    denoiser: str,
    request: pytest.FixtureRequest,
    tiny_editor_settings: EditorSettings,
) -> None:
    fixture = dict(
        zip(
            TINY_PIPELINES,
            ["tiny_instruct_pix2pix", "tiny_flux_kontext", "tiny_qwen_image_edit"],
            strict=True,
        )
    )
    folder: Path = request.getfixturevalue(fixture[name])
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == name
    assert (folder / denoiser / "diffusion_pytorch_model.safetensors").is_file()
    editor = InstructionEditor.from_settings(tiny_editor_settings, model=folder)
    assert type(editor.pipeline).__name__ == name
    # The real working-size multiples: VAE factor 8 (x 2 for the 2x2-patch transformers).
    assert editor.multiple == multiple
    modules = [m for m in editor.pipeline.components.values() if isinstance(m, torch.nn.Module)]
    # from_pretrained leaves every module in eval mode (no dropout: T5's would break seeding).
    assert modules and not any(m.training for m in modules)


def test_qwen_folder_names_the_stock_processor(
    tiny_qwen_image_edit: Path, tiny_editor_settings: EditorSettings
) -> None:
    # Like a real Qwen-Image-Edit checkpoint; the editor supplies the image-only processor.
    index = json.loads((tiny_qwen_image_edit / "model_index.json").read_text())
    assert index["processor"] == ["transformers", "Qwen2VLProcessor"]
    editor = InstructionEditor.from_settings(tiny_editor_settings, model=tiny_qwen_image_edit)
    assert isinstance(editor.pipeline.processor, QwenImageEditProcessor)


def test_ensure_builds_once(tmp_path: Path) -> None:
    folder = ensure_tiny_editor(tmp_path / "tiny", "FluxKontextPipeline")
    stamp = (folder / "model_index.json").stat().st_mtime_ns
    assert ensure_tiny_editor(tmp_path / "tiny", "FluxKontextPipeline") == folder
    assert (folder / "model_index.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]  # no staging folder left behind
    with pytest.raises(ValueError, match="no tiny builder"):
        ensure_tiny_editor(tmp_path / "other", "StableDiffusionXLPipeline")
