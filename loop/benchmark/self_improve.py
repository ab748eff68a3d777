"""`editloop bench self-improve`: does the loop make an editor better? Measured in the shapes world.

The hindsight experiment (docs/design.md, "Learning from judged edits") on the real loop: a pixel
editor pre-trained on single operations only edits compound (two-operation) instructions; the
shapes judges label its edits; the trainer fine-tunes it with DeepSpeed on what each arm keeps,
the gate promotes or rejects the result, and the next round edits with the latest promoted
checkpoint. Every arm starts from the same pre-trained weights, edits the same fresh tasks in the
same rounds (`task_order="fresh"`, drawn by the seed alone) and gets the same fine-tuning budget
(steps, batch, replay); what differs is in `config.ARMS`:

- **hindsight**: reflection on (the rule reflector asks for the missing operation, applied to
  the previous output; `Failed` restarts from the source), trained on one-step successes and on
  hindsight examples of successful chains (source + original instruction → final image);
- **reflect-direct**: the same reflection, trained on direct examples only (each accepted
  attempt's own input and instruction → its output): what hindsight adds over reflection;
- **best-of-k**: k independent one-step samples per task, k the hindsight arm's editor calls per
  task in the same round (`arms.spread_budget`), trained on the successes: the same editing
  budget without reflection;
- **reject**: one step, trained on the one-step successes (rejection sampling);
- **control**: one step, trained on every sample, judged good or not;
- **oracle**: trained on the ground-truth targets of the same tasks: the ceiling.

After every round, each arm's current editor edits held-out compound and single-operation tasks
(the task space's evaluation part, fixed tasks and seeds: `pixel_pretrain.evaluate_editor`):
one-step compound success is the skill the loop should create, single-operation success the one it
must not lose. The comparison is repeated per seed and judge error rate (a *condition*); every arm
of a condition is a full embedded deployment of its own under
`<out>/seed-<s>/noise-<p>/arms/<arm>/` (SQLite, a local object folder, Celery in eager mode,
`editloop train` launched as a subprocess by the trainer), so nothing but the arm's settings
differs between arms.
"""

import json
import logging
import multiprocessing
import os
import shutil
import sqlite3
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from loop.benchmark.arms import (
    ENDED_MARKER,
    OracleEditor,
    noisy_judges,
    open_round_with_samples,
    wait_for_calls,
)
from loop.benchmark.config import (
    ARMS,
    HELDOUT_ORIGIN,
    TRAIN_ORIGIN,
    ArmFolders,
    Condition,
    Log,
    SelfImproveConfig,
    arm_dir,
    arms_under,
    base_gallery_dir,
    condition_dir,
    conditions,
    run_name,
)
from loop.benchmark.inputs import ensure_base_editor, needs_pretraining, prepare_inputs
from loop.checkpoints import latest_promoted
from loop.controller import RunConfig, queue_train_job, run_loop, start_or_resume_run
from loop.ingest import ingest_rows
from loop.runtime import build_trainer_parts, build_worker_context, load_editor
from loop.schema import ensure_schema
from loop.services import open_database, open_store
from loop.settings import Settings
from loop.sources import Columns, read_rows
from loop.training.jobs import run_trainer
from policies.pixel_editor import PixelEditor
from policies.pixel_pretrain import (
    EVAL_SAMPLE_SEED,
    EvalReport,
    edit_tasks,
    eval_tasks,
    evaluate_editor,
)
from policies.settings import EditorSettings
from policies.training.layout import read_progress
from policies.training.lifetime import die_with_parent
from policies.training.settings import TrainingSettings
from policies.types import Editor
from rewards.settings import JudgeSettings
from rewards.shapes_judge import JudgeNoise, ShapesScorer
from store.models import Attempt, Checkpoint, Round, TrainJob
from store.objects import ObjectStore
from store.settings import StoreSettings
from workers.app import configure_celery
from workers.context import ModelCache, set_worker_context
from workers.dispatch import CeleryDispatcher
from workers.settings import WorkerSettings


