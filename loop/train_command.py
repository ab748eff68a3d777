"""`editloop train CONFIG` (one rank of a fine-tuning run) and `editloop trainer` (the job runner).

`train` is what a launcher starts on every rank:

    torchrun --nproc_per_node 2 -m loop.train_command job/train_config.json
    deepspeed --no_local_rank --num_gpus 8 --module loop.train_command job/train_config.json
    editloop train job/train_config.json --set max_steps=10        # one process

`trainer` claims queued train jobs from the database, runs `train` under the configured launcher
as a subprocess while holding the job's lease, then publishes and gates the checkpoint.
"""

import functools
import os
import socket
from pathlib import Path

import typer

from loop.services import open_database, open_store
from loop.settings import Settings, get_settings
from loop.trainer import TrainerParts, run_trainer
from policies.editor import InstructionEditor
from policies.pixel_editor import PixelEditor, PixelEditorModel
from policies.training.config import load_train_config, parse_overrides
from policies.training.settings import TrainingSettings
from workers.context import ModelCache


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=1)


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
    # Imported here: DeepSpeed takes seconds to import, and only this command needs it.
    from policies.training.recipe import train as run_recipe

    settings = get_settings()
    try:
        train_config = load_train_config(config, parse_overrides(overrides))
        result = run_recipe(
            train_config, functools.partial(open_store, settings), log_fn=_rank0_echo
        )
    except ValueError as exc:
        raise _fail(str(exc)) from None
    _rank0_echo(f"checkpoint: {result.final_dir}")


def trainer(
    once: bool = typer.Option(
        False, "--once", help="Process the jobs claimable now, then exit (instead of waiting)."
    ),
    max_jobs: int | None = typer.Option(None, min=1, help="Exit after this many jobs."),
    owner: str = typer.Option("", help="Lease owner name (default: <host>-<pid>)."),
) -> None:
    """Claim queued training jobs and run them: train, publish, evaluate, promote or reject."""
    settings = get_settings()
    parts = build_trainer_parts(settings, settings.training)
    done = run_trainer(
        parts,
        owner=owner or f"{socket.gethostname()}-{os.getpid()}",
        max_jobs=max_jobs,
        wait=not once,
    )
    for job_id, outcome in done:
        typer.echo(f"job {job_id}: {outcome}")


def build_trainer_parts(settings: Settings, training: TrainingSettings) -> TrainerParts:
    """The trainer's parts from the settings: database, store, the editor and the scorer."""
    from loop.runtime import editor_model_dir, load_editor, load_model_judges

    store = open_store(settings)
    models = ModelCache(
        load_editor=lambda old, checkpoint: load_editor(settings, store, old, checkpoint),
        load_judges=lambda: load_model_judges(settings),
    )

    def verify(folder: Path) -> None:
        editor = models.editor(None)
        if isinstance(editor, PixelEditor):
            PixelEditorModel.from_pretrained(folder)  # a pixel checkpoint is a whole editor
            return
        # Load the candidate into the base editor, then put the editor back on the base weights
        # (the state the model cache believes it is in).
        if not isinstance(editor, InstructionEditor):
            raise ValueError(f"cannot verify a checkpoint with a {type(editor).__name__}")
        editor.use_checkpoint("candidate-under-verification", folder)
        editor.use_base()

    return TrainerParts(
        factory=open_database(settings),
        store=store,
        settings=training,
        work_dir=training.work_dir or settings.data_dir / "training",
        model=str(editor_model_dir(settings)),
        cache_dir=settings.data_dir / "checkpoint-cache",
        editor_for=models.editor,
        verify=verify,
        load_scorer=lambda: models.judges()[0],
    )


if __name__ == "__main__":
    # `python -m loop.train_command CONFIG`: how launchers start each rank.
    typer.run(train)
