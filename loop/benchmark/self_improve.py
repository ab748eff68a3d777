"""`editloop bench self-improve`: does the loop make an editor better? Measured in the shapes world.

The hindsight experiment (docs/design.md, "Learning from judged edits") on the real loop: a pixel
editor pre-trained on single operations only edits compound (two-operation) instructions; the exact
judges label its edits; the trainer fine-tunes it with DeepSpeed on what each arm keeps, the gate
promotes or rejects the result, and the next round edits with the latest promoted checkpoint. The
arms start from the same pre-trained weights and get the same fine-tuning budget:

- **hindsight**: reflection on (the rule reflector asks for the missing operation, applied to
  the previous output; `Failed` restarts from the source), trained on one-step successes and on
  hindsight examples of successful chains (source + original instruction → final image);
- **reject**: one step only, trained on the one-step successes (rejection sampling);
- **control**: one step only, trained on every sample, judged good or not.

After every round, each arm's current editor edits held-out compound and single-operation tasks
(fixed tasks and seeds, `policies.pixel_pretrain.evaluate_editor`): one-step compound success is
the skill the loop should create, single-operation success the one it must not lose.

Every arm is a full embedded deployment of its own under `<out>/arms/<arm>/` (SQLite, a local
object folder, Celery in eager mode, `editloop train` launched as a subprocess by the trainer),
so nothing but the arm's settings differs between arms.
"""

import json
import logging
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from loop.benchmark.config import (
    ARMS,
    HELDOUT_ORIGIN,
    TRAIN_ORIGIN,
    ArmFolders,
    Log,
    SelfImproveConfig,
)
from loop.benchmark.inputs import prepare_inputs
from loop.checkpoints import latest_promoted
from loop.controller import RunConfig, queue_train_job, run_loop
from loop.ingest import ingest_rows
from loop.runtime import build_trainer_parts, build_worker_context, load_editor
from loop.schema import ensure_schema
from loop.services import open_database, open_store
from loop.settings import Settings
from loop.sources import Columns, read_rows
from loop.training.jobs import run_trainer
from policies.pixel_editor import PixelEditor
from policies.pixel_pretrain import EvalReport, evaluate_editor
from policies.settings import EditorSettings
from policies.training.settings import TrainingSettings
from rewards.settings import JudgeSettings
from store.models import Checkpoint, Run, TrainJob
from store.objects import ObjectStore
from store.settings import StoreSettings
from workers.app import configure_celery
from workers.context import set_worker_context
from workers.dispatch import CeleryDispatcher
from workers.settings import WorkerSettings


@dataclass(frozen=True)
class RoundResult:
    """One arm after one round (round 0: the pre-trained editor, before any loop round)."""

    arm: str
    round: int
    evaluation: EvalReport
    checkpoint: str  # the version the arm edits with now ("base" before any promotion)
    loop: dict[str, float] = field(default_factory=dict)  # the loop round's stored metrics
    train: dict[str, Any] = field(default_factory=dict)  # job outcome, checkpoint and gate
    seconds: dict[str, float] = field(default_factory=dict)  # loop, train, eval


# ---- one arm -------------------------------------------------------------------------------


def arm_settings(config: SelfImproveConfig, arm: str, folders: ArmFolders) -> Settings:
    """The embedded settings of one arm (explicit sections: the caller's environment is not
    mixed in, so every arm runs the same way)."""
    spec = ARMS[arm]
    recipe = {
        "max_steps": config.finetune_steps,
        "micro_batch_size": config.batch_size,
        "learning_rate": config.finetune_lr,
        "resolution": config.editor.size,
        "seed": config.seed,
        "replay_manifest": str(folders.replay),
        "replay_fraction": config.replay_fraction,
        "save_every": 0,
        "num_workers": 0,  # 16x16 PNGs: loader processes would cost more than they save
        "progress_bar": False,
    }
    return Settings(
        data_dir=config.out_dir / "arms" / arm,
        store=StoreSettings(),
        editor=EditorSettings(model=str(folders.base_editor), batch_size=config.edit_batch_size),
        judge=JudgeSettings(backend="shapes", max_reflections=spec.max_reflections),
        worker=WorkerSettings(
            eager=True,
            edit_batch_size=config.edit_batch_size,
            judge_batch_size=config.edit_batch_size,
        ),
        training=TrainingSettings(
            launcher="none",
            recipe=recipe,
            hindsight=spec.hindsight,
            unfiltered=spec.unfiltered,
            eval_origin=HELDOUT_ORIGIN,
            eval_tasks=2 * config.gate_tasks,
            eval_margin=config.gate_margin,
            eval_seed=config.seed,
        ),
    )


