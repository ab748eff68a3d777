"""Training jobs: claims and leases on both databases, a whole job, and a killed trainer.

The last two run the real trainer on the tiny InstructPix2Pix: the recipe under `torchrun`
(one CPU rank, gloo) as a subprocess, publishing to a local store and gating with the exact
shapes scorer.
"""

import contextlib
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from loop.training.jobs import TrainerParts, job_to_follow, prepare_job, process_job, run_trainer
from loop.training.launcher import job_folder, launch_command
from loop.training.lease import claim_job, end_job, renew_lease
from loop.training.models import GateModels
from migrations import upgrade
from policies.checkpoints import fetch_checkpoint
from policies.training.layout import FINAL_DIR, LOSS_LOG, METRICS_FILE, TrainResult, read_progress
from policies.training.settings import TrainingSettings
from policies.types import EditRequest
from rewards.shapes_judge import ShapesScorer
from store.db import make_engine, make_session_factory
from store.models import Checkpoint, CheckpointStatus, TrainJob, TrainJobStatus
from store.objects import LocalStore
from tests.fixtures.training import TINY_RECIPE, ip2p_parts, seed_pool
from tests.fixtures.training import tiny_editor as make_editor
from worlds.shapes.tasks import generate_compound_tasks

REPO = Path(__file__).resolve().parents[3]


def database(url: str) -> sessionmaker[Session]:
    upgrade(url)
    return make_session_factory(make_engine(url))


def queue_jobs(
    factory: sessionmaker[Session], n: int, data_filter: dict | None = None
) -> list[int]:
    with factory() as session, session.begin():
        jobs = [TrainJob(data_filter=data_filter or {}) for _ in range(n)]
        session.add_all(jobs)
        session.flush()
        return [job.id for job in jobs]


def job_row(factory: sessionmaker[Session], job_id: int) -> TrainJob:
    with factory() as session:
        return session.get_one(TrainJob, job_id)


# ---- claims and leases -----------------------------------------------------------------------


@pytest.mark.services
def test_claims_leases_and_takeover_after_a_lapse(db_url: str) -> None:
    factory = database(db_url)
    first, second = queue_jobs(factory, 2)
    assert claim_job(factory, owner="a", lease_s=60, max_claims=3) == first
    assert claim_job(factory, owner="b", lease_s=60, max_claims=3) == second
    assert claim_job(factory, owner="c", lease_s=60, max_claims=3) is None
    assert renew_lease(factory, first, owner="a", lease_s=60, progress_step=7)
    assert not renew_lease(factory, first, owner="b", lease_s=60)
    assert job_row(factory, first).progress_step == 7

    # a's lease lapses (it stopped renewing): c takes the job over, a can no longer touch it.
    assert renew_lease(factory, first, owner="a", lease_s=0.05)
    time.sleep(0.1)
    assert claim_job(factory, owner="c", lease_s=60, max_claims=3) == first
    assert not renew_lease(factory, first, owner="a", lease_s=60)
    assert not end_job(factory, first, owner="a", status=TrainJobStatus.FINISHED)
    row = job_row(factory, first)
    assert (row.status, row.lease_owner, row.progress_step) == ("running", "c", 7)

    # Released (a transient failure): claimable again at once.
    assert end_job(factory, first, owner="c", status=TrainJobStatus.QUEUED, error="store down")
    assert claim_job(factory, owner="d", lease_s=60, max_claims=3) == first
    assert end_job(factory, first, owner="d", status=TrainJobStatus.FINISHED, progress_step=9)
    row = job_row(factory, first)
    assert (row.status, row.progress_step, row.lease_expires_at) == ("finished", 9, None)
    # b still holds the second.
    assert claim_job(factory, owner="e", lease_s=60, max_claims=3) is None


