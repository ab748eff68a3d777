"""Building the judges from settings: shared weights, the tiny fallback, prompt files."""

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from rewards.factory import TINY_MODEL_DIR, judge_model_dir, load_judges, verdict_thresholds
from rewards.prompts import DIMENSIONS
from rewards.settings import JudgeSettings
from rewards.verdict import VerdictThresholds
from store.taxonomy import EditType

SMALL = {"min_pixels": 3136, "max_pixels": 3136, "max_new_tokens": 8}


def test_reflector_shares_the_judges_weights_by_default(tiny_judge_dir: Path) -> None:
    judges = load_judges(JudgeSettings(**SMALL, batch_size=3), tiny_judge_dir)
    assert judges.reflector.vlm is judges.scorer.vlm
    assert judges.scorer.batch_size == 3 and judges.scorer.bounds.max_pixels == 3136
    assert judges.scorer.prompts.origin == "editloop" and judges.reflector.retries == 1
    separate = load_judges(
        JudgeSettings(**SMALL, reflector_model=str(tiny_judge_dir)), tiny_judge_dir
    )
    assert separate.reflector.vlm is not separate.scorer.vlm


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
