"""Pre-training recipe of the pixel editor: single-operation shapes tasks only, then evaluation.

As in docs/design.md ("Learning from judged edits"): pre-trained on single operations (recolour,
remove, background), 1,200 steps at batch 32 and learning rate 1e-3, the editor does single
operations ~always and compound instructions (two operations, never seen here) in one step rarely
(17%); that gap is what the self-improvement loop closes. `setup → train → save → evaluate`, run as
`python -m policies.pixel_pretrain --out DIR [--steps N] [--threads 1]`.
"""

import argparse
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from policies.pixel_config import PixelEditorConfig
from policies.pixel_editor import (
    InstructionTokenizer,
    PixelEditor,
    PixelEditorModel,
    diffusion_loss,
    images_to_tensor,
)
from policies.types import Editor, EditRequest, EditResult
from worlds.shapes.measure import measure_edit
from worlds.shapes.tasks import (
    ShapesTask,
    generate_compound_tasks,
    generate_single_op_tasks,
    random_single_op_task,
)

# Held-out evaluation: fixed task and sampling seeds, apart from the training stream's.
EVAL_SINGLE_SEED = 999
EVAL_COMPOUND_SEED = 998
EVAL_SAMPLE_SEED = 12345
REPORT_NAME = "pretrain_report.json"


@dataclass(frozen=True)
class PretrainConfig:
    """Pre-training run; defaults are the full setting of the hindsight experiment
    (docs/design.md, "Learning from judged edits")."""

    steps: int = 1200  # optimizer steps
    batch_size: int = 32  # fresh single-operation tasks per step
    learning_rate: float = 1e-3  # AdamW, no weight decay
    seed: int = 0  # weights, task stream and noise
    eval_tasks: int = 200  # held-out tasks of each kind (single, compound); 0 = no evaluation
    log_every: int = 100  # steps between log lines
    editor: PixelEditorConfig = field(default_factory=PixelEditorConfig)


@dataclass(frozen=True)
class EvalReport:
    """Held-out success of an editor on shapes tasks (fractions of tasks, 0-1)."""

    single_op_success: float
    single_op_success_by_type: dict[str, float]
    compound_success: float
    compound_one_op_done: float  # exactly one of two operations done, rest preserved
    tasks: int  # per kind
    seconds: float
    # Per held-out task, in order (the same tasks and seeds for every editor: paired comparisons).
    single_op_successes: tuple[bool, ...] = ()
    compound_successes: tuple[bool, ...] = ()


@dataclass(frozen=True)
class PretrainReport:
    """What a pre-training run did and reached."""

    steps: int
    train_seconds: float
    first_loss: float  # mean loss of the first 50 steps (a quarter of the steps if fewer)
    last_loss: float  # mean loss of the last 50 (likewise)
    losses: list[float]
    evaluation: EvalReport | None


