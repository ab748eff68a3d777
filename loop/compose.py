"""A node's GPU services for docker compose: one worker service per GPU (and the trainer's GPUs),
written as an override file of the repository's docker-compose.yml.

Each service `extends` the base file's `worker-gpu0` (or `trainer`), so the image, settings,
volumes and dependencies stay defined in one place; only the command, the probe and the GPU
reservation differ. The reservation is replaced (`!override`), not appended to the base's: a
`count: 1` reservation or an appended list would put several services on one GPU.
"""

from collections.abc import Sequence

QUEUES = {"both": "edit,judge", "edit": "edit", "judge": "judge"}


def worker_service(gpu: int, queues: str, base: str) -> str:
    """The YAML of the worker service on GPU `gpu` consuming `queues` (edit, judge or both)."""
    host = f"gpu{gpu}@%h" if queues == "both" else f"{queues}-gpu{gpu}@%h"
    return f"""  worker-gpu{gpu}:
    extends:
      file: {base}
      service: worker-gpu0
    command:
      ["worker", "--queues", "{QUEUES[queues]}", "--device", "cuda:0", "--hostname", "{host}"]
    healthcheck:
      test: ["CMD", "editloop", "worker", "ping", "--hostname", "{host}"]
    deploy:
      resources:
        reservations:
          devices: !override
            - driver: nvidia
              device_ids: ["{gpu}"]
              capabilities: [gpu]
"""


def trainer_service(gpus: Sequence[int], base: str) -> str:
    """The YAML of the trainer on `gpus`, one rank per GPU."""
    ids = ", ".join(f'"{gpu}"' for gpu in gpus)
    return f"""  trainer:
    extends:
      file: {base}
      service: trainer
    environment:
      EDITLOOP_TRAINING__NPROC_PER_NODE: "{len(gpus)}"
    deploy:
      resources:
        reservations:
          devices: !override
            - driver: nvidia
              device_ids: [{ids}]
              capabilities: [gpu]
"""


def gpu_override(
    gpus: Sequence[int],
    *,
    judge_gpus: Sequence[int] = (),
    trainer_gpus: Sequence[int] = (),
    base: str = "docker-compose.yml",
) -> str:
    """The override file: a worker on every GPU of `gpus` (judge-only on `judge_gpus`, edit-only
    on the others when some are judge-only, both queues otherwise), and the trainer on
    `trainer_gpus` when given. ValueError for a GPU given twice or a judge GPU not in `gpus`."""
    if not gpus:
        raise ValueError("gpus is empty: name at least one GPU, e.g. 0,1")
    for name, ids in (("gpus", gpus), ("judge GPUs", judge_gpus), ("trainer GPUs", trainer_gpus)):
        if len(set(ids)) != len(ids) or any(gpu < 0 for gpu in ids):
            raise ValueError(f"{name} {list(ids)}: each GPU once, as a device index >= 0")
    if set(judge_gpus) - set(gpus):
        raise ValueError(
            f"judge GPUs {sorted(set(judge_gpus) - set(gpus))} are not in {list(gpus)}"
        )
    if set(trainer_gpus) & set(gpus):
        raise ValueError(
            f"GPUs {sorted(set(trainer_gpus) & set(gpus))} are given to workers and the trainer"
        )
    services = []
    for gpu in gpus:
        queues = "both" if not judge_gpus else "judge" if gpu in judge_gpus else "edit"
        services.append(worker_service(gpu, queues, base))
    if 0 not in gpus:
        # The base file's worker sits on GPU 0, which this node keeps for something else: the
        # profile keeps it from starting (the others still extend its definition).
        services.append('  worker-gpu0:\n    profiles: ["gpu0-unused"]\n')
    if trainer_gpus:
        services.append(trainer_service(trainer_gpus, base))
    header = (
        "# Written by `editloop compose gpus`: one worker service per GPU of this node.\n"
        f"# docker compose -f {base} -f <this file> up\n"
    )
    return header + "services:\n" + "".join(services)
