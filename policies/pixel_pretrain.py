"""Pre-training recipe of the pixel editor: single-operation shapes tasks only, then evaluation.

As in docs/design.md ("Learning from judged edits"): pre-trained on single operations (recolour,
remove, background) of the task space's pre-training part, 1,200 steps at batch 32 and learning
rate 1e-3, the editor does single operations ~always and compound instructions (two operations,
never seen here) in one step rarely; that gap is what the self-improvement loop closes.
`setup → train → save → evaluate`, run as
`python -m policies.pixel_pretrain --out DIR [--steps N] [--threads 1] [--export PATH]`.

The editor of the default setting is shipped in the repository (`SHIPPED`: one fp16 safetensors
file under 5 MB with a JSON record of its SHA-256, setting and the command that made it), so the
demo and the benchmark's first seed need no pre-training; `unpack_editor` checks the hash before
it writes the checkpoint folder.
"""

import argparse
import hashlib
import json
import random
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

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
from worlds.shapes.partition import Part
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
# The editor of the default setting, shipped: `<SHIPPED>.safetensors`, its record `<SHIPPED>.json`.
SHIPPED = Path(__file__).parent / "pretrained" / "shapes_pixel_editor"
SHIPPED_MAX_BYTES = 5 * 2**20


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
    part: str = Part.PRETRAIN.value  # the part of the task space the training stream draws from

    def __post_init__(self) -> None:
        if self.steps <= 0 or self.batch_size <= 0:
            raise ValueError(f"steps={self.steps}, batch_size={self.batch_size}: must be positive")
        if self.part not in {p.value for p in Part}:
            raise ValueError(f"part={self.part!r}: one of {[p.value for p in Part]}")


def weights_setting(config: PretrainConfig) -> dict[str, Any]:
    """What decides the pre-trained weights (the config without its evaluation and logging): two
    configs with the same setting make the same editor."""
    setting = asdict(config)
    for name in ("eval_tasks", "log_every"):
        setting.pop(name)
    return json.loads(json.dumps(setting))  # tuples as lists, as read back from JSON


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
    rng: random.Random,
    tokenizer: InstructionTokenizer,
    batch_size: int,
    size: int,
    part: Part | None = Part.PRETRAIN,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fresh single-operation tasks of `part`: source, target (B, 3, S, S) in [-1, 1] and token
    ids, each clause in a random slot (docs/design.md, "Learning from judged edits")."""
    tasks = [random_single_op_task(rng, size, part) for _ in range(batch_size)]
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


def eval_tasks(tasks: int) -> tuple[list[ShapesTask], list[ShapesTask]]:
    """The held-out single-operation and compound tasks (fixed seeds, distinct, from the task
    space's evaluation part: never in pre-training, the loop or the gate)."""
    return (
        generate_single_op_tasks(tasks, seed=EVAL_SINGLE_SEED, part=Part.EVAL, distinct=True),
        generate_compound_tasks(tasks, seed=EVAL_COMPOUND_SEED, part=Part.EVAL, distinct=True),
    )


def evaluate_editor(editor: Editor, tasks: int, seed: int = EVAL_SAMPLE_SEED) -> EvalReport:
    """One-step success on `tasks` held-out single-operation and compound tasks (`eval_tasks`)."""
    started = time.perf_counter()
    singles, compounds = eval_tasks(tasks)
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
    progress: bool | None = None,
) -> PretrainReport:
    """Pre-train a fresh editor on single operations, save it to `out_dir` (a checkpoint folder,
    with `pretrain_report.json`), and evaluate it on held-out tasks. `progress`: a tqdm bar of the
    steps (None: on a terminal only)."""
    # setup
    torch.manual_seed(config.seed)
    model = PixelEditorModel(config.editor)
    noise_scheduler = model.noise_scheduler()
    # Fused: one kernel over every tensor, a third of the default's time per step on CPU.
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=0.0, fused=True
    )
    rng = random.Random(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    part = Part(config.part)
    # train
    model.train()
    losses: list[float] = []
    started = time.perf_counter()
    # disable=None: tqdm shows the bar on a terminal only.
    disable = None if progress is None else not progress
    bar = tqdm(total=config.steps, desc="pre-training", unit="step", disable=disable)
    for step in range(1, config.steps + 1):
        batch = single_op_batch(rng, model.tokenizer, config.batch_size, config.editor.size, part)
        loss = diffusion_loss(model, *batch, noise_scheduler, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
        bar.update(1)
        if log is not None and (step % config.log_every == 0 or step == config.steps):
            recent = losses[-config.log_every :]
            log(
                f"pretrain step {step}/{config.steps} loss {sum(recent) / len(recent):.4f} "
                f"({time.perf_counter() - started:.0f} s)"
            )
    bar.close()
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


# ---- the shipped editor --------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_editor(
    model_dir: Path, path: Path, *, config: PretrainConfig, command: str
) -> dict[str, Any]:
    """Write the editor of `model_dir` as one fp16 file `<path>.safetensors` (under 5 MB) and its
    record `<path>.json` (SHA-256, bytes, the setting and the command that made it, the held-out
    figures of the fp16 weights); returns the record."""
    model = PixelEditorModel.from_pretrained(model_dir)
    weights = path.with_suffix(".safetensors")
    weights.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().half().contiguous() for name, t in model.state_dict().items()}
    save_file(tensors, weights, metadata={"editor_config": json.dumps(asdict(model.config))})
    weights.chmod(0o644)  # safetensors writes 0600; a shipped file is read by everyone
    size = weights.stat().st_size
    if size > SHIPPED_MAX_BYTES:
        weights.unlink()
        raise ValueError(f"{weights}: {size} bytes, over the {SHIPPED_MAX_BYTES} allowed")
    with torch.no_grad():  # measured as shipped: the fp16 weights, read back into fp32
        shipped = _read_editor(weights)
    evaluation = evaluate_editor(PixelEditor(shipped, "shipped"), 200)
    record = {
        "file": weights.name,
        "sha256": _sha256(weights),
        "bytes": size,
        "dtype": "float16",
        "command": command,
        "setting": weights_setting(config),
        "evaluation": {
            "tasks": evaluation.tasks,
            "single_op_success": evaluation.single_op_success,
            "compound_success": evaluation.compound_success,
            "compound_one_op_done": evaluation.compound_one_op_done,
        },
    }
    path.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def _read_editor(weights: Path) -> PixelEditorModel:
    with safe_open(weights, "pt") as handle:  # the config rides in the file's header
        raw = json.loads(handle.metadata()["editor_config"])
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    model = PixelEditorModel(PixelEditorConfig(**fields))
    model.load_state_dict({name: t.float() for name, t in load_file(weights).items()})
    return model.eval()


