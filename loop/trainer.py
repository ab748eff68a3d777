"""`editloop trainer`: claim training jobs, run the recipe under a launcher, publish, gate.

Training outlives any broker's redelivery timeout, so it is not a Celery task: a trainer claims
a `train_job` row (`SELECT … FOR UPDATE SKIP LOCKED`, then a conditional UPDATE, which is also
the whole claim on SQLite, where there are no row locks) and holds a lease that a background
thread renews while the launcher runs as a subprocess, recording the recipe's progress step. If
the trainer dies, its launcher dies with it (parent-death signal) and the lease lapses; the next
trainer to claim the job finds the job folder and the recipe resumes from the last DeepSpeed
checkpoint. A job whose trainer keeps dying (OOM, say) is not re-claimed forever: once it was
claimed `max_claims` times, the next claimer marks it failed instead. The job folder holds
everything a resumption needs, written once:

    job-000042/job.json            parent checkpoint, data filter, example counts
    job-000042/manifest.jsonl      the examples (the pool at preparation time, not later)
    job-000042/train_config.json   the recipe's TrainConfig
    job-000042/run/                the recipe's output_dir (DeepSpeed checkpoints, loss log, final/)
    job-000042/launcher.log        the ranks' output, appended by each launch
"""

import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from loop.gate import gate_checkpoint, load_eval_tasks
from loop.pool import PoolFilter, count_by_kind, pool_examples
from loop.publish import content_version, folder_files, publish_checkpoint
from policies.checkpoints import fetch_checkpoint
from policies.training.config import TrainConfig
from policies.training.data import write_manifest
from policies.training.layout import DIE_WITH_PARENT_ENV, FINAL_DIR, read_final, read_progress
from policies.training.settings import TrainingSettings
from policies.types import Editor
from rewards.types import Scorer
from store.db import DatabaseUnavailable, with_db_retry
from store.models import Checkpoint, CheckpointStatus, Task, TrainJob, TrainJobStatus, utcnow
from store.objects import ObjectStore, StoreUnavailable

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


@dataclass
class TrainerParts:
    """What a trainer needs, built by the composition root (`loop.train_command`)."""

    factory: sessionmaker[Session]
    store: ObjectStore
    settings: TrainingSettings
    work_dir: Path  # folder of job folders
    model: str  # the base editor folder every job starts from
    cache_dir: Path  # where parent checkpoints are fetched to
    editor_for: Callable[[Checkpoint | None], Editor]  # the gate's editor at a checkpoint
    verify: Callable[[Path], None]  # raises unless a checkpoint folder loads in the editor
    load_scorer: Callable[[], Scorer]
    env: dict[str, str] = field(default_factory=dict)  # extra launcher environment


# ---- claim and lease -------------------------------------------------------------------------


def _claimable(now: Any) -> Any:
    return or_(
        TrainJob.status == TrainJobStatus.QUEUED,
        and_(TrainJob.status == TrainJobStatus.RUNNING, TrainJob.lease_expires_at < now),
    )


