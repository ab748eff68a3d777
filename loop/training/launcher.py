"""Running the training recipe under a launcher (torchrun, deepspeed, or none) as a subprocess.

The launcher gets its own process group (stopping it reaches every rank) and dies with the
trainer (parent-death signal), so that a killed trainer leaves no rank running; its output is
appended to the job folder's `launcher.log`, whose tail explains a failure.
"""

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from policies.training.layout import DIE_WITH_PARENT_ENV
from policies.training.lifetime import die_with_parent
from policies.training.settings import TrainingSettings

log = logging.getLogger(__name__)
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
    """The command that starts this node's ranks of the recipe: all of them, or with
    `nnodes` > 1 (torchrun) this node's `nproc_per_node`, meeting the others' at node 0's
    `rdzv_endpoint` as node `node_rank`."""
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
        nodes: list[str] = ["--master_port", port]
        if settings.nnodes > 1:
            host, _, fixed_port = settings.rdzv_endpoint.rpartition(":")
            nodes = [
                "--nnodes", str(settings.nnodes), "--node_rank", str(settings.node_rank),
                "--master_addr", host, "--master_port", fixed_port,
            ]  # fmt: skip
        return [
            python, "-m", "torch.distributed.run", "--nproc_per_node",
            str(settings.nproc_per_node), *nodes, "-m", *module,
        ]  # fmt: skip
    deepspeed = str(Path(python).parent / "deepspeed")
    # --no_local_rank: the recipe reads LOCAL_RANK from the environment, like under torchrun.
    return [
        deepspeed, "--no_local_rank", "--num_gpus", str(settings.nproc_per_node),
        "--master_port", port, "--module", *module,
    ]  # fmt: skip


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


def node_log_name(node_rank: int) -> str:
    """The launcher log of node `node_rank` in a job folder (node 0's is `launcher.log`)."""
    return LAUNCHER_LOG if node_rank == 0 else f"launcher-node{node_rank}.log"


def run_launcher(
    command: list[str],
    folder: Path,
    *,
    env: dict[str, str],
    lost: threading.Event,
    log_name: str = LAUNCHER_LOG,
) -> int | None:
    """Run `command` to the end with its output appended to `folder`'s launcher log; its exit
    code, or None if `lost` was set meanwhile (the lease was lost: the launcher is stopped)."""
    env = {**os.environ, **env, DIE_WITH_PARENT_ENV: "1", "PYTHONUNBUFFERED": "1"}
    with (folder / log_name).open("ab") as output:
        output.write(f"\n$ {' '.join(command)}\n".encode())
        output.flush()
        # Its own process group: stopping it reaches torchrun's ranks too.
        process = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    (folder / log_name.replace(".log", ".pid")).write_text(str(process.pid))
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