@dataclass(frozen=True)
class RoundResult:
    """One arm after one round of one condition (round 0: the pre-trained editor)."""

    arm: str
    round: int
    evaluation: EvalReport
    checkpoint: str  # the version the arm edits with now ("base" before any promotion)
    seed: int = 0
    noise: float = 0.0  # the judge's error rate
    loop: dict[str, float] = field(default_factory=dict)  # the loop round's stored metrics
    train: dict[str, Any] = field(default_factory=dict)  # job outcome, checkpoint and gate
    seconds: dict[str, float] = field(default_factory=dict)  # loop, train, eval
    calls: int = 0  # editor calls of the loop round (attempts)
    tasks: int = 0  # tasks the loop round edited


@dataclass(frozen=True)
class ArmFailure:
    """An arm that could not run to the end (its process raised)."""

    arm: str
    seed: int
    noise: float
    error: str


@dataclass
class BenchmarkResult:
    """Every round of every arm run, the arms that failed, the time and the machine's state."""

    rows: list[RoundResult]
    failures: list[ArmFailure]
    seconds: float
    machine: dict[str, Any]


# ---- one arm -------------------------------------------------------------------------------


def recipe(config: SelfImproveConfig, seed: int, folders: ArmFolders) -> dict[str, Any]:
    """The fine-tuning recipe of every arm of the seed: the same steps, batch and replay."""
    base = {
        "max_steps": config.finetune_steps,
        "micro_batch_size": config.batch_size,
        "learning_rate": config.finetune_lr,
        "resolution": config.editor.size,
        "seed": seed,
        "replay_manifest": str(folders.replay),
        "replay_fraction": config.replay_fraction,
        "save_every": 0,
        "num_workers": 0,  # 16x16 PNGs: loader processes would cost more than they save
        "progress_bar": False,
    }
    return {**base, **config.recipe}


def arm_settings(
    config: SelfImproveConfig, condition: Condition, arm: str, folders: ArmFolders
) -> Settings:
    """The embedded settings of one arm (explicit sections: the caller's environment is not
    mixed in, so every arm runs the same way)."""
    spec = ARMS[arm]
    return Settings(
        data_dir=arm_dir(config, condition, arm),
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
            recipe=recipe(config, condition.seed, folders),
            hindsight=spec.hindsight,
            unfiltered=spec.unfiltered,
            eval_origin=HELDOUT_ORIGIN,
            eval_tasks=2 * config.gate_tasks,
            eval_margin=config.gate_margin,
            eval_seed=condition.seed,
        ),
    )


def run_config(config: SelfImproveConfig, condition: Condition, arm: str) -> RunConfig:
    """The loop run of one arm: fresh tasks every round, drawn by the seed alone (every arm of a
    condition edits the same tasks in the same rounds)."""
    return RunConfig(
        name=run_name(arm),
        rounds=config.rounds,
        tasks_per_round=config.tasks_per_round,
        max_reflections=ARMS[arm].max_reflections,
        batch_size=config.edit_batch_size,
        poll_interval_s=0.05,
        train_min_new_samples=0,  # every round ends with a job (queued by the benchmark)
        heldout_origin=HELDOUT_ORIGIN,
        seed=condition.seed,
        task_order="fresh",
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


def ingest_folder(
    settings: Settings,
    factory: sessionmaker[Session],
    store: ObjectStore,
    folder: Path,
    origin: str,
) -> None:
    """Ingest a task folder; RuntimeError for a rejected row or a task already known (from
    another part of the task space: the parts would not be disjoint)."""
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
    if report.duplicate or report.sources_added:
        raise RuntimeError(
            f"ingesting {folder} as {origin!r}: {report.duplicate} tasks were known already "
            f"({report.sources_added} of them from another origin): the benchmark's task sets "
            "must be disjoint"
        )


def _train_summary(
    outcomes: list[tuple[int, str]], jobs: list[TrainJob], checkpoint: Checkpoint | None
) -> dict:
    summary: dict[str, Any] = {"jobs": [outcome for _, outcome in outcomes]}
    if outcomes:
        summary["status"] = outcomes[-1][1]  # e.g. failed: nothing accepted to train on yet
    errors = [job.error for job in jobs if job.error]
    if errors:
        summary["error"] = errors[-1]
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
            train_seconds=metrics.get("train/seconds"),
            startup_seconds=metrics.get("train/startup_seconds"),
            setup_seconds=metrics.get("train/setup_seconds"),
            save_seconds=metrics.get("train/save_seconds"),
        )
    return summary