def _launcher_env(settings: Settings) -> dict[str, str]:
    """What `editloop train` in the trainer's subprocess needs to find the arm's store."""
    return {
        "EDITLOOP_DATA_DIR": str(settings.data_dir),
        "EDITLOOP_STORE__BACKEND": "local",
        "EDITLOOP_STORE__DATABASE_URL": settings.store.database_url,
        "EDITLOOP_STORE__LOCAL_ROOT": str(settings.store.local_root),
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
    }


def _ingest_folder(
    settings: Settings,
    factory: sessionmaker[Session],
    store: ObjectStore,
    folder: Path,
    origin: str,
) -> None:
    rows, _ = read_rows(folder)
    report = ingest_rows(
        rows,
        session_factory=factory,
        store=store,
        limits=settings.store.image_limits(),
        origin=origin,
        columns=Columns(),
    )
    if report.problems:
        raise RuntimeError(f"ingesting {folder} rejected rows: {report.problems[:3]}")


def _train_summary(outcomes: list[tuple[int, str]], checkpoint: Checkpoint | None) -> dict:
    summary: dict[str, Any] = {"jobs": [outcome for _, outcome in outcomes]}
    if outcomes:
        summary["status"] = outcomes[-1][1]  # e.g. failed: nothing accepted to train on yet
    if checkpoint is not None:
        metrics = checkpoint.train_metrics or {}
        summary.update(
            checkpoint=checkpoint.version,
            status=checkpoint.status.value,
            examples={
                key.removeprefix("train/examples_"): value
                for key, value in metrics.items()
                if key.startswith("train/examples_")
            },
            gate_delta=(checkpoint.eval_metrics or {}).get("eval/delta_overall"),
        )
    return summary


def run_arm(
    config: SelfImproveConfig, arm: str, folders: ArmFolders, base: EvalReport, log: Log
) -> list[RoundResult]:
    """Run one arm from a fresh folder: its rounds, each followed by training and evaluation."""
    settings = arm_settings(config, arm, folders)
    shutil.rmtree(settings.data_dir, ignore_errors=True)
    settings.data_dir.mkdir(parents=True)
    ensure_schema(settings)
    factory = open_database(settings)
    store = open_store(settings)
    _ingest_folder(settings, factory, store, folders.train_tasks, TRAIN_ORIGIN)
    _ingest_folder(settings, factory, store, folders.gate_tasks, HELDOUT_ORIGIN)
    configure_celery(settings.worker)
    set_worker_context(build_worker_context(settings))
    parts = replace(build_trainer_parts(settings, settings.training), env=_launcher_env(settings))
    results = [RoundResult(arm, 0, base, "base")]
    run_name = f"self-improve-{arm}"
    clock = {"round_started": time.perf_counter()}

    def after_round(number: int, metrics: dict[str, float]) -> None:
        loop_s = time.perf_counter() - clock["round_started"]
        started = time.perf_counter()
        # Every round ends with a fine-tuning job (the same budget for every arm, as in the
        # experiment), whatever the pool grew by; the trainer runs it in this process's stead.
        with factory() as session:
            run_id = session.scalar(select(Run.id).where(Run.name == run_name))
        queue_train_job(factory, run_id, up_to_round=number)
        outcomes = run_trainer(parts, owner=f"bench-{arm}", wait=False)
        train_s = time.perf_counter() - started
        with factory() as session:
            current = latest_promoted(session)
            jobs = [session.get_one(TrainJob, job_id) for job_id, _ in outcomes]
            trained = [
                session.get_one(Checkpoint, j.checkpoint_id) for j in jobs if j.checkpoint_id
            ]
            started = time.perf_counter()
            evaluation = evaluate_editor(
                load_editor(settings, store, None, current), config.eval_tasks
            )
            result = RoundResult(
                arm=arm,
                round=number + 1,
                evaluation=evaluation,
                checkpoint=current.version if current is not None else "base",
                loop=metrics,
                train=_train_summary(outcomes, trained[-1] if trained else None),
                seconds={
                    "loop": loop_s,
                    "train": train_s,
                    "eval": time.perf_counter() - started,
                },
            )
        results.append(result)
        log(_round_line(result))
        clock["round_started"] = time.perf_counter()

    run_loop(
        factory=factory,
        dispatcher=CeleryDispatcher(),
        config=RunConfig(
            name=run_name,
            rounds=config.rounds,
            tasks_per_round=config.tasks_per_round,
            max_reflections=ARMS[arm].max_reflections,
            batch_size=config.edit_batch_size,
            poll_interval_s=0.05,
            train_min_new_samples=0,  # queued by `after_round`
            heldout_origin=HELDOUT_ORIGIN,
            seed=config.seed,
        ),
        on_round=after_round,
        retries=settings.store.retries,
    )
    set_worker_context(None)
    return results