def shipped_record(path: Path = SHIPPED) -> dict[str, Any] | None:
    """The shipped editor's record (`<path>.json`), or None when none is shipped."""
    record = path.with_suffix(".json")
    return json.loads(record.read_text()) if record.is_file() else None


def matches_shipped(config: PretrainConfig, path: Path = SHIPPED) -> bool:
    """Whether the shipped editor was made with `config`'s setting (so it can stand in for it)."""
    record = shipped_record(path)
    return record is not None and record["setting"] == weights_setting(config)


def unpack_editor(out_dir: Path, path: Path = SHIPPED) -> Path:
    """Check the shipped file against its recorded SHA-256, then write it as a checkpoint folder
    (`out_dir`, with a `pretrain_report.json` naming where it came from); ValueError on a
    mismatch, naming the command that makes the file again."""
    record = shipped_record(path)
    weights = path.with_suffix(".safetensors")
    if record is None or not weights.is_file():
        raise ValueError(f"no shipped editor at {weights} (with {path.with_suffix('.json')})")
    actual = _sha256(weights)
    if actual != record["sha256"]:
        raise ValueError(
            f"{weights}: SHA-256 {actual} is not the recorded {record['sha256']}; the file is "
            f"damaged or was replaced: restore it from git, or make it again with: "
            f"{record['command']}"
        )
    _read_editor(weights).save_pretrained(out_dir)
    report = {"config": record["setting"], "shipped": record}
    (Path(out_dir) / REPORT_NAME).write_text(json.dumps(report, indent=1))
    return Path(out_dir)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: pre-train and print the held-out figures (and export the editor)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = PretrainConfig()
    parser.add_argument("--out", required=True, help="checkpoint folder to write")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--eval-tasks", type=int, default=defaults.eval_tasks)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument(
        "--export",
        type=Path,
        default=None,
        help=f"also write the editor as one fp16 file and its record (the shipped one: {SHIPPED})",
    )
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
    if args.export is not None:
        command = shlex.join(["python", "-m", "policies.pixel_pretrain", *(argv or sys.argv[1:])])
        record = export_editor(Path(args.out), args.export, config=config, command=command)
        print(f"exported {record['file']}: {record['bytes']} bytes, sha256 {record['sha256']}")


if __name__ == "__main__":
    main()