def single_op_batch(
    rng: random.Random, tokenizer: InstructionTokenizer, batch_size: int, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fresh single-operation tasks: source, target (B, 3, S, S) in [-1, 1] and token ids, each
    clause in a random slot (docs/design.md, "Learning from judged edits")."""
    tasks = [random_single_op_task(rng, size) for _ in range(batch_size)]
    source = images_to_tensor([task.source_image() for task in tasks])
    target = images_to_tensor([task.target_image() for task in tasks])
    tokens = torch.tensor(
        [
            tokenizer.encode(task.instruction, slots=[rng.randrange(tokenizer.max_clauses)])
            for task in tasks
        ]
    )
    return source, target, tokens


def edit_tasks(editor: Editor, tasks: Sequence[ShapesTask], seed: int) -> list[EditResult]:
    """Edit each task's source with its instruction, request i seeded `seed + i`."""
    requests = [
        EditRequest(task.source_image(), task.instruction, seed + index)
        for index, task in enumerate(tasks)
    ]
    return editor.edit(requests)


def evaluate_editor(editor: Editor, tasks: int, seed: int = EVAL_SAMPLE_SEED) -> EvalReport:
    """One-step success on `tasks` held-out single-operation and compound tasks (fixed seeds)."""
    started = time.perf_counter()
    singles = generate_single_op_tasks(tasks, seed=EVAL_SINGLE_SEED)
    compounds = generate_compound_tasks(tasks, seed=EVAL_COMPOUND_SEED)
    measured = {}
    for name, batch in (("single", singles), ("compound", compounds)):
        results = edit_tasks(editor, batch, seed)
        measured[name] = [
            measure_edit(task.scene, task.operations, result.image, task.size)
            if result.ok
            else None
            for task, result in zip(batch, results, strict=True)
        ]

    def share(flags: list[bool]) -> float:
        return sum(flags) / len(flags) if flags else 0.0

    single_ok = [m is not None and m.success for m in measured["single"]]
    by_type: dict[str, list[bool]] = {}
    for task, ok in zip(singles, single_ok, strict=True):
        by_type.setdefault(task.edit_type, []).append(ok)
    compound = measured["compound"]
    compound_ok = [m is not None and m.success for m in compound]
    return EvalReport(
        single_op_success=share(single_ok),
        single_op_success_by_type={k: share(v) for k, v in sorted(by_type.items())},
        compound_success=share(compound_ok),
        compound_one_op_done=share(
            [
                m is not None and m.preserved and not m.success and sum(m.operations_done) == 1
                for m in compound
            ]
        ),
        tasks=tasks,
        seconds=time.perf_counter() - started,
        single_op_successes=tuple(single_ok),
        compound_successes=tuple(compound_ok),
    )


def pretrain_pixel_editor(
    out_dir: str | Path,
    config: PretrainConfig = PretrainConfig(),
    log: Callable[[str], None] | None = print,
) -> PretrainReport:
    """Pre-train a fresh editor on single operations, save it to `out_dir` (a checkpoint folder,
    with `pretrain_report.json`), and evaluate it on held-out tasks."""
    if config.steps <= 0 or config.batch_size <= 0:
        raise ValueError(f"steps and batch_size must be positive: {config}")
    # setup
    torch.manual_seed(config.seed)
    model = PixelEditorModel(config.editor)
    noise_scheduler = model.noise_scheduler()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    rng = random.Random(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    # train
    model.train()
    losses: list[float] = []
    started = time.perf_counter()
    for step in range(1, config.steps + 1):
        batch = single_op_batch(rng, model.tokenizer, config.batch_size, config.editor.size)
        loss = diffusion_loss(model, *batch, noise_scheduler, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if log is not None and (step % config.log_every == 0 or step == config.steps):
            recent = losses[-config.log_every :]
            log(
                f"pretrain step {step}/{config.steps} loss {sum(recent) / len(recent):.4f} "
                f"({time.perf_counter() - started:.0f} s)"
            )
    train_seconds = time.perf_counter() - started
    # save
    model.eval()
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    # evaluate
    evaluation = None
    if config.eval_tasks > 0:
        evaluation = evaluate_editor(PixelEditor(model, out_dir.name), config.eval_tasks)
        if log is not None:
            log(f"evaluation: {json.dumps(asdict(evaluation))}")
    window = max(1, min(50, len(losses) // 4))
    report = PretrainReport(
        steps=config.steps,
        train_seconds=train_seconds,
        first_loss=sum(losses[:window]) / window,
        last_loss=sum(losses[-window:]) / window,
        losses=losses,
        evaluation=evaluation,
    )
    summary = {"config": asdict(config), **asdict(report)}
    (out_dir / REPORT_NAME).write_text(json.dumps(summary, indent=1))
    return report


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: pre-train and print the held-out figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = PretrainConfig()
    parser.add_argument("--out", required=True, help="checkpoint folder to write")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--eval-tasks", type=int, default=defaults.eval_tasks)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = replace(
        defaults,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        eval_tasks=args.eval_tasks,
    )
    pretrain_pixel_editor(args.out, config, log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
