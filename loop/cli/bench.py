"""`editloop bench self-improve` and `editloop demo`: the self-improvement benchmark."""

import logging
from dataclasses import asdict, replace
from pathlib import Path

import typer

from loop.benchmark.config import ARMS, DEMO, FAST, SelfImproveConfig, pretrained_dir
from loop.cli.errors import USAGE, UserError
from loop.settings import get_settings

bench_app = typer.Typer(
    help="Benchmarks of the loop itself (speed benchmarks are scripts in bench/).",
    no_args_is_help=True,
)


def run_and_report(config: SelfImproveConfig, *, targets: bool = True) -> None:
    """Run the benchmark, then print and write its tables (and the targets met) and its plot
    into `config.out_dir`."""
    from loop.benchmark.report import report_markdown, write_plot
    from loop.benchmark.self_improve import run_benchmark

    # The trainer's subprocesses log to their job folders; the loop's own warnings stay visible.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    results = run_benchmark(config, log=lambda line: typer.echo(line))
    rows = [asdict(r) for r in results]
    plot = write_plot(rows, config.out_dir / "self_improve.png")
    text = report_markdown(rows, targets=targets)
    report = config.out_dir / "self_improve.md"
    report.write_text(text)
    typer.echo(text)
    typer.echo(f"\nwrote {report}, {plot} and {config.out_dir / 'results.json'}")


@bench_app.command("self-improve")
def self_improve(
    out: Path | None = typer.Option(
        None, help="Output folder (default: <data_dir>/bench/self-improve)."
    ),
    arms: str = typer.Option(",".join(ARMS), help=f"Comma-separated arms, of: {', '.join(ARMS)}."),
    rounds: int = typer.Option(3, min=1, help="Loop rounds per arm (each then fine-tunes)."),
    tasks: int = typer.Option(384, min=1, help="Compound tasks edited per round."),
    pretrain_steps: int = typer.Option(1200, min=1, help="Pre-training steps (single ops)."),
    finetune_steps: int = typer.Option(120, min=1, help="DeepSpeed steps per round and arm."),
    eval_tasks: int = typer.Option(200, min=1, help="Held-out tasks of each kind measured."),
    fast: bool = typer.Option(
        False, "--fast", help="Toy sizes (the test suite's variant): mechanics, not improvement."
    ),
    threads: int = typer.Option(
        0, min=0, help="Torch CPU threads of pre-training (0: torch's default)."
    ),
    parallel_arms: int = typer.Option(
        0,
        min=0,
        help="Arms run at once, each in its own process with CPUs / this many threads (0: all).",
    ),
    seed: int = typer.Option(0, help="Seed of weights, tasks and noise."),
) -> None:
    """Does the loop improve an editor? Reflection hindsight vs rejection only vs a control, in
    the shapes world, on the real loop (controller, workers, database, store, DeepSpeed, gate)."""
    data_dir = get_settings().data_dir
    try:
        config = SelfImproveConfig(
            out_dir=out or data_dir / "bench" / "self-improve",
            pretrained_dir=pretrained_dir(data_dir),
            arms=tuple(a.strip() for a in arms.split(",") if a.strip()),
            rounds=rounds,
            tasks_per_round=tasks,
            pretrain_steps=pretrain_steps,
            finetune_steps=finetune_steps,
            eval_tasks=eval_tasks,
            parallel_arms=parallel_arms,
            seed=seed,
        )
        if fast:
            config = replace(config, **FAST)
    except ValueError as exc:
        raise UserError(str(exc), code=USAGE) from None
    if threads:
        import torch

        torch.set_num_threads(threads)
    run_and_report(config)


def demo(
    rounds: int = typer.Option(DEMO["rounds"], min=1, help="Loop rounds (each then fine-tunes)."),
) -> None:
    """Watch the loop improve an editor: the self-improvement benchmark's hindsight arm at a short
    setting (pre-train a small editor, then edit → judge → reflect → fine-tune → gate)."""
    settings = get_settings()
    out_dir = settings.data_dir / "demo"
    typer.echo(f"embedded mode: data under {out_dir.resolve()}")
    config = SelfImproveConfig(
        out_dir=out_dir, pretrained_dir=pretrained_dir(settings.data_dir), **DEMO
    )
    # The short setting is not held to the benchmark's targets (3 rounds, three arms).
    run_and_report(replace(config, rounds=rounds), targets=False)
    typer.echo(
        "the full experiment, with the rejection-only and control arms: editloop bench self-improve"
    )