@pytest.mark.services
def test_a_job_whose_trainer_keeps_dying_ends_failed_after_max_claims(db_url: str) -> None:
    factory = database(db_url)
    dying, other = queue_jobs(factory, 2)
    with pytest.raises(ValueError, match="max_claims=0"):
        claim_job(factory, owner="a", lease_s=60, max_claims=0)
    # Three trainers die in turn (OOM): each claim's lease lapses without a renewal.
    for owner in ("a", "b", "c"):
        assert claim_job(factory, owner=owner, lease_s=0.05, max_claims=3) == dying
        time.sleep(0.1)
    assert job_row(factory, dying).claims == 3
    # The fourth claimer fails it instead, and takes the next job.
    assert claim_job(factory, owner="d", lease_s=60, max_claims=3) == other
    row = job_row(factory, dying)
    assert (row.status, row.claims, row.lease_expires_at) == ("failed", 3, None)
    assert row.error is not None
    assert "claimed 3 times" in row.error and "its trainer kept dying" in row.error
    assert f"job-{dying:06d}/launcher.log" in row.error
    assert claim_job(factory, owner="e", lease_s=60, max_claims=3) is None  # not re-claimed

    # A release (a transient failure) gives its claim back: it is no death.
    assert end_job(factory, other, owner="d", status=TrainJobStatus.QUEUED, error="store down")
    assert job_row(factory, other).claims == 0
    assert claim_job(factory, owner="e", lease_s=60, max_claims=1) == other
    assert job_row(factory, other).claims == 1


def test_the_trainer_fails_a_job_claimed_max_claims_times(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="max_claims"):
        TrainingSettings(max_claims=0)
    factory = database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    (job,) = queue_jobs(factory, 1)
    assert claim_job(factory, owner="dead", lease_s=0.05, max_claims=1) == job
    time.sleep(0.1)
    parts = ip2p_parts(
        factory=factory, store=LocalStore(tmp_path / "objects"), work_dir=tmp_path / "work",
        store_root=tmp_path / "objects", model_dir=tmp_path / "unused",
        settings=TrainingSettings(max_claims=1),
    )  # fmt: skip
    assert run_trainer(parts, owner="a", wait=False) == []
    row = job_row(factory, job)
    assert row.status == TrainJobStatus.FAILED and "claimed 1 times" in (row.error or "")


