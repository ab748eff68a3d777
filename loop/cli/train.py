"""`editloop train CONFIG` (one rank of a fine-tuning run) and `editloop trainer` (the job runner).

`train` is what a launcher starts on every rank:

    torchrun --nproc_per_node 2 -m loop.cli.train job/train_config.json
    deepspeed --no_local_rank --num_gpus 8 --module loop.cli.train job/train_config.json
    editloop train job/train_config.json --set max_steps=10        # one process

`trainer` claims queued train jobs from the database, runs `train` under the configured launcher
as a subprocess while holding the job's lease, then publishes and gates the checkpoint.
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


if __name__ == "__main__":
    # `python -m loop.cli.train CONFIG`: how launchers start each rank (outside the `editloop`
    # group, so the error contract is kept here).
    try:
        typer.run(train)
    except Exception as exc:
        code, message = describe(exc)
        print_error(message)
        raise SystemExit(code) from exc
