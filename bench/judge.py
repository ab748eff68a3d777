"""Judge throughput: judged pairs/s batched (8 per generate call) vs one pair at a time.

Both modes run in the same process on the same pairs, interleaved repeat by repeat, so machine
noise hits them alike; the figure per mode is the median over the repeats.

    .venv/bin/python bench/judge.py                     # the tiny judge on CPU
    .venv/bin/python bench/judge.py --model PATH --device cuda:0 --min-pixels 1016064 \\
        --max-pixels 1354752 --max-new-tokens 128       # a real ImgEdit-Judge on a GPU
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rewards.imgedit_judge import ImgEditJudge
from rewards.tiny import build_tiny_qwen_vl
from rewards.types import JudgeItem
from rewards.vlm import PixelBounds, load_vision_language_model
from store.taxonomy import EditType

TYPES = [EditType.REPLACE, EditType.ADD, EditType.REMOVE, EditType.STYLE]


def make_pairs(count: int, size: int) -> list[JudgeItem]:
    """`count` (source, edited) pairs of random `size`x`size` images, cycling over edit types."""
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(count):
        source, edited = (
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(2)
        )
        pairs.append(JudgeItem(source, edited, f"replace object {i} with a dog", TYPES[i % 4]))
    return pairs


def main() -> None:
    """Parse the options, run both modes interleaved, print the table and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="Qwen2.5-VL folder; default: the tiny judge")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--pairs", type=int, default=32, help="pairs judged per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per mode")
    parser.add_argument("--batch", type=int, default=8, help="pairs per call in batched mode")
    parser.add_argument("--size", type=int, default=64, help="image side, pixels")
    parser.add_argument("--min-pixels", type=int, default=56 * 56, help="processor lower bound")
    parser.add_argument("--max-pixels", type=int, default=56 * 56, help="processor upper bound")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="answer length limit")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or build_tiny_qwen_vl(Path(tmp) / "tiny-judge")
        vlm = load_vision_language_model(model_dir, args.device)
        bounds = PixelBounds(args.min_pixels, args.max_pixels)
        judges = {
            batch: ImgEditJudge(
                vlm, bounds=bounds, batch_size=batch, max_new_tokens=args.max_new_tokens
            )
            for batch in (1, args.batch)
        }
        pairs = make_pairs(args.pairs, args.size)
        for judge in judges.values():  # warm-up: allocator, kernels, tokenizer caches
            judge.score(pairs[: args.batch])
        seconds: dict[int, list[float]] = {batch: [] for batch in judges}
        for _ in range(args.repeats):
            for batch, judge in judges.items():
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                began = time.perf_counter()
                judge.score(pairs)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                seconds[batch].append(time.perf_counter() - began)

    rate = {batch: args.pairs / statistics.median(s) for batch, s in seconds.items()}
    print(f"judge {model_dir if args.model else 'tiny (random init)'} on {args.device}, "
          f"{args.threads} CPU thread(s), {args.size}x{args.size} images, bounds "
          f"{args.min_pixels}-{args.max_pixels} px, {args.max_new_tokens} new tokens max, "
          f"{args.pairs} pairs x {args.repeats} repeats (median)")  # fmt: skip
    print(f"{'mode':<16}{'batch':>6}{'seconds':>10}{'pairs/s':>10}")
    for batch in judges:
        mode = "one at a time" if batch == 1 else "batched"
        median = statistics.median(seconds[batch])
        print(f"{mode:<16}{batch:>6}{median:>10.3f}{rate[batch]:>10.2f}")
    print(f"ratio batched / one at a time: {rate[args.batch] / rate[1]:.2f}x")


if __name__ == "__main__":
    main()
