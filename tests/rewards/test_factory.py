"""Building the judges from settings: shared weights, the tiny fallback, prompt files."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from rewards.factory import (
    TINY_MODEL_DIR,
    judge_model_dir,
    load_judges,
    reflector_problem,
    verdict_thresholds,
)
from rewards.prompts import DIMENSIONS
from rewards.settings import JudgeSettings
from rewards.tiny import TINY_MARKER
from rewards.verdict import VerdictThresholds
from rewards.vlm import load_vision_language_model
from store.taxonomy import EditType

SMALL = {"min_pixels": 3136, "max_pixels": 3136, "max_new_tokens": 8}


def test_reflector_shares_the_judges_weights_by_default(
    tiny_judge_dir: Path, tmp_path: Path
) -> None:
    judges = load_judges(JudgeSettings(**SMALL, batch_size=3), tiny_judge_dir)
    assert judges.reflector is not None and judges.reflector.vlm is judges.scorer.vlm
    assert judges.scorer.batch_size == 3 and judges.scorer.bounds.max_pixels == 3136
    assert judges.scorer.prompts.origin == "editloop" and judges.reflector.retries == 1
    # The judge's own folder as the reflector: still one copy of the weights.
    same = load_judges(JudgeSettings(**SMALL, reflector_model=str(tiny_judge_dir)), tiny_judge_dir)
    assert same.reflector is not None and same.reflector.vlm is same.scorer.vlm
    other = shutil.copytree(tiny_judge_dir, tmp_path / "reflector")
    separate = load_judges(JudgeSettings(**SMALL, reflector_model=str(other)), tiny_judge_dir)
    assert separate.reflector is not None and separate.reflector.vlm is not separate.scorer.vlm
    # The trainer's gate scores only: no reflector is loaded.
    assert (
        load_judges(JudgeSettings(**SMALL), tiny_judge_dir, with_reflector=False).reflector is None
    )


def test_a_real_judge_without_a_reflector_model_is_refused(
    tiny_judge_dir: Path, tmp_path: Path
) -> None:
    real = tmp_path / "ImgEdit_judge"  # any judge checkpoint but editloop's tiny random one
    assert reflector_problem(JudgeSettings(model=str(real))) is None  # no checkpoint: the
    real.mkdir()  # loader says so, with its own fix
    (real / "config.json").write_text("{}")
    settings = JudgeSettings(model=str(real))
    problem = reflector_problem(settings)
    assert problem is not None
    assert "EDITLOOP_JUDGE__REFLECTOR_MODEL" in problem and "Qwen2.5-VL-Instruct" in problem
    with pytest.raises(ValueError, match="REFLECTOR_MODEL"):
        load_judges(settings, real)  # refused before any weight is read (there are none)
    assert reflector_problem(JudgeSettings(model=str(real), reflector_model="/m/instruct")) is None
    assert reflector_problem(JudgeSettings(model=str(real), backend="shapes")) is None
    assert reflector_problem(JudgeSettings()) is None  # the tiny default
    assert (tiny_judge_dir / TINY_MARKER).is_file()
    assert reflector_problem(JudgeSettings(model=str(tiny_judge_dir))) is None


def test_the_judge_loads_in_bf16_when_asked(tiny_judge_dir: Path) -> None:
    vlm = load_vision_language_model(tiny_judge_dir, "cpu", "bfloat16")
    assert {p.dtype for p in vlm.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in load_vision_language_model(tiny_judge_dir).model.parameters()} == {
        torch.float32
    }
    with pytest.raises(ValueError, match="dtype='int8'"):
        load_vision_language_model(tiny_judge_dir, "cpu", "int8")


def test_tiny_model_is_built_once_under_the_data_dir(tmp_path: Path) -> None:
    path = judge_model_dir(JudgeSettings(), tmp_path)
    assert path == tmp_path / TINY_MODEL_DIR and (path / "config.json").is_file()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert judge_model_dir(JudgeSettings(), tmp_path) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no staging left behind
    assert judge_model_dir(JudgeSettings(model="/models/judge"), tmp_path) == Path("/models/judge")


def test_prompt_file_is_read_before_the_weights(tmp_path: Path) -> None:
    bad = tmp_path / "prompts.json"
    bad.write_text(json.dumps({"add": "no placeholder"}))
    with pytest.raises(ValueError, match="placeholder"):
        load_judges(JudgeSettings(prompts_file=str(bad)), tmp_path / "no-model-here")
    good = tmp_path / "good.json"
    names = DIMENSIONS[EditType.ADD]
    good.write_text(json.dumps({"add": "<edit_prompt> " + " ".join(names)}))
    with pytest.raises(FileNotFoundError, match="not a Qwen2.5-VL checkpoint"):
        load_judges(JudgeSettings(prompts_file=str(good)), tmp_path / "no-model-here")


def test_settings_map_to_thresholds_and_are_checked() -> None:
    settings = JudgeSettings(success_min_overall=3.5, noop_max_change=0.05)
    assert verdict_thresholds(settings) == VerdictThresholds(3.5, 3.0, 0.05)
    with pytest.raises(ValidationError, match="min_pixels=5000 is larger than max_pixels=4000"):
        JudgeSettings(min_pixels=5000, max_pixels=4000)
    with pytest.raises(ValidationError):
        JudgeSettings(success_min_overall=7)
