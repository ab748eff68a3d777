"""The invariants of docs/design.md, checked against a deployment's rows and objects.

Whatever crashed or went down meanwhile, once the loop has settled: every attempt is terminal,
once; every judged attempt has exactly one judgment; every object a row references exists and
holds the bytes its content address (or its checkpoint manifest) says; no unreferenced object
outlives the gc grace period; every training job ended, a failed one with its reason; every
promoted checkpoint loads; the metrics stored on every finished round equal a recomputation from
its rows. Used by `editloop check`, the fault tests and the chaos soak (`bench/chaos.py`).
"""

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from loop.gc import collect_garbage, referenced_keys
from loop.metrics import round_metrics, round_records
from store.keys import CHECKPOINT_MANIFEST, CHECKPOINT_PREFIX
from store.models import (
    Attempt,
    AttemptStatus,
    Checkpoint,
    CheckpointRole,
    CheckpointStatus,
    Judgment,
    Round,
    RoundStatus,
    TrainJob,
    TrainJobStatus,
)
from store.objects import ObjectNotFound, ObjectStore

TERMINAL = (AttemptStatus.JUDGED, AttemptStatus.FAILED)
# Measured against the clock when the round finished: a recomputation cannot reproduce them.
CLOCK_METRICS = {"round/wall_seconds", "throughput/attempts_per_s"}


@dataclass(frozen=True)
class InvariantCheck:
    """One invariant: whether it holds, how many things were checked, and the violations."""

    name: str
    checked: int
    violations: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.violations


def check_invariants(
    factory: sessionmaker[Session],
    store: ObjectStore,
    *,
    grace: timedelta = timedelta(hours=1),
    load_checkpoint: Callable[[Checkpoint], object] | None = None,
) -> list[InvariantCheck]:
    """Every invariant, checked now; `load_checkpoint(row)` raises when a checkpoint does not
    load (None: that check is left out)."""
    with factory() as session:
        checks = [
            _attempts_terminal_once(session),
            _one_judgment_per_judged_attempt(session),
            _referenced_objects_intact(session, store),
            _checkpoint_files_intact(session, store),
            _train_jobs_ended(session),
            _metrics_match_rows(session),
        ]
        promoted = session.scalars(
            # `load_checkpoint` loads editors: judge and reflector checkpoints are not its kind.
            select(Checkpoint).where(
                Checkpoint.status == CheckpointStatus.PROMOTED,
                Checkpoint.role == CheckpointRole.EDITOR.value,
            )
        ).all()
    checks.append(_no_stale_garbage(factory, store, grace))
    if load_checkpoint is not None:
        checks.append(_promoted_checkpoints_load(promoted, load_checkpoint))
    return checks


def _attempts_terminal_once(session: Session) -> InvariantCheck:
    attempts = session.execute(
        select(Attempt.id, Attempt.status, Attempt.round_id, Attempt.task_id, Attempt.sample_index,
               Attempt.depth)
    ).all()  # fmt: skip
    keys = Counter((a.round_id, a.task_id, a.sample_index, a.depth) for a in attempts)
    violations = [
        f"attempt {a.id} is {a.status.value}" for a in attempts if a.status not in TERMINAL
    ]
    violations += [f"attempt key {key} exists {n} times" for key, n in keys.items() if n > 1]
    return InvariantCheck("every attempt terminal, once", len(attempts), tuple(violations))


def _one_judgment_per_judged_attempt(session: Session) -> InvariantCheck:
    rows = session.execute(
        select(Attempt.id, Attempt.status, func.count(Judgment.id))
        .outerjoin(Judgment, Judgment.attempt_id == Attempt.id)
        .group_by(Attempt.id, Attempt.status)
    ).all()
    violations = []
    for attempt_id, status, judgments in rows:
        expected = 1 if status == AttemptStatus.JUDGED else 0
        if judgments != expected:
            violations.append(f"attempt {attempt_id} ({status.value}) has {judgments} judgments")
    return InvariantCheck("one judgment per judged attempt", len(rows), tuple(violations))


