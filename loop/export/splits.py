"""Deterministic train/validation splits by task: every row of one task lands in one split."""

import hashlib

TRAIN = "train"
VALIDATION = "validation"
SPLITS = (TRAIN, VALIDATION)


def split_of(task_id: int, *, seed: int, val_fraction: float) -> str:
    """`validation` for about `val_fraction` of the tasks, chosen by a hash of (seed, task id);
    the same arguments always give the same split."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction}: must be in [0, 1)")
    digest = hashlib.sha256(f"{seed}:{task_id}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    return VALIDATION if position < val_fraction else TRAIN