def _watch_training(work_dir: Path, label: str, steps: int, stop: threading.Event) -> None:
    """A progress bar of the newest training job's optimizer steps (on a terminal only)."""
    with tqdm(total=steps, desc=label, unit="step", leave=False, disable=None) as bar:
        while not bar.disable and not stop.wait(0.5):
            jobs = sorted(work_dir.glob("job-*"))
            if jobs:
                bar.n = min(steps, read_progress(jobs[-1] / "run") or 0)
                bar.refresh()


def save_gallery_edits(editor: Editor, tasks: int, folder: Path) -> None:
    """The editor's edits of the first `tasks` held-out compound tasks, as the evaluation makes
    them (same tasks, same seeds), as PNGs `<i>.png` in `folder`."""
    if tasks == 0:
        return
    _, compounds = eval_tasks(tasks)
    folder.mkdir(parents=True, exist_ok=True)
    for index, result in enumerate(edit_tasks(editor, compounds, EVAL_SAMPLE_SEED)):
        if result.image is not None:
            result.image.save(folder / f"{index:03d}.png")


def run_arm(
    config: SelfImproveConfig,
    condition: Condition,
    arm: str,
    folders: ArmFolders,
    base: EvalReport,
    log: Log,
    bars: bool = True,
) -> list[RoundResult]:
    """Run one arm of one condition from a fresh folder: its rounds, each followed by training,
    the gate and the evaluation; `bars`: progress bars of its rounds and training steps (on a
    terminal)."""
    spec = ARMS[arm]
    settings = arm_settings(config, condition, arm, folders)
    shutil.rmtree(settings.data_dir, ignore_errors=True)
    settings.data_dir.mkdir(parents=True)
    ensure_schema(settings)
    factory = open_database(settings)
    store = open_store(settings)
    ingest_folder(settings, factory, store, folders.train_tasks, TRAIN_ORIGIN)
    ingest_folder(settings, factory, store, folders.gate_tasks, HELDOUT_ORIGIN)
    configure_celery(settings.worker)
    context = build_worker_context(settings)
    noise = JudgeNoise(condition.noise, config.noise_mode, seed=condition.seed)
    load_judges = noisy_judges(noise)
    load_editor_for = context.models.load_editor
    if spec.oracle:
        oracle = OracleEditor()
        load_editor_for = lambda old, checkpoint: oracle  # noqa: E731
    context.models = ModelCache(load_editor=load_editor_for, load_judges=load_judges)
    set_worker_context(context)
    parts = replace(
        build_trainer_parts(settings, settings.training),
        env=_launcher_env(settings),
        load_scorer=lambda: ShapesScorer(noise=noise),  # the gate's judge errs like the loop's
    )
    loop_config = run_config(config, condition, arm)
    tag = f"{arm} s{condition.seed} p{condition.noise:g}"
    results = [RoundResult(arm, 0, base, "base", condition.seed, condition.noise)]
    clock = {"round_started": time.perf_counter()}
    run_id = start_or_resume_run(factory, loop_config)
    hindsight_dir = arm_dir(config, condition, "hindsight")

    def open_matched(number: int) -> None:
        if spec.matched_budget:
            calls, _ = wait_for_calls(hindsight_dir, run_name("hindsight"), number)
            open_round_with_samples(factory, run_id, number, loop_config, calls)

    rounds_bar = tqdm(
        total=config.rounds, desc=tag, unit="round", leave=False, disable=None if bars else True
    )

    def after_round(number: int, metrics: dict[str, float]) -> None:
        loop_s = time.perf_counter() - clock["round_started"]
        started = time.perf_counter()
        # Every round ends with a fine-tuning job (the same budget for every arm), whatever the
        # pool grew by; the trainer runs it in this process's stead.
        queue_train_job(factory, run_id, up_to_round=number)
        stop = threading.Event()
        watcher = threading.Thread(
            target=_watch_training,
            args=(
                settings.data_dir / "training",
                f"{tag} train r{number + 1}",
                config.finetune_steps,
                stop,
            ),
            daemon=True,
        )
        if bars:
            watcher.start()
        try:
            outcomes = run_trainer(parts, owner=f"bench-{arm}", wait=False)
        finally:
            stop.set()
            if bars:
                watcher.join()
        train_s = time.perf_counter() - started
        with factory() as session:
            current = latest_promoted(session)
            jobs = [session.get_one(TrainJob, job_id) for job_id, _ in outcomes]
            trained = [
                session.get_one(Checkpoint, j.checkpoint_id) for j in jobs if j.checkpoint_id
            ]
            started = time.perf_counter()
            editor = load_editor(settings, store, None, current)
            evaluation = evaluate_editor(editor, config.eval_tasks)
            save_gallery_edits(
                editor, config.gallery_tasks, settings.data_dir / "gallery" / f"round-{number + 1}"
            )
            result = RoundResult(
                arm=arm,
                round=number + 1,
                evaluation=evaluation,
                checkpoint=current.version if current is not None else "base",
                seed=condition.seed,
                noise=condition.noise,
                loop=metrics,
                train=_train_summary(outcomes, jobs, trained[-1] if trained else None),
                seconds={
                    "loop": loop_s,
                    "train": train_s,
                    "eval": time.perf_counter() - started,
                },
                calls=int(metrics.get("attempts/total", 0)),
                tasks=len(_round_tasks(factory, run_id, number)),
            )
        results.append(result)
        log(_round_line(result))
        rounds_bar.update(1)
        if number + 1 < config.rounds:
            open_matched(number + 1)
        clock["round_started"] = time.perf_counter()

    open_matched(0)
    clock["round_started"] = time.perf_counter()  # not the wait for hindsight's round
    try:
        run_loop(
            factory=factory,
            dispatcher=CeleryDispatcher(),
            config=loop_config,
            on_round=after_round,
            retries=settings.store.retries,
        )
    finally:
        rounds_bar.close()
        set_worker_context(None)
    return results


