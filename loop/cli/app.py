"""The `editloop` command: the composition root that reads the settings and wires the parts.

One module per command group (`data`, `run`, `edit`, `judge`, `train`, `bench`); each imports
its heavy libraries (torch, diffusers, transformers, DeepSpeed, Celery) inside the command that
needs them, so that `editloop --help`, `config` and `status` start at once.
"""

import os
from pathlib import Path

import typer

from loop.cli import admin, bench, data, deploy, edit, export, judge, plan, run, train
from loop.cli.errors import DEBUG_ENV, ErrorContractGroup
from loop.settings import get_settings

app = typer.Typer(
    cls=ErrorContractGroup,
    help="editloop: improve an instruction-based image editor by using it "
    "(edit → judge → reflect → fine-tune).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data.db_app, name="db")
app.add_typer(bench.bench_app, name="bench")
app.command("config")(data.show_config)
app.command("ingest")(data.ingest)
app.command("status")(data.status)
app.command("gc")(data.gc)
app.command("check")(data.check)
app.command("run")(run.run)
app.add_typer(run.worker_app, name="worker")
app.command("workers")(run.workers)
app.add_typer(deploy.compose_app, name="compose")
app.command("demo")(bench.demo)
app.command("edit")(edit.edit)
app.command("judge")(judge.judge)
app.command("train")(train.train)
app.command("trainer")(train.trainer)
app.command("train-judge")(train.train_judge)
app.command("serve")(admin.serve)
app.command("runs")(admin.runs)
app.command("rounds")(admin.rounds)
app.command("metrics")(admin.metrics)
app.command("samples")(admin.samples)
app.command("checkpoints")(admin.checkpoints)
app.command("export")(export.export)
app.command("plan")(plan.plan)


@app.callback()
def main(
    config: Path | None = typer.Option(
        None, "--config", help="TOML or YAML settings file (same as EDITLOOP_CONFIG)."
    ),
    debug: bool = typer.Option(
        False, "--debug", help="Print the traceback of an error (same as EDITLOOP_DEBUG=1)."
    ),
) -> None:
    """Settings come from EDITLOOP_* variables and an optional config file; defaults = embedded."""
    if config is not None:
        os.environ["EDITLOOP_CONFIG"] = str(config)
        get_settings.cache_clear()
    if debug:
        os.environ[DEBUG_ENV] = "1"
