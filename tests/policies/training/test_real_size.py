"""What real-size training needs, through the same code on the tiny editors (CPU, one rank):
every part loaded in the compute dtype, the denoiser built partitioned under ZeRO-3, gradient
checkpointing, the frozen encoders' outputs cached and the encoders freed, and saving under
ZeRO-3 without gathering every weight (a LoRA gathers its adapter alone)."""

import gc
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import deepspeed
import pytest
import torch

from policies.checkpoints import LORA_WEIGHTS_FILE, load_weights_in_place
from policies.editor import InstructionEditor
from policies.pixel_config import PixelEditorConfig
from policies.pixel_editor import PixelEditorModel
from policies.settings import EditorSettings
from policies.training.checkpointing import save_final
from policies.training.config import TrainConfig, deepspeed_config
from policies.training.data import EditExamples, read_manifest
from policies.training.distributed import setup_distributed
from policies.training.encodings import EncodedExamples, EncodingCache, precompute_encodings
from policies.training.objectives import build_objective
from policies.training.objectives.pixel import PixelObjective
from policies.training.recipe import partitioned_fraction, train
from store.objects import LocalStore
from tests.fixtures.services import free_port
from tests.fixtures.training import TINY_RECIPE, put_fixed_set

CPU = torch.device("cpu")
# DeepSpeed's ZeRO-3 calls a deprecated torch collective.
pytestmark = pytest.mark.filterwarnings("ignore:.*all_gather_into_tensor:FutureWarning")
MODELS = {
    "ip2p": "tiny_instruct_pix2pix",
    "kontext": "tiny_flux_kontext",
    "qwen": "tiny_qwen_image_edit",
}


