"""The composition root picks the editor family from the model folder and the judges by backend."""

from pathlib import Path

import pytest
import torch

from loop.runtime import (
    build_worker_context,
    judge_settings,
    load_editor,
    load_judges_at,
    load_model_judges,
)
from loop.settings import Settings, SettingsError
from policies.editor import BASE_VERSION
from policies.pixel_config import PixelEditorConfig
from policies.pixel_editor import PixelEditor, PixelEditorModel
from policies.settings import EditorSettings
from rewards.settings import JudgeSettings
from rewards.shapes_judge import ShapesReflector, ShapesScorer
from store.models import Checkpoint
from store.objects import LocalStore

SMALL = PixelEditorConfig(block_out_channels=(8, 16, 16), embedding_dim=16)


def save_pixel_editor(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    PixelEditorModel(SMALL).save_pretrained(folder)
    return folder


def test_a_pixel_editor_folder_loads_the_pixel_editor_and_its_checkpoints(tmp_path: Path) -> None:
    base = save_pixel_editor(tmp_path / "base", seed=0)
    settings = Settings(
        data_dir=tmp_path / "data", editor=EditorSettings(model=str(base), batch_size=7)
    )
    store = LocalStore(tmp_path / "objects")
    editor = load_editor(settings, store, None, None)
    assert isinstance(editor, PixelEditor)
    assert editor.version == BASE_VERSION and editor.batch_size == 7
    # A pixel checkpoint is a whole editor folder in the store, fetched and loaded in its stead.
    tuned = save_pixel_editor(tmp_path / "tuned", seed=1)
    for path in tuned.rglob("*"):
        if path.is_file():
            store.put(f"checkpoints/v1/{path.relative_to(tuned).as_posix()}", path.read_bytes())
    checkpoint = Checkpoint(version="v1", object_prefix="checkpoints/v1")
    swapped = load_editor(settings, store, editor, checkpoint)
    assert isinstance(swapped, PixelEditor) and swapped.version == "v1"
    before = editor.model.word_embedding.weight
    assert not torch.equal(swapped.model.word_embedding.weight, before)
    assert torch.equal(
        load_editor(settings, store, swapped, None).model.word_embedding.weight, before
    )


def test_the_shapes_backend_gives_the_exact_judges(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, judge=JudgeSettings(backend="shapes"))
    scorer, reflector = load_model_judges(settings)
    assert isinstance(scorer, ShapesScorer) and isinstance(reflector, ShapesReflector)


def test_a_worker_refuses_to_start_with_a_judge_that_cannot_reflect(tmp_path: Path) -> None:
    (tmp_path / "judge").mkdir()
    (tmp_path / "judge" / "config.json").write_text("{}")  # a real judge's folder
    settings = Settings(data_dir=tmp_path, judge=JudgeSettings(model=str(tmp_path / "judge")))
    with pytest.raises(SettingsError, match="EDITLOOP_JUDGE__REFLECTOR_MODEL"):
        build_worker_context(settings)  # before the database, the store or any model


def test_the_judge_runs_on_the_editor_s_device_unless_it_names_its_own(tmp_path: Path) -> None:
    editor = EditorSettings(device="cuda:2")
    assert judge_settings(Settings(data_dir=tmp_path, editor=editor)).device == "cuda:2"
    own = Settings(data_dir=tmp_path, editor=editor, judge=JudgeSettings(device="cuda:3"))
    assert judge_settings(own).device == "cuda:3"


def test_the_gate_loads_no_reflector(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, judge=JudgeSettings(backend="shapes"))
    scorer, reflector = load_model_judges(settings, with_reflector=False)
    assert isinstance(scorer, ShapesScorer) and reflector is None


def test_promoted_judge_and_reflector_checkpoints_replace_the_configured_models(
    tmp_path: Path, tiny_judge_dir: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data", judge=JudgeSettings(model=str(tiny_judge_dir)))
    store = LocalStore(tmp_path / "objects")
    for path in tiny_judge_dir.rglob("*"):
        if path.is_file():
            key = path.relative_to(tiny_judge_dir).as_posix()
            for version in ("judge-1", "reflector-1"):
                store.put(f"checkpoints/{version}/{key}", path.read_bytes())
    judge = Checkpoint(id=1, version="judge-1", object_prefix="checkpoints/judge-1")
    reflector = Checkpoint(id=2, version="reflector-1", object_prefix="checkpoints/reflector-1")
    scorer, kept = load_judges_at(settings, store, judge, None)
    # The fine-tuned judge scores; the reflector stays the configured model, not the judge.
    assert scorer.vlm.name.endswith("checkpoints/judge-1")  # type: ignore[attr-defined]
    assert kept is not None and kept.vlm.name == str(tiny_judge_dir)  # type: ignore[attr-defined]
    scorer, swapped = load_judges_at(settings, store, None, reflector)
    assert scorer.vlm.name == str(tiny_judge_dir)  # type: ignore[attr-defined]
    assert swapped.vlm.name.endswith("checkpoints/reflector-1")  # type: ignore[union-attr]
