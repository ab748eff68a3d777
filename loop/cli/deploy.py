"""`editloop compose gpus 0,1,2,3`: a node's per-GPU services for docker compose."""

import os
from pathlib import Path

import typer

from loop.cli.errors import USAGE, UserError
from loop.compose import gpu_override

compose_app = typer.Typer(
    help="Write docker compose files for a node (see docker-compose.yml).", no_args_is_help=True
)


def _ids(text: str, option: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"{option} {text!r}: give GPU indices like 0,1,2", code=USAGE) from None


@compose_app.command("gpus")
def gpus(
    ids: str = typer.Argument(..., help="This node's worker GPUs, e.g. 0,1,2,3."),
    judge_gpus: str = typer.Option(
        "",
        help="Of those, the GPUs that only judge (the others then only edit); default: both.",
    ),
    trainer_gpus: str = typer.Option(
        "", help="GPUs of the trainer on this node (one rank each); default: as docker-compose.yml."
    ),
    output: Path = typer.Option(
        Path("docker-compose.gpus.yml"), "--output", "-o", help="The override file to write."
    ),
    base: Path = typer.Option(
        Path("docker-compose.yml"), help="The compose file the services extend."
    ),
) -> None:
    """Write an override file with one worker service per GPU; use it with
    `docker compose -f docker-compose.yml -f docker-compose.gpus.yml up`."""
    try:
        text = gpu_override(
            _ids(ids, "GPUS"),
            judge_gpus=_ids(judge_gpus, "--judge-gpus"),
            trainer_gpus=_ids(trainer_gpus, "--trainer-gpus"),
            # The override names the base file relative to itself, as compose resolves it.
            base=os.path.relpath(base.resolve(), output.resolve().parent),
        )
    except ValueError as exc:
        raise UserError(str(exc), code=USAGE) from None
    output.write_text(text)
    typer.echo(f"wrote {output}: docker compose -f {base} -f {output} up")
