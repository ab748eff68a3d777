"""The command line starts at once: help, `config` and `status` import no model library."""

import json
import os
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "diffusers", "transformers", "deepspeed", "celery")
# Runs in a fresh interpreter: every --help, then `config` and `status`, then reports which heavy
# libraries ended up imported.
SCRIPT = """
import json, sys
from typer.testing import CliRunner
from loop.cli.app import app

runner = CliRunner()
codes = {}
for command in [[], *[[name] for name in sys.argv[1].split(",")], ["db", "upgrade"],
                ["bench", "self-improve"], ["worker", "ping"]]:
    codes[" ".join(command + ["--help"])] = runner.invoke(app, [*command, "--help"]).exit_code
codes["config"] = runner.invoke(app, ["config"]).exit_code
codes["status"] = runner.invoke(app, ["status"]).exit_code
heavy = [m for m in sys.argv[2].split(",") if m in sys.modules]
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def test_help_config_and_status_import_no_model_library(tmp_path: Path) -> None:
    from loop.cli.app import app

    commands = sorted(command.name for command in app.registered_commands)
    commands += sorted(group.name for group in app.registered_groups)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDITLOOP_")}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, ",".join(commands), ",".join(HEAVY)],
        env=env | {"EDITLOOP_DATA_DIR": str(tmp_path / "data")},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(result.stdout.splitlines()[-1])
    assert len(report["codes"]) == len(commands) + 6
    assert set(report["codes"].values()) == {0}, report["codes"]
    assert report["heavy"] == []