def _run_arm_process(
    config: SelfImproveConfig, arm: str, folders: ArmFolders, base: EvalReport, threads: int
) -> list[RoundResult]:
    """`run_arm` in a process of its own (the arms share no state but their read-only inputs)."""
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, format=f"%(levelname)s [{arm}] %(message)s")
    return run_arm(config, arm, folders, base, lambda line: print(line, flush=True))


def _round_line(result: RoundResult) -> str:
    e = result.evaluation
    train = result.train
    return (
        f"[{result.arm} round {result.round}] compound {e.compound_success:.3f}, single "
        f"{e.single_op_success:.3f} | loop: chains {result.loop.get('chains/success_rate', 0):.2f}"
        f" | train: {train.get('status', 'no job')} {train.get('examples', {})}"
        f" | {', '.join(f'{k} {v:.0f}s' for k, v in result.seconds.items())}"
    )


# ---- the whole benchmark -------------------------------------------------------------------


def run_benchmark(config: SelfImproveConfig, log: Log = print) -> list[RoundResult]:
    """Every arm of `config`; writes `results.json` into `config.out_dir` and returns the rows."""
    started = time.perf_counter()
    config.out_dir.mkdir(parents=True, exist_ok=True)
    folders = prepare_inputs(config, log)
    base = evaluate_editor(PixelEditor.from_pretrained(folders.base_editor), config.eval_tasks)
    log(
        f"pre-trained editor: compound {base.compound_success:.3f}, single "
        f"{base.single_op_success:.3f} ({base.compound_one_op_done:.3f} of compound tasks with "
        "exactly one operation done)"
    )
    parallel = min(config.parallel_arms or len(config.arms), len(config.arms))
    threads = max(1, (os.cpu_count() or 1) // parallel) if parallel > 1 else torch.get_num_threads()
    for arm in config.arms:
        log(f"arm {arm}: {ARMS[arm].description}")
    if parallel == 1:
        runs = [run_arm(config, arm, folders, base, log) for arm in config.arms]
    else:
        log(f"running {parallel} arms at once, each in its own process with {threads} thread(s)")
        # Spawned, not forked: a forked child would inherit this process's torch thread pool.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=parallel, mp_context=context) as pool:
            futures = [
                pool.submit(_run_arm_process, config, arm, folders, base, threads)
                for arm in config.arms
            ]
            runs = [future.result() for future in futures]
    results = [result for run in runs for result in run]
    seconds = time.perf_counter() - started
    payload = {
        "config": {
            **asdict(config),
            "out_dir": str(config.out_dir),
            "pretrained_dir": str(folders.base_editor),
        },
        "seconds": seconds,
        "parallel_arms": parallel,
        "threads_per_arm": threads,
        "cpus": os.cpu_count(),
        "results": [asdict(r) for r in results],
    }
    (config.out_dir / "results.json").write_text(json.dumps(payload, indent=1))
    log(f"benchmark finished in {seconds / 60:.1f} min")
    return results