def _referenced_objects_intact(session: Session, store: ObjectStore) -> InvariantCheck:
    keys = sorted(referenced_keys(session))
    violations = []
    for key in keys:
        try:
            data = store.get(key)
        except ObjectNotFound:
            violations.append(f"{key} is referenced but missing")
            continue
        # Images are content-addressed: `prefix/ab/<sha256>.png`.
        digest = key.rsplit("/", 1)[-1].split(".", 1)[0]
        if hashlib.sha256(data).hexdigest() != digest:
            violations.append(f"{key} does not hold the bytes its name says")
    return InvariantCheck("referenced images exist, checksums match", len(keys), tuple(violations))


def _checkpoint_files_intact(session: Session, store: ObjectStore) -> InvariantCheck:
    prefixes = session.scalars(
        select(Checkpoint.object_prefix).where(Checkpoint.object_prefix.is_not(None))
    ).all()
    violations = []
    files = 0
    for prefix in prefixes:
        try:
            manifest = json.loads(store.get(f"{prefix}/{CHECKPOINT_MANIFEST}"))
        except ObjectNotFound:
            violations.append(f"{prefix} has no {CHECKPOINT_MANIFEST}")
            continue
        for entry in manifest["files"]:
            files += 1
            try:
                data = store.get(f"{prefix}/{entry['path']}")
            except ObjectNotFound:
                violations.append(f"{prefix}/{entry['path']} is missing")
                continue
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                violations.append(f"{prefix}/{entry['path']} differs from its manifest")
    return InvariantCheck("checkpoint files match their manifests", files, tuple(violations))


def _no_stale_garbage(
    factory: sessionmaker[Session], store: ObjectStore, grace: timedelta
) -> InvariantCheck:
    garbage = collect_garbage(factory, store, grace=grace, dry_run=True)
    listed = sum(
        1 for prefix in ("sources/", "edits/", f"{CHECKPOINT_PREFIX}/") for _ in store.list(prefix)
    )
    violations = [f"{key} is unreferenced and older than {grace}" for key in garbage]
    return InvariantCheck(
        "no unreferenced object older than the gc grace", listed, tuple(violations)
    )


def _train_jobs_ended(session: Session) -> InvariantCheck:
    jobs = session.scalars(select(TrainJob)).all()
    violations = []
    for job in jobs:
        if job.status not in (TrainJobStatus.FINISHED, TrainJobStatus.FAILED):
            violations.append(f"train job {job.id} is {job.status.value}")
        elif job.status == TrainJobStatus.FAILED and not job.error:
            violations.append(f"train job {job.id} failed without a reason")
    return InvariantCheck(
        "every train job finished or failed with a reason", len(jobs), tuple(violations)
    )


def _metrics_match_rows(session: Session) -> InvariantCheck:
    rounds = session.scalars(select(Round).where(Round.status == RoundStatus.FINISHED)).all()
    violations = []
    for round_ in rounds:
        recomputed = round_metrics(round_records(session, round_id=round_.id), wall_seconds=1.0)
        stored = dict(round_.metrics)
        for key in sorted((set(recomputed) | set(stored)) - CLOCK_METRICS):
            if (
                key not in stored
                or key not in recomputed
                or abs(stored[key] - recomputed[key]) > 1e-9
            ):
                said = f"stored {stored.get(key)}, rows say {recomputed.get(key)}"
                violations.append(f"round {round_.id}: {key} {said}")
    return InvariantCheck("round metrics equal their rows", len(rounds), tuple(violations))


def _promoted_checkpoints_load(
    promoted: list[Checkpoint], load: Callable[[Checkpoint], object]
) -> InvariantCheck:
    violations = []
    for checkpoint in promoted:
        try:
            load(checkpoint)
        except Exception as exc:  # noqa: BLE001 - any failure to load is the violation
            violations.append(f"checkpoint {checkpoint.version} does not load: {exc}")
    return InvariantCheck("every promoted checkpoint loads", len(promoted), tuple(violations))