@pytest.fixture(params=sorted(MODELS))
def model(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(MODELS[request.param])


@pytest.fixture(scope="module")
def one_rank() -> Iterator[None]:
    """A world of one (gloo), set up once and kept (as in test_flow: DeepSpeed caches groups)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {
            "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
        }.items():  # fmt: skip
            patch.setenv(name, value)
        setup_distributed()
        yield


@pytest.fixture(scope="module")
def four_edits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    data_dir = tmp_path_factory.mktemp("real-size-data")
    return data_dir, put_fixed_set(LocalStore(data_dir / "objects"), data_dir / "m.jsonl", 4)


def config_for(model: Path, **fields: Any) -> TrainConfig:
    return TrainConfig(model=str(model), manifest="-", output_dir="-", resolution=32, **fields)


def images(size: int = 2, side: int = 32) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(7)
    pixels = torch.rand(2, size, 3, side, side, generator=generator) * 2 - 1
    return {"source": pixels[0], "target": pixels[1], "instruction": ["add a red circle"] * size}


# ---- dtype ---------------------------------------------------------------------------------


def test_every_part_loads_in_the_compute_dtype(model: Path) -> None:
    objective = build_objective(config_for(model), CPU, torch.bfloat16)
    trained = objective.trainable()
    assert {p.dtype for p in trained.parameters()} == {torch.bfloat16}
    frozen = [getattr(objective, "vae", None) or objective.pipeline.vae]  # type: ignore[attr-defined]
    for module in frozen:
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        loss = objective.loss(trained, images(), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)


def test_the_pixel_objective_feeds_a_bf16_model_bf16_inputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    PixelEditorModel(
        PixelEditorConfig(block_out_channels=(8, 16), embedding_dim=16)
    ).save_pretrained(tmp_path / "base")
    objective = PixelObjective(
        TrainConfig(model=str(tmp_path / "base"), manifest="-", output_dir="-"), CPU, torch.bfloat16
    )
    assert {p.dtype for p in objective.trainable().parameters()} == {torch.bfloat16}
    batch = {**images(side=16), "instruction": ["make the background blue"] * 2}  # fp32 images
    loss = objective.loss(objective.trainable(), batch, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)


# ---- gradient checkpointing ----------------------------------------------------------------


def test_checkpointing_is_on_for_transformers_and_changes_no_gradient(
    tiny_flux_kontext: Path, tiny_instruct_pix2pix: Path
) -> None:
    def gradients(setting: str) -> tuple[bool, list[torch.Tensor]]:
        torch.manual_seed(0)
        objective = build_objective(
            config_for(tiny_flux_kontext, gradient_checkpointing=setting), CPU, torch.float32
        )
        module = objective.trainable().train()
        objective.loss(module, images(), torch.Generator().manual_seed(1)).backward()
        return module.is_gradient_checkpointing, [p.grad.clone() for p in module.parameters()]

    on, with_checkpoints = gradients("auto")
    off, without = gradients("off")
    assert on and not off
    for a, b in zip(with_checkpoints, without, strict=True):
        torch.testing.assert_close(a, b)
    ip2p = build_objective(config_for(tiny_instruct_pix2pix), CPU, torch.float32)
    assert not ip2p.trainable().is_gradient_checkpointing  # a UNet: off unless asked
    forced = build_objective(
        config_for(tiny_instruct_pix2pix, gradient_checkpointing="on"), CPU, torch.float32
    )
    assert forced.trainable().is_gradient_checkpointing


# ---- ZeRO-3: built partitioned, saved without gathering everything -------------------------


@contextmanager
def gathered_calls() -> Iterator[list[list[torch.nn.Parameter]]]:
    """Every `deepspeed.zero.GatheredParameters` call's parameters, the real one still used."""
    calls: list[list[torch.nn.Parameter]] = []
    real = deepspeed.zero.GatheredParameters

    def spy(params: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(list(params) if not isinstance(params, torch.nn.Parameter) else [params])
        return real(params, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(deepspeed.zero, "GatheredParameters", spy)
        yield calls


def zero3_objective(model: Path, **fields: Any) -> Any:
    config = config_for(model, zero_stage=3, **fields)
    ds_config = deepspeed_config(config, precision="fp32")
    objective = build_objective(
        config, CPU, torch.float32, lambda: deepspeed.zero.Init(config_dict_or_path=ds_config)
    )
    return config, ds_config, objective


def engine_of(objective: Any, ds_config: dict) -> Any:
    module = objective.trainable()
    parameters = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-3)
    engine, *_ = deepspeed.initialize(
        model=module, model_parameters=parameters, optimizer=optimizer, config=ds_config,
        dist_init_required=False,
    )  # fmt: skip
    return engine


def test_zero3_builds_the_denoiser_partitioned_and_fills_it_with_the_weights(
    one_rank: None, tiny_instruct_pix2pix: Path
) -> None:
    _, _, objective = zero3_objective(tiny_instruct_pix2pix)
    unet = objective.trainable()
    base = build_objective(config_for(tiny_instruct_pix2pix), CPU, torch.float32).trainable()
    expected = dict(base.named_parameters())
    # Before any engine: every parameter is a partition, its tensor an empty placeholder.
    assert partitioned_fraction(unet) == 1.0
    for name, parameter in unet.named_parameters():
        assert parameter.numel() == 0 and tuple(parameter.ds_shape) == expected[name].shape, name
    with deepspeed.zero.GatheredParameters(list(unet.parameters()), modifier_rank=None):
        for name, parameter in unet.named_parameters():
            assert torch.equal(parameter, expected[name]), name


def test_zero3_lora_gathers_only_the_adapter_to_save(
    one_rank: None, tiny_instruct_pix2pix: Path, tmp_path: Path
) -> None:
    _, ds_config, objective = zero3_objective(tiny_instruct_pix2pix, mode="lora", lora_rank=4)
    module = objective.trainable()
    with torch.no_grad():  # a trained adapter: B away from its zero start
        for name, parameter in module.named_parameters():
            if "lora_B" in name:
                parameter.ds_tensor.fill_(0.01) if hasattr(
                    parameter, "ds_tensor"
                ) else parameter.fill_(0.01)
    engine = engine_of(objective, ds_config)
    adapter = {id(p) for p in module.parameters() if p.requires_grad}
    assert adapter and len(adapter) < len(list(module.parameters()))
    with gathered_calls() as calls:
        save_final(engine, objective, module, 3, tmp_path / "final", True)
    gathered = {id(p) for call in calls for p in call}
    assert gathered == adapter  # the frozen base was never gathered
    assert (tmp_path / "final" / LORA_WEIGHTS_FILE).is_file()
    editor = InstructionEditor.from_settings(
        EditorSettings(steps=2, max_pixels=64 * 64), model=tiny_instruct_pix2pix
    )
    editor.use_checkpoint("saved", tmp_path / "final")  # loads, every adapter layer fits


def test_zero3_full_weights_are_consolidated_one_layer_at_a_time(
    one_rank: None, tiny_instruct_pix2pix: Path, tmp_path: Path
) -> None:
    _, ds_config, objective = zero3_objective(tiny_instruct_pix2pix)
    module = objective.trainable()
    engine = engine_of(objective, ds_config)
    largest_layer = max(len(list(layer.parameters(recurse=False))) for layer in module.modules())
    with gathered_calls() as calls:
        save_final(engine, objective, module, 3, tmp_path / "final", True)
    assert calls and max(len(call) for call in calls) <= largest_layer
    assert len(list(module.parameters())) > largest_layer
    # The saved folder is the editor's full checkpoint, with the (untrained) base weights.
    base = build_objective(config_for(tiny_instruct_pix2pix), CPU, torch.float32).trainable()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    load_weights_in_place(base, tmp_path / "final" / "unet")
    for key, value in base.state_dict().items():
        assert torch.equal(value, before[key]), key


# ---- the encoding cache --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ip2p", "qwen"])
def test_encodings_are_computed_once_and_train_as_the_raw_images_do(
    name: str, request: pytest.FixtureRequest, four_edits: tuple[Path, Path], tmp_path: Path
) -> None:
    model = request.getfixturevalue(MODELS[name])
    data_dir, manifest = four_edits
    objective = build_objective(config_for(model, drop_text=0.5), CPU, torch.float32)
    dataset = EditExamples(read_manifest(manifest), lambda: LocalStore(data_dir / "objects"), 32)
    cache = EncodingCache(tmp_path / "encodings")

    def encode() -> Any:
        return precompute_encodings(
            objective, dataset, cache, fingerprint="f", rank=0, world_size=1, batch_size=3,
            index_dir=tmp_path / "index", barrier=lambda: None,
        )  # fmt: skip

    first, second = encode(), encode()
    assert (first.computed, first.reused) == (4, 0)
    assert (second.computed, second.reused) == (0, 4)  # the second epoch, or a resumed run
    assert first.keys == second.keys and len(set(first.keys)) == 4
    module = objective.trainable().eval()
    items = [dataset[i] for i in range(4)]
    raw = {
        "source": torch.stack([item["source"] for item in items]),
        "target": torch.stack([item["target"] for item in items]),
        "instruction": [item["instruction"] for item in items],
    }
    with torch.no_grad():
        expected = objective.loss(module, raw, torch.Generator().manual_seed(5))
    vae = weakref.ref(objective.vae if name == "ip2p" else objective.pipeline.vae)
    objective.free_encoders()
    gc.collect()
    assert vae() is None  # the frozen encoders are gone
    encoded = EncodedExamples(cache, first.keys)
    batch = objective.collate([encoded[i] for i in range(4)])
    with torch.no_grad():
        cached = objective.loss_encoded(module, batch, torch.Generator().manual_seed(5))
    torch.testing.assert_close(cached, expected, rtol=1e-4, atol=1e-6)


def test_a_run_encodes_each_example_once_and_a_second_run_reuses_them(
    one_rank: None, tiny_flux_kontext: Path, four_edits: tuple[Path, Path], tmp_path: Path
) -> None:
    data_dir, manifest = four_edits
    shared = tmp_path / "encodings"

    def run(name: str) -> dict[str, float]:
        config = TrainConfig(
            **(TINY_RECIPE | {"micro_batch_size": 2}), model=str(tiny_flux_kontext),
            manifest=str(manifest), output_dir=str(tmp_path / name), max_steps=4, save_every=0,
            encoding_cache=str(shared),
        )  # fmt: skip
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            result = train(config, lambda: LocalStore(data_dir / "objects"), log_fn=lambda _: None)
        finally:
            torch.set_num_threads(threads)
        return result.metrics

    # 4 steps of 2: every example twice (two epochs), encoded once.
    first = run("first")
    assert (first["train/encodings_computed"], first["train/encodings_reused"]) == (4, 0)
    assert first["train/gradient_checkpointing"] == 1.0 and first["train/buckets"] == 1
    second = run("second")
    assert (second["train/encodings_computed"], second["train/encodings_reused"]) == (0, 4)