def _round_tasks(factory: sessionmaker[Session], run_id: int, number: int) -> list[int]:
    """The distinct tasks round `number` of the run edited."""
    with factory() as session:
        return list(
            session.scalars(
                select(Attempt.task_id)
                .join(Round, Round.id == Attempt.round_id)
                .where(Round.run_id == run_id, Round.number == number, Attempt.depth == 0)
                .distinct()
            )
        )


def _round_line(result: RoundResult) -> str:
    e = result.evaluation
    train = result.train
    return (
        f"[{result.arm} s{result.seed} p{result.noise:g} round {result.round}] compound "
        f"{e.compound_success:.3f}, single {e.single_op_success:.3f} | loop: chains "
        f"{result.loop.get('chains/success_rate', 0):.2f}, calls/task "
        f"{result.calls / max(result.tasks, 1):.2f} | train: {train.get('status', 'no job')} "
        f"{train.get('examples', {})} | "
        + ", ".join(f"{k} {v:.0f}s" for k, v in result.seconds.items())
    )


def _run_unit(
    config: SelfImproveConfig,
    condition: Condition,
    arm: str,
    folders: ArmFolders,
    base: EvalReport,
    threads: int,
) -> list[RoundResult]:
    """`run_arm` in a process of its own (arms share nothing but their read-only inputs; threads
    > 0: one of several at once, whose progress the parent shows); the arm's folder is marked
    ended whatever happens, so that best-of-k never waits on a dead arm."""
    if threads:
        torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, format=f"%(levelname)s [{arm}] %(message)s")
    try:
        return run_arm(
            config,
            condition,
            arm,
            folders,
            base,
            lambda line: print(line, flush=True),
            bars=threads == 0,
        )
    finally:
        folder = arm_dir(config, condition, arm)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ENDED_MARKER).touch()


