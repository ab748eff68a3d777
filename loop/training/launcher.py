"""Running the training recipe under a launcher (torchrun, deepspeed, or none) as a subprocess.

The launcher gets its own process group (stopping it reaches every rank) and dies with the
trainer (parent-death signal), so that a killed trainer leaves no rank running; its output is
appended to the job folder's `launcher.log`, whose tail explains a failure.
"""

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from policies.training.layout import DIE_WITH_PARENT_ENV
from policies.training.settings import TrainingSettings

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1
LAUNCHER_LOG = "launcher.log"
# The module every rank runs (`python -m RANK_MODULE CONFIG`).
RANK_MODULE = "loop.cli.train"


def job_folder(work_dir: Path, job_id: int) -> Path:
    """A job's folder under the trainer's work_dir."""
    return work_dir / f"job-{job_id:06d}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(settings: TrainingSettings, config_path: Path) -> list[str]:
    """The command that starts every rank of the recipe on this node."""
    python = sys.executable
    module = [RANK_MODULE, str(config_path)]
    port = str(_free_port())
    if settings.launcher == "none":
        if settings.nproc_per_node != 1:
            raise ValueError(
                f"launcher=none runs one process, nproc_per_node={settings.nproc_per_node}"
            )
        return [python, "-m", *module]
    if settings.launcher == "torchrun":
        return [
            python, "-m", "torch.distributed.run", "--nproc_per_node",
            str(settings.nproc_per_node), "--master_port", port, "-m", *module,
        ]  # fmt: skip
    deepspeed = str(Path(python).parent / "deepspeed")
    # --no_local_rank: the recipe reads LOCAL_RANK from the environment, like under torchrun.
    return [
        deepspeed, "--no_local_rank", "--num_gpus", str(settings.nproc_per_node),
        "--master_port", port, "--module", *module,
    ]  # fmt: skip


def _die_with_trainer() -> None:
    # Runs in the child before exec: when the trainer dies (even by SIGKILL), so does the launcher.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _stop_group(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM the launcher's process group, SIGKILL what is left after `grace_s`."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_launcher(
    command: list[str], folder: Path, *, env: dict[str, str], lost: threading.Event
) -> int | None:
    """Run `command` to the end with its output appended to `folder`'s launcher log; its exit
    code, or None if `lost` was set meanwhile (the lease was lost: the launcher is stopped)."""
    env = {**os.environ, **env, DIE_WITH_PARENT_ENV: "1", "PYTHONUNBUFFERED": "1"}
    with (folder / LAUNCHER_LOG).open("ab") as output:
        output.write(f"\n$ {' '.join(command)}\n".encode())
        output.flush()
        # Its own process group: stopping it reaches torchrun's ranks too.
        process = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_trainer,
        )
    (folder / "launcher.pid").write_text(str(process.pid))
    try:
        while process.poll() is None:
            if lost.wait(0.2):
                log.warning("%s: lease lost, stopping its launcher", folder.name)
                _stop_group(process)
                return None
        return process.returncode
    finally:
        if process.poll() is None:  # the trainer itself is stopping (an exception, Ctrl-C)
            _stop_group(process)


def log_tail(folder: Path, lines: int = 20) -> str:
    """The last `lines` lines of the job folder's launcher log ("" when there is none)."""
    try:
        return "\n".join((folder / LAUNCHER_LOG).read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""
