"""`editloop judge` for a one-off pair: output on the tiny judge, and clean user errors."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from loop.cli.app import app
from loop.cli.judge import report
from loop.settings import get_settings
from rewards.types import ParseStatus, Reflection, ReflectionTag, Scores
from rewards.verdict import decide_verdict
from store.taxonomy import EditType


@pytest.fixture()
def images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    # Small pixel bounds and answers keep the tiny judge fast; the data dir is the test's own.
    monkeypatch.setenv("EDITLOOP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EDITLOOP_JUDGE__MIN_PIXELS", "3136")
    monkeypatch.setenv("EDITLOOP_JUDGE__MAX_PIXELS", "3136")
    monkeypatch.setenv("EDITLOOP_JUDGE__MAX_NEW_TOKENS", "8")
    monkeypatch.setenv("EDITLOOP_JUDGE__REFLECTOR_MAX_NEW_TOKENS", "8")
    get_settings.cache_clear()
    source, edited = tmp_path / "source.png", tmp_path / "edited.png"
    Image.new("RGB", (64, 64), (200, 0, 0)).save(source)
    Image.new("RGB", (64, 64), (0, 0, 200)).save(edited)
    yield source, edited
    get_settings.cache_clear()


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["judge", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result.exit_code, result.output


def test_judges_a_pair_on_the_tiny_model(images: tuple[Path, Path], tiny_judge_dir: Path) -> None:
    source, edited = images
    code, out = run(str(source), str(edited), "make it blue", "--type", "adjust",
                    "--model", str(tiny_judge_dir))  # fmt: skip
    assert code == 0, out
    # Random weights: unparseable scores, an invalid reflection, and so a Failed verdict.
    assert "(type alter, prompts: editloop)" in out
    assert "scores      unparseable: missing Prompt Compliance" in out
    assert "reflector   " in out and ": Invalid after 2 tries" in out
    assert "verdict     Failed (unparseable:" in out
    assert "raw judge output: '" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{dir}/missing.png", "{dir}/edited.png"], "error: source image {dir}/missing.png: "),
        (["{dir}/garbage", "{dir}/edited.png"], "error: source image {dir}/garbage: undecodable"),
        (["{dir}/source.png", "{dir}/empty"], "error: edited image {dir}/empty: empty"),
        (["{dir}/source.png", "{dir}/edited.png", "--type", "recolor"],
         "error: unknown edit type 'recolor'"),
        (["{dir}/source.png", "{dir}/edited.png", "--model", "{dir}/nowhere"],
         "error: {dir}/nowhere: not a Qwen2.5-VL checkpoint"),
        (["{dir}/source.png", "{dir}/edited.png", "--prompts", "{dir}/garbage"],
         "error: prompts file {dir}/garbage: cannot read it as JSON"),
    ],
)  # fmt: skip
def test_user_errors_exit_1_without_traceback(
    images: tuple[Path, Path], args: list[str], message: str
) -> None:
    folder = images[0].parent
    (folder / "garbage").write_bytes(b"not an image at all")
    (folder / "empty").write_bytes(b"")
    code, out = run(*(a.format(dir=folder) for a in args), "make it blue")
    assert code == 1
    assert message.format(dir=folder) in out
    assert "Traceback" not in out


def test_empty_instruction(images: tuple[Path, Path]) -> None:
    source, edited = images
    code, out = run(str(source), str(edited), "   ")
    assert code == 1 and "error: the instruction is empty" in out


def test_report_of_a_reflection() -> None:
    names = ("Prompt Compliance", "Visual Seamlessness", "Physical & Detail Fidelity")
    scores = Scores(4.0, 3.0, 3.0, 10 / 3, names, ParseStatus.OK, "Prompt Compliance: 4", 0.2, "j")
    reflection = Reflection(
        ReflectionTag.REFLECTION, "make the sky darker", "too light", "a dark\r\x1b[2J sky",
        "<#Think> too light <#Reflection> make the sky darker", 1, "r",
    )  # fmt: skip
    decision = decide_verdict(scores, reflection, tries_left=1, change=0.4)
    text = report(EditType.ALTER, scores, reflection, 0.4, decision, "editloop")
    assert "  Prompt Compliance                    4.00" in text
    assert "  overall                              3.33  (ok)" in text
    assert "reflector   r: Reflection after 1 try" in text
    assert "  new instruction: make the sky darker" in text
    assert "verdict     Reflection (reflect: overall 3.33 < 4)" in text
    assert "  edit again with: make the sky darker" in text
    assert "  target: a dark\\r\\x1b[2J sky" in text  # control characters shown escaped