@pytest.mark.services
def test_concurrent_claims_take_each_job_once(db_url: str) -> None:
    factory = database(db_url)
    jobs = queue_jobs(factory, 3)
    claimed: list[int | None] = []
    lock = threading.Lock()

    def claim(owner: str) -> None:
        job = claim_job(factory, owner=owner, lease_s=60, max_claims=3)
        with lock:
            claimed.append(job)

    threads = [threading.Thread(target=claim, args=(f"t{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(j for j in claimed if j is not None) == jobs
    assert claimed.count(None) == 5


@pytest.mark.services
def test_a_row_locked_by_another_claimer_is_skipped_on_postgres(postgres_url: str) -> None:
    factory = database(postgres_url)
    first, second = queue_jobs(factory, 2)
    with factory() as holder, holder.begin():
        # Another trainer is between its SELECT … FOR UPDATE and its UPDATE of the first job.
        holder.execute(text("SELECT id FROM train_job WHERE id = :id FOR UPDATE"), {"id": first})
        started = time.monotonic()
        assert claim_job(factory, owner="b", lease_s=60, max_claims=3) == second
        assert time.monotonic() - started < 5  # skipped, not waited for


def test_launch_commands() -> None:
    config = Path("/jobs/job-000001/train_config.json")
    torchrun = launch_command(TrainingSettings(launcher="torchrun", nproc_per_node=2), config)
    assert torchrun[1:5] == ["-m", "torch.distributed.run", "--nproc_per_node", "2"]
    assert torchrun[-3:] == ["-m", "loop.cli.train", str(config)]
    deepspeed = launch_command(TrainingSettings(launcher="deepspeed", nproc_per_node=8), config)
    assert deepspeed[0].endswith("deepspeed") and "--no_local_rank" in deepspeed
    assert deepspeed[-3:] == ["--module", "loop.cli.train", str(config)]
    assert launch_command(TrainingSettings(launcher="none"), config)[1:] == [
        "-m", "loop.cli.train", str(config),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="nproc_per_node=2"):
        launch_command(TrainingSettings(launcher="none", nproc_per_node=2), config)
    # Node 1 of 2: its ranks meet node 0's at the fixed endpoint.
    node = TrainingSettings(nproc_per_node=8, nnodes=2, node_rank=1, rdzv_endpoint="t0:29500")
    assert launch_command(node, config)[3:15] == [
        "--nproc_per_node", "8", "--nnodes", "2", "--node_rank", "1",
        "--master_addr", "t0", "--master_port", "29500", "-m", "loop.cli.train",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"nnodes": 2}, "rdzv_endpoint"),
        ({"nnodes": 2, "rdzv_endpoint": "t0"}, "rdzv_endpoint"),
        ({"nnodes": 2, "rdzv_endpoint": "t0:1", "launcher": "deepspeed"}, "launcher=torchrun"),
        ({"node_rank": 1}, "node_rank=1 is not below nnodes=1"),
    ],
)
def test_multi_node_settings_are_checked(settings: dict, named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        TrainingSettings(**settings)


def test_a_follower_node_joins_running_prepared_unfinished_jobs(tmp_path: Path) -> None:
    factory = database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    work = tmp_path / "work"
    prepared, finished, unprepared, queued = queue_jobs(factory, 4)
    claimed = [claim_job(factory, owner="node0", lease_s=60, max_claims=3) for _ in range(3)]
    assert claimed == [prepared, finished, unprepared]  # the oldest first; `queued` is not
    for job in (prepared, finished, queued):
        job_folder(work, job).mkdir(parents=True)
        (job_folder(work, job) / "job.json").write_text("{}")
    final = job_folder(work, finished) / "run" / FINAL_DIR
    final.mkdir(parents=True)
    result = TrainResult(str(final), "full", "ip2p", 1, {})
    (final / METRICS_FILE).write_text(json.dumps({"result": asdict(result)}))
    assert job_to_follow(factory, work, set()) == (prepared, 1)
    # Joined once per claim: node 0 retrying the job (a new claim) is a new launch to join.
    assert job_to_follow(factory, work, {(prepared, 1)}) is None


def test_a_job_without_examples_fails_with_the_reason(tmp_path: Path) -> None:
    factory = database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store = LocalStore(tmp_path / "objects")
    seeded = seed_pool(factory, store, single=1, compound=0, heldout=0)
    (no_gate, job) = queue_jobs(factory, 2, {"run_id": seeded.run_id + 1})
    parts = ip2p_parts(
        factory=factory, store=store, work_dir=tmp_path / "work", store_root=tmp_path / "objects",
        model_dir=tmp_path / "unused", settings=TrainingSettings(),
    )  # fmt: skip
    assert run_trainer(parts, owner="a", max_jobs=1) == [(no_gate, "failed")]
    assert "no held-out tasks with origin 'heldout'" in job_row(factory, no_gate).error
    seed_pool(factory, store, single=0, compound=0, heldout=1, run_name="held-out only")
    assert run_trainer(parts, owner="a", wait=False) == [(job, "failed")]
    row = job_row(factory, job)
    assert row.status == TrainJobStatus.FAILED and "no accepted examples match" in row.error
    assert run_trainer(parts, owner="a", wait=False) == []  # a failed job is not retried


# ---- whole jobs --------------------------------------------------------------------------------


def trainer_env(tmp_path: Path, tiny_model: Path, **settings: object) -> dict:
    """A database with a judged pool and one queued job, and trainer settings for it."""
    factory = database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store = LocalStore(tmp_path / "objects")
    seeded = seed_pool(factory, store, single=4, compound=4, heldout=2)
    (job,) = queue_jobs(factory, 1, {"run_id": seeded.run_id, "up_to_round": 0, "pool_size": 8})
    options = {
        "launcher": "torchrun",
        "lease_s": 3.0,
        "renew_s": 0.3,
        "poll_s": 0.2,
        "eval_tasks": 2,
        "eval_margin": 5.0,  # the gate's arithmetic has its own tests: here, promote
        "recipe": TINY_RECIPE | {"max_steps": 20, "save_every": 10},
    } | settings
    training = TrainingSettings.model_validate(options)
    parts = ip2p_parts(
        factory=factory, store=store, work_dir=tmp_path / "work", store_root=tmp_path / "objects",
        model_dir=tiny_model, settings=training,
    )  # fmt: skip
    return {"factory": factory, "store": store, "job": job, "parts": parts, "training": training}


def edit_with(model: Path, checkpoint: Path | None) -> torch.Tensor:
    editor = make_editor(model)
    if checkpoint is not None:
        editor.use_checkpoint("trained", checkpoint)
    task = generate_compound_tasks(1, seed=11)[0]
    (result,) = editor.edit([EditRequest(task.source_image(), task.instruction, seed=0)])
    assert result.image is not None, result.error
    return torch.tensor(list(result.image.getdata()), dtype=torch.float32)


@pytest.mark.slow
def test_a_job_is_trained_published_and_gated(tmp_path: Path, tiny_instruct_pix2pix: Path) -> None:
    env = trainer_env(tmp_path, tiny_instruct_pix2pix)
    factory, job = env["factory"], env["job"]
    assert run_trainer(env["parts"], owner="t", wait=False) == [(job, "finished")]
    row = job_row(factory, job)
    assert (row.status, row.progress_step, row.lease_owner) == ("finished", 20, "t")
    with factory() as session:
        checkpoint = session.get_one(Checkpoint, row.checkpoint_id)
    assert checkpoint.status == CheckpointStatus.PROMOTED and checkpoint.parent_id is None
    # 4 single-op successes and 4 reflection steps (direct), 4 chains in hindsight.
    assert checkpoint.sample_count == 12
    assert checkpoint.train_metrics["train/examples_direct"] == 8
    assert checkpoint.train_metrics["train/examples_hindsight"] == 4
    assert checkpoint.train_metrics["train/steps"] == 20
    assert "heldout" in checkpoint.data_filter["exclude_origins"]
    assert checkpoint.data_filter["pool_size"] == 8
    for name in ("candidate", "parent"):
        assert 1 <= checkpoint.eval_metrics[f"eval/{name}/mean_overall"] <= 5
    assert checkpoint.eval_metrics["eval/candidate/tasks"] == 2
    # The published checkpoint, as a worker fetches it, loads and changes the edits.
    folder = fetch_checkpoint(env["store"], checkpoint.object_prefix, tmp_path / "fetched")
    assert (folder / LOSS_LOG).is_file()
    assert not torch.equal(
        edit_with(tiny_instruct_pix2pix, None), edit_with(tiny_instruct_pix2pix, folder)
    )
    # Nothing left to do.
    assert run_trainer(env["parts"], owner="t", wait=False) == []


def wait_for(condition, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.slow
def test_a_killed_trainer_s_job_is_resumed_by_another_to_the_same_weights(
    tmp_path: Path, tiny_instruct_pix2pix: Path
) -> None:
    env = trainer_env(
        tmp_path, tiny_instruct_pix2pix, recipe=TINY_RECIPE | {"max_steps": 60, "save_every": 10}
    )
    factory, job, training = env["factory"], env["job"], env["training"]
    folder = job_folder(tmp_path / "work", job)
    run_dir = folder / "run"
    subprocess_env = os.environ | env["parts"].env
    trainer_a = subprocess.Popen(
        [
            sys.executable, "-m", "tests.loop.training.trainer_process",
            f"sqlite:///{tmp_path / 'db.sqlite'}", str(tmp_path / "objects"),
            str(tmp_path / "work"), str(tiny_instruct_pix2pix), training.model_dump_json(),
        ],
        cwd=REPO,
        env=subprocess_env,
    )  # fmt: skip
    try:
        # Past the first DeepSpeed checkpoint (step 10), well before the end (step 60).
        wait_for(
            lambda: trainer_a.poll() is not None or (read_progress(run_dir) or 0) >= 12,
            timeout_s=180,
            what="trainer A to pass step 12",
        )
        assert trainer_a.poll() is None, "trainer A ended before it could be killed"
        launcher = int((folder / "launcher.pid").read_text())
        trainer_a.send_signal(signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher, signal.SIGKILL)
        trainer_a.wait(timeout=30)
    finally:
        if trainer_a.poll() is None:
            trainer_a.kill()
    killed_at = read_progress(run_dir)
    assert killed_at is not None and 12 <= killed_at < 60
    saved = int((run_dir / "deepspeed" / "latest").read_text().removeprefix("step-"))
    row = job_row(factory, job)
    assert (row.status, row.lease_owner) == ("running", "trainer-a")

    # Trainer B finds the job once A's lease lapsed, and finishes it.
    started = time.monotonic()
    done = run_trainer(
        env["parts"], owner="trainer-b", max_jobs=1,
        should_stop=lambda: time.monotonic() - started > 240,
    )  # fmt: skip
    assert done == [(job, "finished")]
    row = job_row(factory, job)
    assert (row.status, row.lease_owner, row.progress_step) == ("finished", "trainer-b", 60)
    log = (folder / "launcher.log").read_text()
    assert f"resumed from the DeepSpeed checkpoint at step {saved}" in log
    assert saved % 10 == 0 and 10 <= saved <= killed_at
    # Every step once in the loss log: those after the checkpoint were dropped and run again.
    steps = [json.loads(line)["step"] for line in (run_dir / LOSS_LOG).read_text().splitlines()]
    assert steps == list(range(1, 61))

    # An uninterrupted run of the same config and seed reaches the same weights.
    reference = subprocess.run(
        [
            sys.executable, "-m", "loop.cli.train", str(folder / "train_config.json"),
            "--set", f"output_dir={tmp_path / 'reference'}",
        ],
        env=subprocess_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert reference.returncode == 0, reference.stderr[-4000:]
    resumed = load_file(run_dir / FINAL_DIR / "unet" / "diffusion_pytorch_model.safetensors")
    uninterrupted = load_file(
        tmp_path / "reference" / FINAL_DIR / "unet" / "diffusion_pytorch_model.safetensors"
    )
    # Same kernels, one thread, same inputs: the runs are expected to agree bit for bit (they do
    # here); the tolerance only leaves room for a BLAS that reduces in a varying order.
    assert resumed.keys() == uninterrupted.keys()
    assert max((resumed[k] - uninterrupted[k]).abs().max().item() for k in resumed) <= 1e-6
    with factory() as session:
        assert session.scalars(select(Checkpoint.status)).all() == [CheckpointStatus.PROMOTED]


def test_the_gate_s_editor_and_scorer_are_released_after_the_job(
    tmp_path: Path, tiny_instruct_pix2pix: Path, tiny_full_checkpoint: Path
) -> None:
    factory = database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store = LocalStore(tmp_path / "objects")
    seeded = seed_pool(factory, store, single=2, compound=0, heldout=2)
    (job,) = queue_jobs(factory, 1, {"run_id": seeded.run_id})
    editors: list[weakref.ref] = []

    def load_editor(old, checkpoint):  # type: ignore[no-untyped-def]
        editor = old or make_editor(tiny_instruct_pix2pix)
        editors.append(weakref.ref(editor))
        if checkpoint is None:
            editor.use_base()
        else:
            folder = fetch_checkpoint(store, checkpoint.object_prefix, tmp_path / "cache")
            editor.use_checkpoint(checkpoint.version, folder)
        return editor

    models = GateModels(load_editor, ShapesScorer)

    def verify(folder: Path) -> None:
        models.editor(None).use_checkpoint("candidate", folder)
        models.editor(None).use_base()

    parts = TrainerParts(
        factory=factory, store=store, settings=TrainingSettings(eval_tasks=2, eval_margin=5.0),
        work_dir=tmp_path / "work", model=str(tiny_instruct_pix2pix),
        cache_dir=tmp_path / "cache", editor_for=models.editor, verify=verify,
        load_scorer=models.scorer, release=models.release,
    )  # fmt: skip
    assert claim_job(factory, owner="t", lease_s=60, max_claims=3) == job
    prepared = prepare_job(parts, job)
    # The run already finished (its final/ is there): the job publishes and gates it.
    final = prepared.folder / "run" / FINAL_DIR
    shutil.copytree(tiny_full_checkpoint, final)
    result = TrainResult(str(final), "full", "ip2p", prepared.sample_count, {})
    (final / METRICS_FILE).write_text(json.dumps({"result": asdict(result)}))
    assert process_job(parts, job, owner="t") == "finished"
    with factory() as session:
        status = session.scalars(select(Checkpoint.status)).one()
    assert status == CheckpointStatus.PROMOTED
    assert editors and not models.loaded
    gc.collect()
    assert all(ref() is None for ref in editors)  # no editor left for the next job's ranks
