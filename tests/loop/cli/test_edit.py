"""`editloop edit`: a one-off edit through the real command, and clean errors for bad input."""

from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from loop.cli.app import app
from loop.settings import get_settings
from store.images import encode_png


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "source.png"
    path.write_bytes(encode_png(Image.new("RGB", (60, 36), (30, 160, 90))))
    return path


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDITLOOP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EDITLOOP_EDITOR__MAX_PIXELS", str(64 * 64))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def run(*args: str) -> tuple[int, str]:
    """Exit code and output, with rich's error box and line wrapping flattened to single spaces."""
    result = CliRunner().invoke(app, ["edit", *args])
    return result.exit_code, " ".join(result.output.replace("│", " ").split())


def test_edit_writes_the_png_at_the_source_size(
    source: Path, tiny_instruct_pix2pix: Path, tmp_path: Path
) -> None:
    outputs = [tmp_path / "a.png", tmp_path / "b.png"]
    for output in outputs:
        code, text = run(
            str(source), "make it blue", "--model", str(tiny_instruct_pix2pix),
            "--seed", "5", "--steps", "2", "-o", str(output),
        )  # fmt: skip
        assert code == 0, text
        assert f"wrote {output} (60x36, StableDiffusionInstructPix2PixPipeline" in text
    assert Image.open(outputs[0]).size == (60, 36)
    # Same model, image, instruction, seed and knobs: the same file.
    assert outputs[0].read_bytes() == outputs[1].read_bytes()


def test_checkpoint_option(
    source: Path, tiny_instruct_pix2pix: Path, tiny_lora_checkpoint: Path, tmp_path: Path
) -> None:
    common = [str(source), "make it blue", "--model", str(tiny_instruct_pix2pix), "--steps", "2"]
    assert run(*common, "-o", str(tmp_path / "base.png"))[0] == 0
    code, text = run(
        *common, "--checkpoint", str(tiny_lora_checkpoint), "-o", str(tmp_path / "lora.png")
    )
    assert code == 0, text
    assert f"checkpoint {tiny_lora_checkpoint.name}" in text
    assert (tmp_path / "base.png").read_bytes() != (tmp_path / "lora.png").read_bytes()


@pytest.mark.parametrize(
    ("make_args", "code", "message"),
    [
        (
            lambda s, m, o: [str(s.parent / "nope.png"), "x", "--model", m, "-o", o],
            2,
            "No such file",
        ),
        (
            lambda s, m, o: [str(s.with_name("bad.png")), "x", "--model", m, "-o", o],
            2,
            "undecodable",
        ),
        (lambda s, m, o: [str(s), "  ", "--model", m, "-o", o], 2, "instruction is empty"),
        (lambda s, m, o: [str(s), "x", "--model", m, "-o", o + ".jpg"], 2, "name it *.png"),
        (lambda s, m, o: [str(s), "x", "--model", m + "-missing", "-o", o], 1, "never downloads"),
        (lambda s, m, o: [str(s), "x", "-o", o], 2, "no model"),
        (
            lambda s, m, o: [str(s), "x", "--model", m, "--image-guidance", "1.5", "-o", o],
            1,
            "image_guidance_scale=1.5 is not supported by FluxKontextPipeline",
        ),
    ],
    ids=[
        "missing-image",
        "undecodable",
        "empty-instruction",
        "not-png",
        "missing-model",
        "no-model",
        "unsupported-knob",
    ],
)
def test_user_errors_are_messages_not_tracebacks(
    make_args, code: int, message: str, source: Path, tiny_flux_kontext: Path, tmp_path: Path
) -> None:
    source.with_name("bad.png").write_bytes(b"not an image at all")
    output = tmp_path / "out.png"
    exit_code, text = run(*make_args(source, str(tiny_flux_kontext), str(output)))
    assert exit_code == code
    assert message in text
    assert "Traceback" not in text
    assert not output.exists()
