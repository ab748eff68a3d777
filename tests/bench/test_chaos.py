"""The chaos soak's short variant: every kind of fault is injected into a running deployment, and
afterwards every invariant holds."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KINDS = ("kill-worker", "kill-controller", "kill-trainer", "restart-broker", "cut-store")

pytestmark = [pytest.mark.services, pytest.mark.slow]


def test_the_short_soak_injects_every_fault_and_breaks_no_invariant(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDITLOOP_")}
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "chaos.py"), "--short", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = result.stdout.split("faults injected: ")[1].splitlines()[0]
    injected = dict(re.findall(r"([a-z-]+) (\d+)", line))
    assert all(int(injected.get(kind, 0)) >= 1 for kind in KINDS), injected
    checks = re.findall(
        r"^\s+(ok  |FAIL) (.+): (\d+) checked, (\d+) violations$", result.stdout, re.M
    )
    assert len(checks) == 8 and all(status == "ok  " for status, *_ in checks)
    assert all(int(checked) > 0 for _, _, checked, _ in checks), "every invariant saw something"
    assert "violations: 0" in result.stdout
