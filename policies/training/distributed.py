"""A training rank's process group: joined under a launcher, created alone without one; a rank dies
with its launcher."""

import os
import socket
from dataclasses import dataclass

import deepspeed
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """This rank in its process group, and its device."""

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool  # created here, so destroyed at the end of the run


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def setup_distributed() -> Dist:
    """Join (or, without a launcher, create) the process group; one device per rank. A caller
    that set the group up itself (several runs in one process) keeps it after each run."""
    if "RANK" not in os.environ:
        # A plain `python -m ...` run: a world of one.
        os.environ.update(
            RANK="0",
            LOCAL_RANK="0",
            WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())),
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    owns_group = not dist.is_initialized()
    if owns_group:
        deepspeed.init_distributed(dist_backend=backend)
    return Dist(
        rank=dist.get_rank(), world_size=dist.get_world_size(), device=device, owns_group=owns_group
    )
