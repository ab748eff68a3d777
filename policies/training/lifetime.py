"""A child process that dies with its parent: training ranks, their launcher, benchmark workers."""

import ctypes
import os
import signal
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (even by SIGKILL)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the request was in place
        os._exit(1)


def seconds_since_start() -> float:
    """Wall seconds since this process started (Linux's /proc); 0.0 where that cannot be read."""
    try:
        # Field 22 of /proc/self/stat (start time, in clock ticks after boot); the fields after
        # the command name's ")" begin at field 3.
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
