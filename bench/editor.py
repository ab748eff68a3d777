"""Editor throughput on the tiny InstructPix2Pix: overhead over the bare pipeline, batching gain.

Builds the tiny InstructPix2Pix in a temporary folder, loads it with `InstructionEditor`, and
measures side by side in one run (interleaved repetitions after warm-up; median and best):

(a) the editor at batch 8 vs a direct call of the same pipeline object with the same inputs
    (prompts, 64x64 images, one generator per image, same knobs): images/s and their ratio
    (target >= 0.95: the editor's checks, grouping and result records cost almost nothing);
(b) the editor at batch 8 vs the editor at batch 1 (eight calls): images/s and the speed-up.

torch runs single-threaded by default: on a small shared machine more threads than free cores
makes OpenMP workers spin and timings meaningless (pass --threads to change it).

    .venv/bin/python bench/editor.py [--steps 4] [--reps 25] [--threads 1]
"""

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from policies.editor import InstructionEditor
from policies.settings import EditorSettings
from policies.tiny import build_tiny_instruct_pix2pix
from policies.types import EditRequest

BATCH = 8
SIDE = 64


def make_requests(n: int) -> list[EditRequest]:
    """`n` distinct 64x64 noise images (already at the working size), instructions and seeds."""
    rng = np.random.default_rng(0)
    return [
        EditRequest(
            Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8), "RGB"),
            f"make the cat number {i} blue",
            seed=i,
        )
        for i in range(n)
    ]


def direct_call(editor: InstructionEditor, requests: list[EditRequest]) -> Callable[[], object]:
    """The baseline: the pipeline called by hand with what the editor would pass it."""
    knobs = editor.knobs

    def call() -> object:
        return editor.pipeline(
            prompt=[r.instruction for r in requests],
            image=[r.image for r in requests],
            generator=[torch.Generator().manual_seed(r.seed) for r in requests],
            num_inference_steps=knobs["steps"],
            guidance_scale=knobs["guidance_scale"],
            image_guidance_scale=knobs["image_guidance_scale"],
            output_type="pil",
        ).images

    return call


def own_time(editor: InstructionEditor, requests: list[EditRequest], reps: int) -> float:
    """Median seconds the editor spends outside its pipeline call per batch: checks, grouping,
    generators, result records. Measured inside one call, so immune to load from other processes
    that makes (a) noisy on a shared machine."""
    outside = []
    for _ in range(reps):
        start = time.perf_counter()
        results = editor.edit(requests)
        outside.append(time.perf_counter() - start - results[0].wall_time_s)
    return statistics.median(outside)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(
    contenders: dict[str, Callable[[], object]], *, reps: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per call of each contender; repetitions interleaved, in a rotating order, so that
    load from other processes on a shared machine falls on all contenders alike."""
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    names = list(contenders)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            samples[name].append(timed(contenders[name]))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per edit")
    parser.add_argument("--reps", type=int, default=25, help="timed repetitions per contender")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per contender first")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_instruct_pix2pix(Path(tmp) / "tiny-ip2p")
        settings = EditorSettings(steps=args.steps, max_pixels=SIDE * SIDE, batch_size=BATCH)
        editor = InstructionEditor.from_settings(settings, model=model)
        # The same pipeline object, one request per call.
        single = InstructionEditor(
            editor.pipeline,
            spec=editor.spec,
            model_dir=editor.model_dir,
            knobs=editor.knobs,
            max_pixels=editor.max_pixels,
            batch_size=1,
        )
        requests = make_requests(BATCH)
        assert all(r.ok for r in editor.edit(requests)), "the editor failed on the bench inputs"

        samples = measure(
            {
                "editor, batch 8": lambda: editor.edit(requests),
                "direct pipeline call, batch 8": direct_call(editor, requests),
                "editor, batch 1 (8 calls)": lambda: single.edit(requests),
            },
            reps=args.reps,
            warmup=args.warmup,
        )
        outside = own_time(editor, requests, args.reps)

    median = {name: statistics.median(values) for name, values in samples.items()}
    best = {name: min(values) for name, values in samples.items()}
    print(
        f"tiny InstructPix2Pix, {SIDE}x{SIDE}, {args.steps} steps, {BATCH} images per round, "
        f"torch threads {args.threads}, {args.reps} repetitions after {args.warmup} warm-up"
    )
    print(f"{'contender':<32} {'median s':>9} {'images/s':>9} {'best s':>9} {'images/s':>9}")
    for name in samples:
        print(
            f"{name:<32} {median[name]:>9.4f} {BATCH / median[name]:>9.1f} "
            f"{best[name]:>9.4f} {BATCH / best[name]:>9.1f}"
        )
    editor_8, direct_8, editor_1 = (
        "editor, batch 8",
        "direct pipeline call, batch 8",
        "editor, batch 1 (8 calls)",
    )

    # Throughput ratios = inverse time ratios (the same 8 images in every contender). "paired":
    # the median over repetitions of the ratio within one repetition, whose contenders ran
    # back to back, so slow changes in the machine's load cancel out.
    def paired(slow: str, fast: str) -> float:
        return statistics.median(s / f for s, f in zip(samples[slow], samples[fast], strict=True))

    print("ratio                                    paired   median     best")
    print(
        f"(a) editor / direct pipeline, batch 8  {paired(direct_8, editor_8):>8.3f} "
        f"{median[direct_8] / median[editor_8]:>8.3f} {best[direct_8] / best[editor_8]:>8.3f}"
        "   (target >= 0.95)"
    )
    print(
        f"(b) editor batch 8 / batch 1 images/s  {paired(editor_1, editor_8):>8.2f} "
        f"{median[editor_1] / median[editor_8]:>8.2f} {best[editor_1] / best[editor_8]:>8.2f}"
    )
    print(
        f"editor's own time outside the pipeline call: {outside * 1000:.2f} ms per batch of 8 "
        f"({outside / median[editor_8]:.2%} of the editor's median batch time)"
    )


if __name__ == "__main__":
    main()
