"""`editloop train CONFIG` (one rank of a fine-tuning run) and `editloop trainer` (the job runner).

`train` is what a launcher starts on every rank:

    torchrun --nproc_per_node 2 -m loop.cli.train job/train_config.json
    deepspeed --no_local_rank --num_gpus 8 --module loop.cli.train job/train_config.json
    editloop train job/train_config.json --set max_steps=10        # one process

`trainer` claims queued train jobs from the database, runs `train` under the configured launcher
as a subprocess while holding the job's lease, then publishes and gates the checkpoint.

`train-judge --role judge|reflector` fine-tunes the judge or the reflector on the pool's
confirmed judgments (`loop/training/judge_train.py`) and publishes a `ready` checkpoint of that
role.
"""

import functools
import os
import socket
from pathlib import Path

import typer

from loop.cli.errors import UserError, describe, print_error
from loop.schema import ensure_schema
from loop.services import open_store
from loop.settings import get_settings
from policies.training.config import load_train_config, parse_overrides


def _rank0_echo(message: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        typer.echo(message, err=True)


def train(
    config: Path = typer.Argument(..., help="Run config (JSON of policies.training.TrainConfig)."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a config field, e.g. --set max_steps=10 (repeatable)."
    ),
) -> None:
    """Fine-tune the editor with DeepSpeed (one rank; start it under deepspeed/torchrun)."""
    settings = get_settings()
    try:
        train_config = load_train_config(config, parse_overrides(overrides))
        # Imported once the config is checked: DeepSpeed takes seconds to import.
        from policies.training.recipe import train as run_recipe

        result = run_recipe(
            train_config, functools.partial(open_store, settings), log_fn=_rank0_echo
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    _rank0_echo(f"checkpoint: {result.final_dir}")


def trainer(
    once: bool = typer.Option(
        False, "--once", help="Process the jobs claimable now, then exit (instead of waiting)."
    ),
    max_jobs: int | None = typer.Option(None, min=1, help="Exit after this many jobs."),
    owner: str = typer.Option("", help="Lease owner name (default: <host>-<pid>)."),
) -> None:
    """Claim queued training jobs and run them: train, publish, evaluate, promote or reject."""
    from loop.runtime import build_trainer_parts
    from loop.training.jobs import run_trainer

    settings = get_settings()
    ensure_schema(settings)
    parts = build_trainer_parts(settings, settings.training)
    done = run_trainer(
        parts,
        owner=owner or f"{socket.gethostname()}-{os.getpid()}",
        max_jobs=max_jobs,
        wait=not once,
    )
    for job_id, outcome in done:
        typer.echo(f"job {job_id}: {outcome}")
    if not done:
        typer.echo("no training job was queued (`editloop run --train-every N` queues them)")


def train_judge(
    role: str = typer.Option(..., "--role", help="judge (scores) or reflector (tags)."),
    model: Path | None = typer.Option(
        None,
        help="Base Qwen2.5-VL folder. Default: judge.model (judge) or "
        "judge.reflector_model, else judge.model (reflector).",
    ),
    lora: bool = typer.Option(False, "--lora/--full", help="LoRA (merged when saved) or full."),
    lora_rank: int = typer.Option(16, min=1, help="LoRA rank."),
    steps: int = typer.Option(100, min=1, help="Optimizer steps."),
    learning_rate: float = typer.Option(1e-5, "--lr", min=0.0, help="Learning rate."),
    batch_size: int = typer.Option(1, min=1, help="Examples per device step."),
    val_fraction: float = typer.Option(0.1, min=0.0, max=0.99, help="Tasks held out (by hash)."),
    seed: int = typer.Option(0, help="Split and training seed."),
    run_id: list[int] = typer.Option([], "--run-id", help="Only these runs (repeatable)."),
    include_unconfirmed: bool = typer.Option(
        False, help="Train on every valid answer, not only confirmed outcomes."
    ),
    device: str = typer.Option("", help="torch device; default: judge.device, else cpu."),
) -> None:
    """Fine-tune the judge or the reflector on the pool's judgments (TRL SFT) and publish it."""
    import tempfile

    from store.models import parse_judge_role

    settings = get_settings()
    try:
        parsed = parse_judge_role(role)
    except ValueError as exc:
        raise UserError(str(exc), code=2) from None
    # Imported once the arguments are checked: torch, transformers and TRL take seconds.
    from loop.services import open_database
    from loop.training.judge_train import JudgeTraining
    from loop.training.judge_train import train_judge as run_training
    from loop.training.pool import PoolFilter
    from rewards.factory import judge_model_dir, judge_prompts, verdict_thresholds
    from rewards.sft import SFTOptions
    from rewards.vlm import PixelBounds

    judge = settings.judge
    ensure_schema(settings)
    base = model
    if base is None and parsed.value == "reflector" and judge.reflector_model:
        base = Path(judge.reflector_model)
    try:
        job = JudgeTraining(
            role=parsed,
            base_model=base or judge_model_dir(judge, settings.data_dir),
            pool_filter=PoolFilter(
                run_ids=tuple(run_id),
                verdicts=("Success", "Reflection", "Failed"),
                exclude_origins=(settings.training.eval_origin,),
            ),
            options=SFTOptions(
                lora=lora,
                lora_rank=lora_rank,
                max_steps=steps,
                learning_rate=learning_rate,
                batch_size=batch_size,
                bounds=PixelBounds(judge.min_pixels, judge.max_pixels),
                device=device or judge.device or "cpu",
                seed=seed,
            ),  # fmt: skip
            confirmed_only=not include_unconfirmed,
            val_fraction=val_fraction,
            split_seed=seed,
        )
        with tempfile.TemporaryDirectory(prefix="editloop-train-judge-") as work:
            result = run_training(
                factory=open_database(settings),
                store=open_store(settings),
                job=job,
                prompts=judge_prompts(judge),
                thresholds=verdict_thresholds(judge),
                limits=settings.store.image_limits(),
                work_dir=Path(work),
            )
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    metrics = ", ".join(f"{k} {v:.4g}" for k, v in sorted(result.metrics.items()))
    typer.echo(
        f"{parsed.value} checkpoint {result.version} (id {result.checkpoint_id}, ready): "
        f"{result.train_examples} training and {result.validation_examples} validation "
        f"examples; {metrics}"
    )


if __name__ == "__main__":
    # `python -m loop.cli.train CONFIG`: how launchers start each rank (outside the `editloop`
    # group, so the error contract is kept here).
    try:
        typer.run(train)
    except Exception as exc:
        code, message = describe(exc)
        print_error(message)
        raise SystemExit(code) from exc