# ---- the whole benchmark -------------------------------------------------------------------


def _pretrain_seed(config: SelfImproveConfig, seed: int, threads: int) -> Path:
    torch.set_num_threads(threads)
    log = lambda line: print(line, flush=True)  # noqa: E731
    return ensure_base_editor(config, seed, log, progress=False)  # several at once: lines only


def prepare_seeds(config: SelfImproveConfig, parallel: int, log: Log) -> dict[int, ArmFolders]:
    """Every seed's inputs; editors neither kept nor shipped are pre-trained first, several at
    once in processes of their own when `parallel` allows."""
    missing = [seed for seed in config.seed_list if needs_pretraining(config, seed)]
    if len(missing) > 1 and parallel > 1:
        log(f"pre-training {len(missing)} editors at once (seeds {missing}), one thread each")
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            min(parallel, len(missing)), mp_context=context, initializer=die_with_parent
        ) as pool:
            for future in [pool.submit(_pretrain_seed, config, s, 1) for s in missing]:
                future.result()
    return {seed: prepare_inputs(config, seed, log) for seed in config.seed_list}


def _evaluate_bases(
    config: SelfImproveConfig, folders: dict[int, ArmFolders], log: Log
) -> dict[int, EvalReport]:
    bases = {}
    for seed, inputs in folders.items():
        editor = PixelEditor.from_pretrained(inputs.base_editor)
        bases[seed] = evaluate_editor(editor, config.eval_tasks)
        save_gallery_edits(editor, config.gallery_tasks, base_gallery_dir(config, seed))
        e = bases[seed]
        log(
            f"pre-trained editor (seed {seed}): compound {e.compound_success:.3f}, single "
            f"{e.single_op_success:.3f} ({e.compound_one_op_done:.3f} of compound tasks with "
            "exactly one operation done)"
        )
    return bases


def _finished_rounds(database: Path) -> int:
    if not database.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1) as connection:
            return connection.execute(
                "SELECT count(*) FROM round WHERE status = 'finished'"
            ).fetchone()[0]
    except sqlite3.Error:  # not created yet, or busy: counted at the next look
        return 0


def units(config: SelfImproveConfig) -> list[tuple[Condition, str]]:
    """Every (condition, arm) to run, in the order they start: conditions without judge noise
    first, and in each the hindsight arm before best-of-k (which waits on its rounds)."""
    order = sorted(config.arms, key=lambda arm: (arm != "hindsight", arm == "best-of-k"))
    return [
        (condition, arm)
        for condition in conditions(config)
        for arm in order
        if arm in arms_under(config, condition.noise)
    ]


