"""`editloop plan`: the memory plan from configs alone, on the tiny models and a released one."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from loop.cli.app import app
from loop.settings import get_settings


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDITLOOP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLUMNS", "140")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def plan(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["plan", *args])
    return result.exit_code, result.output


def test_plan_reads_a_tiny_editor_and_judge_folder(
    tiny_qwen_image_edit: Path, tiny_judge_dir: Path
) -> None:
    code, output = plan("--editor", str(tiny_qwen_image_edit), "--judge", str(tiny_judge_dir))
    assert code == 0, output
    assert "transformer (trained)" in output and "judge" in output
    for setup in ("Z2 full", "Z2 lora off ckpt", "Z3 full ckpt", "Z3 lora off ckpt"):
        assert setup in output
    assert "edit + judge, one GPU" in output and "yes" in output  # tiny: everything fits


def test_plan_on_a_released_architecture_says_what_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDITLOOP_TRAINING__RECIPE", '{"micro_batch_size": 1}')
    get_settings.cache_clear()
    code, output = plan("--editor", "flux-kontext", "--gpus", "8", "--gpu-memory", "80")
    assert code == 0, output
    assert "11.901 B" in output and "4.762 B" in output  # transformer, T5-XXL
    rows = {line.split("│")[1].strip(): line for line in output.splitlines() if "│ Z" in line}
    # Full fine-tuning at 1024² without checkpointing does not fit on 80 GiB; with it, it does.
    assert "no (+" in rows["Z2 full"] and rows["Z3 full ckpt"].rstrip("│ ").endswith("yes")


def test_plan_without_an_editor_is_a_usage_error() -> None:
    code, output = plan()
    assert code == 2 and "--editor" in output
    code, output = plan("--editor", "no-such-model-anywhere")
    assert code == 2 and "no-such-model-anywhere" in output
