"""Model sizes from configurations: the released architectures built on meta match their
published sizes, and a diffusers folder is read the same way (the tiny editors)."""

from pathlib import Path

import pytest

from policies.architectures import editor_architecture, judge_architecture

# Published parameter counts (model cards): FLUX.1 Kontext's transformer 12B, Qwen-Image's
# 20B, Qwen2.5-VL-7B-Instruct 8.29B ("7B"), T5 v1.1 XXL's encoder 4.76B, CLIP ViT-L/14's text
# tower 123M, Stable Diffusion 1.5's UNet 860M.
REAL = {
    "flux-kontext": ("transformer", 11.9e9, {"text_encoder_2": 4.76e9, "text_encoder": 123e6}),
    "qwen-image-edit": ("transformer", 20.4e9, {"text_encoder": 8.29e9}),
    "instruct-pix2pix": ("unet", 0.86e9, {"text_encoder": 123e6}),
}


@pytest.mark.parametrize("preset", sorted(REAL))
def test_released_editors_have_their_published_sizes(preset: str) -> None:
    denoiser, size, others = REAL[preset]
    arch = editor_architecture(preset)
    assert arch.denoiser == denoiser
    assert arch.denoiser_parameters == pytest.approx(size, rel=0.01)
    components = {c.name: c.parameters for c in arch.components}
    for name, expected in others.items():
        assert components[name] == pytest.approx(expected, rel=0.01), name
    assert "vae" in components and arch.frozen_parameters == sum(components.values()) - (
        arch.denoiser_parameters
    )


def test_the_released_judge_is_qwen25_vl_7b() -> None:
    judge = judge_architecture("qwen2.5-vl-7b")
    assert judge.parameters == pytest.approx(8.29e9, rel=0.005)
    assert (judge.layers, judge.kv_heads, judge.head_dim) == (28, 4, 128)


def test_lora_targets_reach_the_text_stream_and_feed_forward_layers() -> None:
    flux = editor_architecture("flux-kontext")
    # Rank 1: the sum of (in + out) features of every adapted layer. Attention alone (q, k, v,
    # out of 19 double and 38 single blocks) would be about a third of it.
    attention_only = 19 * 4 * 2 * 3072 + 38 * 3 * 2 * 3072
    assert flux.lora_parameters(1) > 2.5 * attention_only
    assert flux.lora_parameters(16) == 16 * flux.lora_parameters(1)


def test_a_diffusers_folder_is_read_from_its_configs(
    tiny_flux_kontext: Path, tiny_qwen_image_edit: Path, tiny_judge_dir: Path, tmp_path: Path
) -> None:
    kontext = editor_architecture(str(tiny_flux_kontext))
    assert {c.name for c in kontext.components} == {
        "text_encoder", "text_encoder_2", "transformer", "vae",
    }  # fmt: skip
    assert kontext.shape.kind == "transformer" and kontext.shape.pixels_per_token == 16 * 16
    qwen = editor_architecture(str(tiny_qwen_image_edit))
    assert qwen.denoiser_parameters > 0 and qwen.shape.blocks == 2
    assert judge_architecture(str(tiny_judge_dir)).layers == 2
    with pytest.raises(ValueError, match="no model_index.json"):
        editor_architecture(str(tmp_path))
    with pytest.raises(ValueError, match="not a Qwen2.5-VL folder"):
        judge_architecture(str(tmp_path))