def claim_job(
    factory: sessionmaker[Session], *, owner: str, lease_s: float, max_claims: int
) -> int | None:
    """Claim the oldest queued job, or a running one whose lease lapsed; its id, or None.

    A claimable job already claimed `max_claims` times is marked failed instead (its trainer
    keeps dying), and the next one is looked at."""
    if max_claims <= 0:
        raise ValueError(f"max_claims={max_claims}: at least 1 (training.max_claims)")

    def claim() -> int | None:
        races = 0
        # One row locked at a time: locking several would hide all of them from the other
        # claimers (SKIP LOCKED) while this one takes only the first.
        while races < 8:
            now = utcnow()
            with factory() as session, session.begin():
                row = session.execute(
                    select(TrainJob.id, TrainJob.claims)
                    .where(_claimable(now))
                    .order_by(TrainJob.id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).first()
                if row is None:
                    return None
                job_id, claims = row
                # The condition again in each UPDATE: on SQLite (no row locks) it is the claim.
                if claims >= max_claims:
                    failed = session.execute(
                        update(TrainJob)
                        .where(
                            TrainJob.id == job_id, _claimable(now), TrainJob.claims >= max_claims
                        )
                        .values(
                            status=TrainJobStatus.FAILED,
                            lease_expires_at=None,
                            error=_kept_dying(job_id, claims, max_claims),
                        )
                    )
                    if failed.rowcount == 1:
                        log.warning("job %d: claimed %d times, marked failed", job_id, claims)
                        # Not a race: one claimable job fewer. Look at the next one.
                        continue
                else:
                    claimed = session.execute(
                        update(TrainJob)
                        .where(TrainJob.id == job_id, _claimable(now), TrainJob.claims < max_claims)
                        .values(
                            status=TrainJobStatus.RUNNING,
                            lease_owner=owner,
                            lease_expires_at=now + timedelta(seconds=lease_s),
                            claims=TrainJob.claims + 1,
                        )
                    )
                    if claimed.rowcount == 1:
                        return job_id
            # Another claimer took it between our SELECT and our UPDATE (SQLite): look again.
            races += 1
        return None

    return with_db_retry(claim, what="claiming a train job")


def _kept_dying(job_id: int, claims: int, max_claims: int) -> str:
    log_file = job_folder(Path(), job_id) / "launcher.log"
    return (
        f"claimed {claims} times (training.max_claims={max_claims}) and its trainer kept dying "
        f"before the job ended (out of memory? killed?): read the last launcher log, {log_file} "
        "in the trainer's work_dir, and fix the cause (out of memory: a smaller "
        "recipe.micro_batch_size or zero_stage 3), or raise training.max_claims"
    )


def renew_lease(
    factory: sessionmaker[Session],
    job_id: int,
    *,
    owner: str,
    lease_s: float,
    progress_step: int | None = None,
) -> bool:
    """Extend the lease (and record progress); False when the job is no longer ours."""
    values: dict[str, Any] = {"lease_expires_at": utcnow() + timedelta(seconds=lease_s)}
    if progress_step is not None:
        values["progress_step"] = progress_step
    return _update_held_job(factory, job_id, owner, values)


def end_job(
    factory: sessionmaker[Session],
    job_id: int,
    *,
    owner: str,
    status: TrainJobStatus,
    error: str | None = None,
    progress_step: int | None = None,
) -> bool:
    """Set a job we hold to `status` (queued releases it for another try); False if not ours."""
    values: dict[str, Any] = {"status": status, "error": error, "lease_expires_at": None}
    if status == TrainJobStatus.QUEUED:
        values["lease_owner"] = None
        # A release is not a death: the claim is given back, so that transient failures (the
        # store down) do not count towards `max_claims`.
        values["claims"] = TrainJob.claims - 1
    if progress_step is not None:
        values["progress_step"] = progress_step
    return _update_held_job(factory, job_id, owner, values)


def _update_held_job(
    factory: sessionmaker[Session], job_id: int, owner: str, values: dict[str, Any]
) -> bool:
    """Update a running job only while `owner` holds it; False when it is no longer ours."""
    with factory() as session, session.begin():
        changed = session.execute(
            update(TrainJob)
            .where(
                TrainJob.id == job_id,
                TrainJob.lease_owner == owner,
                TrainJob.status == TrainJobStatus.RUNNING,
            )
            .values(**values)
        )
        return changed.rowcount == 1


class LeaseKeeper:
    """A thread renewing a job's lease every `renew_s` with the step read from `progress`.

    `lost` is set when the job was taken from us, or when no renewal succeeded for a whole lease
    (the database unreachable: by then another trainer may hold it).
    """

    def __init__(
        self,
        factory: sessionmaker[Session],
        job_id: int,
        *,
        owner: str,
        lease_s: float,
        renew_s: float,
        progress: Callable[[], int | None],
    ) -> None:
        self.factory = factory
        self.job_id = job_id
        self.owner = owner
        self.lease_s = lease_s
        self.renew_s = renew_s
        self.progress = progress
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        last_renewed = time.monotonic()
        while not self._stop.wait(self.renew_s):
            try:
                ours = renew_lease(
                    self.factory,
                    self.job_id,
                    owner=self.owner,
                    lease_s=self.lease_s,
                    progress_step=self.progress(),
                )
            except Exception:  # noqa: BLE001 - keep trying until the lease is surely gone
                log.warning("renewing the lease of job %d failed", self.job_id, exc_info=True)
                if time.monotonic() - last_renewed > self.lease_s:
                    self.lost.set()
                    return
                continue
            if not ours:
                log.warning("job %d was taken over by another trainer", self.job_id)
                self.lost.set()
                return
            last_renewed = time.monotonic()


# ---- preparing a job -------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedJob:
    """A job folder's fixed inputs (`job.json`)."""

    job_id: int
    folder: Path
    config_path: Path
    parent_id: int | None
    data_filter: dict[str, Any]
    sample_count: int
    counts: dict[str, int]


def job_folder(work_dir: Path, job_id: int) -> Path:
    return work_dir / f"job-{job_id:06d}"


def latest_promoted(session: Session) -> Checkpoint | None:
    """The checkpoint rounds edit with now (the controller's rule): the latest promoted one."""
    return session.scalar(
        select(Checkpoint)
        .where(Checkpoint.status == CheckpointStatus.PROMOTED)
        .order_by(Checkpoint.id.desc())
        .limit(1)
    )


def job_filter(settings: TrainingSettings, data_filter: dict[str, Any]) -> PoolFilter:
    """The job's pool filter: its own keys over the trainer's defaults; the held-out origin is
    always excluded."""
    defaults = {
        "hindsight": settings.hindsight,
        "direct": settings.direct,
        "min_overall": settings.min_overall,
        "max_depth": settings.max_depth,
        "unfiltered": settings.unfiltered,
    }
    merged = PoolFilter.from_dict({**defaults, **data_filter})
    excluded = tuple(sorted({*merged.exclude_origins, settings.eval_origin}))
    return PoolFilter.from_dict({**merged.to_dict(), "exclude_origins": list(excluded)})


def prepare_job(parts: TrainerParts, job_id: int) -> PreparedJob:
    """The job folder's inputs, written on first claim and read back on every later one."""
    folder = job_folder(parts.work_dir, job_id)
    job_file = folder / "job.json"
    if job_file.is_file():
        data = json.loads(job_file.read_text())
        return PreparedJob(folder=folder, config_path=folder / "train_config.json", **data)
    folder.mkdir(parents=True, exist_ok=True)
    with parts.factory() as session:
        job = session.get_one(TrainJob, job_id)
        pool_filter = job_filter(parts.settings, job.data_filter)
        examples = pool_examples(session, pool_filter)
        parent = latest_promoted(session)
        held_out = session.scalar(
            select(func.count()).select_from(Task).where(Task.origin == parts.settings.eval_origin)
        )
    if not held_out:
        # Checked before training: without them the gate could never decide.
        raise ValueError(
            f"no held-out tasks with origin {parts.settings.eval_origin!r} for the gate: ingest "
            f"some with `editloop ingest PATH --origin {parts.settings.eval_origin}`"
        )
    if not examples:
        raise ValueError(f"job {job_id}: no accepted examples match {pool_filter.to_dict()}")
    write_manifest(folder / "manifest.jsonl", examples)
    init_checkpoint = ""
    if parent is not None:
        if not parent.object_prefix:
            raise ValueError(f"parent checkpoint {parent.version} has no object prefix")
        init_checkpoint = str(fetch_checkpoint(parts.store, parent.object_prefix, parts.cache_dir))
    config = TrainConfig(
        **{
            **parts.settings.recipe,
            "model": parts.model,
            "manifest": str(folder / "manifest.jsonl"),
            "output_dir": str(folder / "run"),
            "init_checkpoint": init_checkpoint,
        }
    )
    (folder / "train_config.json").write_text(config.to_json())
    data = {
        "job_id": job_id,
        "parent_id": parent.id if parent is not None else None,
        "data_filter": pool_filter.to_dict(),
        "sample_count": len(examples),
        "counts": count_by_kind(examples),
    }
    # Written last: its presence means the folder is complete.
    tmp = folder / ".job.json.tmp"
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(job_file)
    return PreparedJob(folder=folder, config_path=folder / "train_config.json", **data)


# ---- launching -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(settings: TrainingSettings, config_path: Path) -> list[str]:
    """The command that starts every rank of the recipe on this node."""
    python = sys.executable
    module = ["loop.train_command", str(config_path)]
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


def run_launcher(parts: TrainerParts, prepared: PreparedJob, lease: LeaseKeeper) -> int | None:
    """Run the recipe's launcher to the end; its exit code, or None if the lease was lost."""
    command = launch_command(parts.settings, prepared.config_path)
    env = {**os.environ, **parts.env, DIE_WITH_PARENT_ENV: "1", "PYTHONUNBUFFERED": "1"}
    with (prepared.folder / "launcher.log").open("ab") as output:
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
    (prepared.folder / "launcher.pid").write_text(str(process.pid))
    try:
        while process.poll() is None:
            if lease.lost.wait(0.2):
                log.warning("job %d: lease lost, stopping its launcher", prepared.job_id)
                _stop_group(process)
                return None
        return process.returncode
    finally:
        if process.poll() is None:  # the trainer itself is stopping (an exception, Ctrl-C)
            _stop_group(process)


def _log_tail(folder: Path, lines: int = 20) -> str:
    try:
        return "\n".join(
            (folder / "launcher.log").read_text(errors="replace").splitlines()[-lines:]
        )
    except FileNotFoundError:
        return ""


# ---- one job, and the loop -------------------------------------------------------------------


def process_job(parts: TrainerParts, job_id: int, *, owner: str) -> str:
    """Train, publish and gate a job we claimed; returns what happened (finished, failed,
    requeued, lost)."""
    settings = parts.settings
    run_dir = job_folder(parts.work_dir, job_id) / "run"
    lease = LeaseKeeper(
        parts.factory,
        job_id,
        owner=owner,
        lease_s=settings.lease_s,
        renew_s=settings.renew_s,
        progress=lambda: read_progress(run_dir),
    )
    with lease:
        try:
            prepared = prepare_job(parts, job_id)
            if read_final(run_dir) is None:
                code = run_launcher(parts, prepared, lease)
                if code is None:
                    return "lost"
                if code != 0 or read_final(run_dir) is None:
                    raise RuntimeError(
                        f"the training launcher exited with code {code}; last lines of "
                        f"{prepared.folder / 'launcher.log'}:\n{_log_tail(prepared.folder)}"
                    )
            if lease.lost.is_set():
                return "lost"
            checkpoint_id = _publish_and_gate(parts, prepared, run_dir)
        except (StoreUnavailable, DatabaseUnavailable) as exc:
            # Transient: the job folder keeps the work; another try publishes it.
            log.warning("job %d: %s; released for a later try", job_id, exc)
            end_job(
                parts.factory, job_id, owner=owner, status=TrainJobStatus.QUEUED, error=str(exc)
            )
            return "requeued"
        except Exception as exc:  # noqa: BLE001 - recorded on the job; the trainer goes on
            log.exception("job %d failed", job_id)
            end_job(
                parts.factory,
                job_id,
                owner=owner,
                status=TrainJobStatus.FAILED,
                error=f"{type(exc).__name__}: {exc}",
            )
            return "failed"
    ended = end_job(
        parts.factory,
        job_id,
        owner=owner,
        status=TrainJobStatus.FINISHED,
        progress_step=read_progress(run_dir),
    )
    log.info("job %d: checkpoint %d published and gated", job_id, checkpoint_id)
    return "finished" if ended else "lost"


def _publish_and_gate(parts: TrainerParts, prepared: PreparedJob, run_dir: Path) -> int:
    result = read_final(run_dir)
    assert result is not None
    final = run_dir / FINAL_DIR
    version = content_version(f"job{prepared.job_id}", folder_files(final))
    train_metrics = {
        **result.metrics,
        **{f"train/examples_{kind}": float(n) for kind, n in prepared.counts.items()},
        "train/objective": result.objective,
    }
    checkpoint_id = publish_checkpoint(
        factory=parts.factory,
        store=parts.store,
        folder=final,
        version=version,
        parent_id=prepared.parent_id,
        kind=result.kind,
        data_filter=prepared.data_filter,
        sample_count=prepared.sample_count,
        train_metrics=train_metrics,
        verify=parts.verify,
        job_id=prepared.job_id,
    )
    settings = parts.settings
    with parts.factory() as session:
        tasks = load_eval_tasks(
            session,
            parts.store,
            origin=settings.eval_origin,
            limit=settings.eval_tasks,
            seed=settings.eval_seed,
        )
    if not tasks:
        raise ValueError(
            f"no held-out tasks with origin {settings.eval_origin!r} for the gate: ingest some "
            f"with `editloop ingest PATH --origin {settings.eval_origin}`"
        )
    gate_checkpoint(
        factory=parts.factory,
        checkpoint_id=checkpoint_id,
        editor_for=parts.editor_for,
        scorer=parts.load_scorer(),
        tasks=tasks,
        margin=settings.eval_margin,
    )
    return checkpoint_id


def run_trainer(
    parts: TrainerParts,
    *,
    owner: str,
    max_jobs: int | None = None,
    wait: bool = True,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[tuple[int, str]]:
    """Claim and process jobs until `max_jobs` were processed or `should_stop()`; without `wait`,
    return as soon as no job is claimable. Returns (job id, outcome) of each job processed."""
    done: list[tuple[int, str]] = []
    while not should_stop() and (max_jobs is None or len(done) < max_jobs):
        job_id = claim_job(
            parts.factory,
            owner=owner,
            lease_s=parts.settings.lease_s,
            max_claims=parts.settings.max_claims,
        )
        if job_id is not None:
            log.info("trainer %s claimed job %d", owner, job_id)
            done.append((job_id, process_job(parts, job_id, owner=owner)))
        elif not wait:
            break
        else:
            time.sleep(parts.settings.poll_s)
    return done
