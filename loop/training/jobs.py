"""`editloop trainer`: claim training jobs, run the recipe under a launcher, publish, gate.

For each claimed job (`lease`): prepare the job folder once (the pool at preparation time, the
recipe's config), run the recipe under its launcher (`launcher`) while the lease is renewed, then
publish the checkpoint atomically (`publish`) and gate it on the held-out set (`gate`). If the
trainer dies, its launcher dies with it and the lease lapses; the next trainer to claim the job
finds the job folder and the recipe resumes from the last DeepSpeed checkpoint. The job folder
holds everything a resumption needs, written once:

    job-000042/job.json            parent checkpoint, data filter, example counts
    job-000042/manifest.jsonl      the examples (the pool at preparation time, not later)
    job-000042/train_config.json   the recipe's TrainConfig
    job-000042/run/                the recipe's output_dir (DeepSpeed checkpoints, loss log, final/)
    job-000042/launcher.log        the ranks' output, appended by each launch
"""

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from loop.checkpoints import latest_promoted
from loop.training.gate import gate_checkpoint, load_eval_tasks
from loop.training.launcher import (
    job_folder,
    launch_command,
    log_tail,
    node_log_name,
    run_launcher,
)
from loop.training.lease import LeaseKeeper, claim_job, end_job
from loop.training.pool import (
    PoolFilter,
    count_by_kind,
    load_pool_records,
    select_examples,
    staleness_of,
)
from loop.training.publish import content_version, folder_files, publish_checkpoint
from policies.checkpoints import fetch_checkpoint
from policies.training.config import TrainConfig
from policies.training.data import write_manifest
from policies.training.layout import FINAL_DIR, read_final, read_progress
from policies.training.settings import TrainingSettings
from policies.types import Editor
from rewards.types import Scorer
from store.db import DatabaseUnavailable
from store.models import Checkpoint, Task, TrainJob, TrainJobStatus
from store.objects import ObjectStore, StoreUnavailable

log = logging.getLogger(__name__)


@dataclass
class TrainerParts:
    """What a trainer needs, built by the composition root (`loop.runtime.build_trainer_parts`)."""

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
    # Frees what editor_for, verify and load_scorer loaded; called after every job so that the
    # next job's ranks get the GPU memory (`loop.training.models.GateModels.release`).
    release: Callable[[], None] = lambda: None


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
    staleness: dict[str, float] = field(default_factory=dict)  # of the examples' edits


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
        records = load_pool_records(session, pool_filter)
        examples = select_examples(records, pool_filter)
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
        "staleness": staleness_of(records, pool_filter),
    }
    # Written last: its presence means the folder is complete.
    tmp = folder / ".job.json.tmp"
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(job_file)
    return PreparedJob(folder=folder, config_path=folder / "train_config.json", **data)


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
                code = run_launcher(
                    launch_command(settings, prepared.config_path),
                    prepared.folder,
                    env=parts.env,
                    lost=lease.lost,
                )
                if code is None:
                    return "lost"
                if code != 0 or read_final(run_dir) is None:
                    raise RuntimeError(
                        f"the training launcher exited with code {code}; last lines of "
                        f"{prepared.folder / 'launcher.log'}:\n{log_tail(prepared.folder)}"
                    )
            if lease.lost.is_set():
                return "lost"
            try:
                checkpoint_id = _publish_and_gate(parts, prepared, run_dir)
            finally:
                parts.release()
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
        **prepared.staleness,
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
    return as soon as no job is claimable. Returns (job id, outcome) of each job processed.
    On a node other than node 0 (`node_rank` > 0) the trainer follows instead (`follow_jobs`)."""
    if parts.settings.node_rank > 0:
        return follow_jobs(parts, max_jobs=max_jobs, wait=wait, should_stop=should_stop)
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


def job_to_follow(
    factory: sessionmaker[Session], work_dir: Path, launched: set[tuple[int, int]]
) -> tuple[int, int] | None:
    """The (job id, claims) a follower node should join: a running job whose folder node 0
    prepared (`job.json`), whose run has not finished, and that this node has not launched for
    this claim yet (a new claim by node 0 is a new launch to join)."""
    with factory() as session:
        rows = session.execute(
            select(TrainJob.id, TrainJob.claims)
            .where(TrainJob.status == TrainJobStatus.RUNNING)
            .order_by(TrainJob.id)
        ).all()
    for job_id, claims in rows:
        folder = job_folder(work_dir, job_id)
        if (job_id, claims) in launched or not (folder / "job.json").is_file():
            continue
        if read_final(folder / "run") is None:
            return job_id, claims
    return None


def follow_jobs(
    parts: TrainerParts,
    *,
    max_jobs: int | None = None,
    wait: bool = True,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[tuple[int, str]]:
    """A follower node's trainer (`node_rank` > 0): join the jobs node 0 runs, with this node's
    ranks (`launch_command`), in the shared work_dir. Node 0 holds the lease, publishes and
    gates; a follower only trains. Returns (job id, "joined" or "failed: exit code N")."""
    settings = parts.settings
    done: list[tuple[int, str]] = []
    launched: set[tuple[int, int]] = set()
    while not should_stop() and (max_jobs is None or len(done) < max_jobs):
        found = job_to_follow(parts.factory, parts.work_dir, launched)
        if found is None:
            if not wait:
                break
            time.sleep(settings.poll_s)
            continue
        launched.add(found)
        job_id = found[0]
        folder = job_folder(parts.work_dir, job_id)
        log.info("node %d joins job %d", settings.node_rank, job_id)
        code = run_launcher(
            launch_command(settings, folder / "train_config.json"),
            folder,
            env=parts.env,
            lost=threading.Event(),
            log_name=node_log_name(settings.node_rank),
        )
        done.append((job_id, "joined" if code == 0 else f"failed: exit code {code}"))
    return done