class LoadSampler:
    """The machine's 1-minute load average, sampled every `every_s` in a thread (the other work on
    the machine shows in the benchmark's times: the report states it)."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.samples: list[float] = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    def _run(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, float]:
        return {
            "load_average_mean": sum(self.samples) / len(self.samples),
            "load_average_max": max(self.samples),
        }

    def stop(self) -> None:
        self._stop.set()


def run_benchmark(config: SelfImproveConfig, log: Log = print) -> BenchmarkResult:
    """Every arm of every condition of `config`; writes `results.json` into `config.out_dir`."""
    started = time.perf_counter()
    load = LoadSampler()
    config.out_dir.mkdir(parents=True, exist_ok=True)
    todo = units(config)
    parallel = min(config.parallel_arms or max(os.cpu_count() or 1, 3), len(todo))
    threads = 1 if parallel > 1 else torch.get_num_threads()
    folders = prepare_seeds(config, parallel, log)
    bases = _evaluate_bases(config, folders, log)
    for condition in conditions(config):
        shutil.rmtree(condition_dir(config, condition), ignore_errors=True)  # no stale rounds
    for arm in config.arms:
        log(f"arm {arm}: {ARMS[arm].description}")
    log(f"{len(todo)} arm runs, {parallel} at once ({threads} torch thread(s) each)")
    rows: list[RoundResult] = []
    failures: list[ArmFailure] = []

    def snapshot(done: bool) -> dict[str, Any]:
        """results.json as it stands: written after every arm run, so a long run shows (and
        `editloop bench report` reads) what finished so far."""
        machine = {
            "cpus": os.cpu_count(),
            "parallel_arms": parallel,
            "threads_per_arm": threads,
            **load.summary(),
        }
        payload = {
            "config": {
                **asdict(config),
                "out_dir": str(config.out_dir),
                "pretrained_dir": {s: str(f.base_editor) for s, f in folders.items()},
            },
            "complete": done,
            "seconds": time.perf_counter() - started,
            "machine": machine,
            "failures": [asdict(f) for f in failures],
            "results": [asdict(r) for r in rows],
        }
        write_results(config.out_dir / "results.json", payload)
        return payload

    def collect(condition: Condition, arm: str, run: Callable[[], list[RoundResult]]) -> None:
        try:
            rows.extend(run())
        except Exception as exc:  # noqa: BLE001 - one arm's failure is reported, not fatal
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            log(f"arm {arm} (seed {condition.seed}, noise {condition.noise:g}) failed: {detail}")
            failures.append(ArmFailure(arm, condition.seed, condition.noise, detail))
        snapshot(done=False)

    if parallel == 1:
        for condition, arm in todo:
            collect(
                condition,
                arm,
                lambda c=condition, a=arm: _run_unit(
                    config, c, a, folders[c.seed], bases[c.seed], 0
                ),
            )
    else:
        # Spawned, not forked: a forked child would inherit this process's torch thread pool.
        context = multiprocessing.get_context("spawn")
        # Workers die with this process: a killed benchmark leaves no arm running.
        with ProcessPoolExecutor(
            max_workers=parallel, mp_context=context, initializer=die_with_parent
        ) as pool:
            pending = {
                pool.submit(
                    _run_unit, config, condition, arm, folders[condition.seed],
                    bases[condition.seed], threads,
                ): (condition, arm)
                for condition, arm in todo
            }  # fmt: skip
            total = len(todo) * config.rounds
            with tqdm(total=total, desc="arm rounds", unit="round", disable=None) as bar:
                while pending:
                    done, _ = wait(pending, timeout=2, return_when=FIRST_COMPLETED)
                    for future in done:
                        collect(*pending.pop(future), future.result)
                    if not bar.disable:
                        bar.n = sum(
                            _finished_rounds(arm_dir(config, c, a) / "editloop.db") for c, a in todo
                        )
                        bar.refresh()
    load.stop()
    payload = snapshot(done=True)
    seconds = payload["seconds"]
    log(f"benchmark finished in {seconds / 60:.1f} min")
    return BenchmarkResult(rows, failures, seconds, payload["machine"])


def write_results(path: Path, payload: dict[str, Any]) -> Path:
    """`results.json`: every key on a line of its own, and one line per result row (each row
    holds its 2 x eval_tasks per-task outcomes: one line keeps the file readable and diffable)."""
    parts = [
        f" {json.dumps(key)}: {json.dumps(value, default=str)}"
        for key, value in payload.items()
        if key != "results"
    ]
    rows = ",\n".join(f"  {json.dumps(row)}" for row in payload.get("results", []))
    parts.append(f' "results": [\n{rows}\n ]')
    path.write_text("{\n" + ",\n".join(parts) + "\n}\n")
    return path
