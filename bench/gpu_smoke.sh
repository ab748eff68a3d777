#!/usr/bin/env bash
# GPU smoke test of the real-size code paths, with tiny models only (no network needed).
#
#   bench/gpu_smoke.sh [OUT_DIR]          # one CUDA GPU; about 5 minutes
#
# 1. bf16 edits of the three pipelines (InstructPix2Pix, FLUX.1 Kontext, Qwen-Image-Edit),
#    loaded straight onto the GPU, then again with model CPU offload and VAE slicing/tiling;
# 2. a judge batch (the tiny Qwen2.5-VL in bf16);
# 3. a bf16 training run (2 steps, NCCL, under torchrun) of every objective (ip2p, flow on
#    Kontext and on Qwen-Image-Edit, pixel) under ZeRO-2 and ZeRO-3, each saving its checkpoint.
# Prints one line per check (wall time, peak GPU memory, dtype) and exits non-zero on the first
# failure. Everything is written under OUT_DIR (default: a temporary folder).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
OUT="${1:-$(mktemp -d -t editloop-gpu-smoke-XXXXXX)}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 EDITLOOP_DATA_DIR="$OUT/data"
echo "editloop GPU smoke test: $(date -u +%FT%TZ), output in $OUT"
"$PYTHON" - <<'EOF'
import torch
assert torch.cuda.is_available(), "no CUDA GPU visible: this smoke test needs one"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}, "
      f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
EOF

# ---- 1-2: inference and the judge, in one process -------------------------------------------
"$PYTHON" - "$OUT" <<'EOF'
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from policies.editor import InstructionEditor
from policies.settings import EditorSettings
from policies.tiny import TINY_BUILDERS
from policies.types import EditRequest
from rewards.factory import load_judges
from rewards.settings import JudgeSettings
from rewards.tiny import build_tiny_qwen_vl
from rewards.types import JudgeItem
from store.taxonomy import EditType

out = Path(sys.argv[1])
source = Image.new("RGB", (96, 64), (200, 60, 40))
requests = [EditRequest(source, "make it blue", seed=s) for s in range(4)]
for name, build in TINY_BUILDERS.items():
    folder = out / "models" / name
    if not (folder / "model_index.json").is_file():
        build(folder)
    for memory in ({}, {"offload": "model", "vae_slicing": True, "vae_tiling": True}):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        settings = EditorSettings(
            device="cuda:0", dtype="bfloat16", steps=4, max_pixels=128 * 128, **memory
        )
        editor = InstructionEditor.from_settings(settings, model=folder)
        dtype = getattr(editor.pipeline, editor.spec.denoiser).dtype
        results = editor.edit(requests)
        assert all(r.ok for r in results), [r.error for r in results]
        print(
            f"edit   {name:40s} {'offload+vae ' if memory else 'on device   '} dtype {dtype}, "
            f"{len(results)} edits in {time.perf_counter() - started:5.1f} s, "
            f"peak {torch.cuda.max_memory_allocated() / 2**20:7.1f} MiB"
        )
        del editor
judge_dir = out / "models" / "tiny-qwen-vl"
if not (judge_dir / "config.json").is_file():
    build_tiny_qwen_vl(judge_dir)
torch.cuda.reset_peak_memory_stats()
started = time.perf_counter()
judges = load_judges(
    JudgeSettings(device="cuda:0", min_pixels=56 * 56, max_pixels=112 * 112, max_new_tokens=24,
                  reflector_max_new_tokens=24),
    judge_dir,
)
items = [JudgeItem(source, source.transpose(0), "make it blue", EditType.ALTER)] * 4
scores = judges.scorer.score(items)
reflections = judges.reflector.reflect(items)
dtype = next(judges.scorer.vlm.model.parameters()).dtype
print(
    f"judge  tiny Qwen2.5-VL dtype {dtype}: {len(scores)} scores, {len(reflections)} reflections "
    f"in {time.perf_counter() - started:5.1f} s, peak "
    f"{torch.cuda.max_memory_allocated() / 2**20:7.1f} MiB (parse: {scores[0].status.value})"
)
EOF

# ---- 3: training, bf16 on NCCL, every objective under ZeRO-2 and ZeRO-3 ---------------------
"$PYTHON" - "$OUT" <<'EOF'
import sys
from pathlib import Path

import torch

from policies.pixel_config import PixelEditorConfig
from policies.pixel_editor import PixelEditorModel
from policies.training.config import TrainConfig
from store.objects import LocalStore
from tests.fixtures.training import put_fixed_set

out = Path(sys.argv[1])
manifest = put_fixed_set(LocalStore(out / "data" / "objects"), out / "manifest.jsonl", 8)
pixel = out / "models" / "pixel"
if not (pixel / "editor_config.json").is_file():
    torch.manual_seed(0)
    PixelEditorModel(PixelEditorConfig()).save_pretrained(pixel)
models = {
    "ip2p": (out / "models" / "StableDiffusionInstructPix2PixPipeline", 32),
    "kontext": (out / "models" / "FluxKontextPipeline", 32),
    "qwen": (out / "models" / "QwenImageEditPipeline", 32),
    "pixel": (pixel, 0),
}
for name, (model, resolution) in models.items():
    for stage in (2, 3):
        config = TrainConfig(
            model=str(model), manifest=str(manifest), output_dir=str(out / "train" / f"{name}-z{stage}"),
            max_steps=2, micro_batch_size=2, resolution=resolution, zero_stage=stage,
            save_every=0, num_workers=0, progress_bar=False,
        )
        path = out / "train" / f"{name}-z{stage}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(config.to_json())
EOF
for config in "$OUT"/train/*.json; do
  name="$(basename "$config" .json)"
  started=$(date +%s)
  if ! "$PYTHON" -m torch.distributed.run --nproc_per_node 1 --master_port 29533 \
      -m loop.cli.train "$config" > "$OUT/train/$name.log" 2>&1; then
    echo "train  $name FAILED; last lines of $OUT/train/$name.log:"; tail -30 "$OUT/train/$name.log"
    exit 1
  fi
  "$PYTHON" - "$OUT/train/${name}/final/train_metrics.json" "$name" "$(( $(date +%s) - started ))" <<'EOF'
import json
import sys

summary = json.loads(open(sys.argv[1]).read())
metrics = summary["result"]["metrics"]
print(
    f"train  {sys.argv[2]:12s} {summary['precision']}, loss {metrics['train/loss_first']:.4f} -> "
    f"{metrics['train/loss_last']:.4f}, ZeRO-3 partitioned at init "
    f"{metrics.get('train/zero3_partitioned_at_init', 0):.2f}, checkpointing "
    f"{metrics.get('train/gradient_checkpointing', 0):.0f}, {sys.argv[3]} s"
)
assert summary["precision"] == "bf16", summary["precision"]
EOF
done
echo "GPU smoke test passed"
