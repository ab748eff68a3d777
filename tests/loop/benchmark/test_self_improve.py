"""The self-improvement benchmark at toy size, through the real CLI: the mechanics of every arm.

`editloop bench self-improve --fast` edits with the shipped pre-trained editor (no pre-training)
and runs every arm's two rounds on the real loop (controller, eager Celery workers, SQLite, local
store, `editloop train` under the trainer, the gate). A toy run improves nothing; what is asserted
is that each arm did what it says: the same fresh tasks for every arm, chains recorded, the right
examples selected, best-of-k's budget equal to hindsight's calls, the oracle on the ground truth,
checkpoints trained, published and promoted, metrics, report, plot and gallery written; and that a
failed training job makes the command exit 1.
"""

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from loop.benchmark.config import ARMS, DEMO, FAST, SelfImproveConfig
from loop.benchmark.report import job_failures
from policies.training.data import read_manifest
from store.db import make_engine, sqlite_url
from store.models import Attempt, Checkpoint, CheckpointStatus, Judgment, Round, Task, TrainJob
from store.taxonomy import Verdict
from tests.loop.cli.test_app import editloop
from worlds.shapes.operations import apply_operations
from worlds.shapes.pixels import render_scene
from worlds.shapes.types import Operation, OpKind, Scene, Shape

ROUNDS = FAST["rounds"]


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("self-improve")
    out = folder / "out"
    # --allow-failures: a toy pool can be empty (then its job fails, and the report says so).
    result = editloop(
        "bench", "self-improve", "--fast", "--allow-failures", "--out", str(out), cwd=folder
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (out / "stdout.txt").write_text(result.stdout)
    return out


def arm_path(out: Path, arm: str) -> Path:
    return out / "seed-0" / "noise-0" / "arms" / arm


def arm_session(out: Path, arm: str) -> Session:
    return Session(make_engine(sqlite_url(arm_path(out, arm) / "editloop.db")))


def manifests(out: Path, arm: str) -> list[list]:
    jobs = sorted((arm_path(out, arm) / "training").glob("job-*/manifest.jsonl"))
    return [read_manifest(path) for path in jobs]


def first_attempts(out: Path, arm: str) -> dict[int, list[tuple[str, str]]]:
    """(source key, instruction) of every depth-0 attempt, by round."""
    with arm_session(out, arm) as session:
        rows = session.execute(
            select(Round.number, Attempt.input_key, Attempt.instruction)
            .join(Attempt, Attempt.round_id == Round.id)
            .where(Attempt.depth == 0)
        ).all()
    by_round: dict[int, list[tuple[str, str]]] = {}
    for number, key, instruction in rows:
        by_round.setdefault(number, []).append((key, instruction))
    return by_round


@pytest.mark.slow
def test_every_arm_ran_its_rounds_and_was_measured(fast_run: Path) -> None:
    data = json.loads((fast_run / "results.json").read_text())
    seen = sorted((row["arm"], row["round"]) for row in data["results"])
    assert seen == sorted((arm, r) for arm in ARMS for r in range(ROUNDS + 1))
    assert {(row["seed"], row["noise"]) for row in data["results"]} == {(0, 0.0)}
    for row in data["results"]:
        evaluation = row["evaluation"]
        assert len(evaluation["compound_successes"]) == FAST["eval_tasks"]
        assert evaluation["compound_success"] == pytest.approx(
            sum(evaluation["compound_successes"]) / FAST["eval_tasks"]
        )
    assert data["failures"] == [] and data["machine"]["cpus"] >= 1
    report = (fast_run / "self_improve.md").read_text()
    assert "| hindsight | one-step compound |" in report and "## Targets" in report
    assert "| hindsight − best-of-k |" in report and "Editor calls per task" in report
    # Failed jobs (an empty toy pool) are reported first, and only those.
    rows = data["results"]
    failed = job_failures(rows)
    head = "\n".join(report.splitlines()[:12])
    assert all(line in head for line in failed)
    assert ("failure(s)" in head) == bool(failed)
    # Every job that trained says where its time went: the process's start, setup, steps, save.
    trained = [row["train"] for row in rows if row["train"].get("train_seconds")]
    parts = ("startup_seconds", "setup_seconds", "save_seconds")
    assert trained and all(t[part] > 0 for t in trained for part in parts)
    assert f"| part ({len(trained)} jobs) | mean s | share |" in report
    assert (fast_run / "self_improve.png").stat().st_size > 10_000
    with Image.open(fast_run / "self_improve_gallery.png") as gallery:
        # source, round 0, hindsight rounds 1-2, five other arms, target; 4 tasks
        assert gallery.size[0] > 10 * 96 and gallery.size[1] > 4 * 96
    assert "Held-out success" in (fast_run / "stdout.txt").read_text()


@pytest.mark.slow
def test_every_arm_edited_the_same_fresh_tasks_in_the_same_rounds(fast_run: Path) -> None:
    draws = {arm: first_attempts(fast_run, arm) for arm in ARMS}
    reference = {n: set(pairs) for n, pairs in draws["hindsight"].items()}
    assert sorted(reference) == list(range(ROUNDS))
    assert all(len(tasks) == FAST["tasks_per_round"] for tasks in reference.values())
    assert not reference[0] & reference[1]  # fresh: no task twice
    for arm, by_round in draws.items():
        assert {n: set(pairs) for n, pairs in by_round.items()} == reference, arm


@pytest.mark.slow
def test_every_round_trained_a_checkpoint_that_the_next_round_edits_with(fast_run: Path) -> None:
    for arm in ARMS:
        with arm_session(fast_run, arm) as session:
            rounds = session.scalars(select(Round).order_by(Round.number)).all()
            jobs = session.scalars(select(TrainJob).order_by(TrainJob.id)).all()
            checkpoints = {c.id: c for c in session.scalars(select(Checkpoint))}
            accepted = [
                session.scalar(
                    select(func.count())
                    .select_from(Judgment)
                    .join(Attempt)
                    .join(Round)
                    .where(Round.number <= r.number, Judgment.verdict == Verdict.SUCCESS)
                )
                for r in rounds
            ]
        assert [r.number for r in rounds] == list(range(ROUNDS))
        assert all("chains/success_rate" in r.metrics for r in rounds)
        # One job per round on the pool so far. It is published and (margin 4 on the 1-5 scale)
        # promoted, unless the toy pool of an arm that keeps successes only is still empty: then
        # the job fails and says so, and the next round keeps the parent.
        assert len(jobs) == ROUNDS
        current = None
        for round_, job, pool in zip(rounds, jobs, accepted, strict=True):
            assert round_.checkpoint_id == current  # the latest promoted one when it opened
            if not ARMS[arm].unfiltered and pool == 0:
                assert job.status.value == "failed" and "no accepted examples" in job.error
                continue
            assert job.status.value == "finished", job.error
            checkpoint = checkpoints[job.checkpoint_id]
            assert checkpoint.status == CheckpointStatus.PROMOTED
            assert checkpoint.parent_id == current
            assert "eval/delta_overall" in checkpoint.eval_metrics
            current = checkpoint.id
        assert ARMS[arm].max_reflections == 0 or current is not None


@pytest.mark.slow
def test_the_reflecting_arms_record_chains_and_train_on_what_they_say(fast_run: Path) -> None:
    for arm in ("hindsight", "reflect-direct"):
        with arm_session(fast_run, arm) as session:
            attempts = session.scalars(select(Attempt)).all()
            verdicts = dict(session.execute(select(Judgment.attempt_id, Judgment.verdict)).all())
        by_id = {a.id: a for a in attempts}
        reflected = [a for a in attempts if a.depth > 0]
        assert reflected, f"{arm}: no reflection or restart was recorded"
        for child in reflected:
            parent = by_id[child.parent_id]
            assert child.depth == parent.depth + 1 and child.task_id == parent.task_id
            if verdicts[parent.id] == Verdict.REFLECTION:
                assert child.input_key == parent.output_key  # edits the previous output
        chained = [a for a in reflected if verdicts.get(a.id) == Verdict.SUCCESS]
        assert chained, f"{arm}: no reflection chain succeeded"
        last = manifests(fast_run, arm)[-1]
        examples = {(e.source, e.instruction, e.target): e.kind for e in last}
        kinds = {e.kind for e in last}
        for attempt in chained:
            # Its own input and instruction → its output: the direct example of every arm.
            assert examples[(attempt.input_key, attempt.instruction, attempt.output_key)]
        if arm == "hindsight":
            assert "hindsight" in kinds  # source + original instruction → the chain's end
        else:
            assert kinds == {"direct"}


@pytest.mark.slow
def test_best_of_k_matched_the_hindsight_arms_calls_round_by_round(fast_run: Path) -> None:
    data = json.loads((fast_run / "results.json").read_text())
    calls = {(r["arm"], r["round"]): r["calls"] for r in data["results"] if r["round"] > 0}
    for number in range(ROUNDS):
        with arm_session(fast_run, "best-of-k") as session:
            rows = session.execute(
                select(Attempt.task_id, Attempt.depth).join(Round).where(Round.number == number)
            ).all()
        with arm_session(fast_run, "hindsight") as session:
            hindsight_calls = session.scalar(
                select(func.count()).select_from(Attempt).join(Round).where(Round.number == number)
            )
        per_task = Counter(task for task, _ in rows)
        assert len(rows) == hindsight_calls == calls[("hindsight", number + 1)]
        assert calls[("best-of-k", number + 1)] == hindsight_calls
        assert {depth for _, depth in rows} == {0}  # independent one-step samples
        assert max(per_task.values()) - min(per_task.values()) <= 1
    assert hindsight_calls > FAST["tasks_per_round"]  # k > 1: reflection made extra calls


@pytest.mark.slow
def test_the_one_step_arms_keep_what_they_say(fast_run: Path) -> None:
    for arm in ("reject", "control", "best-of-k", "oracle"):
        with arm_session(fast_run, arm) as session:
            rows = session.execute(select(Attempt, Judgment.verdict).join(Judgment)).all()
        assert rows and all(attempt.depth == 0 for attempt, _ in rows)
        successes = {a.output_key for a, verdict in rows if verdict == Verdict.SUCCESS}
        everything = {a.output_key for a, _ in rows if a.output_key is not None}
        expected = everything if ARMS[arm].unfiltered else successes
        # The last job's manifest holds the whole pool (no job writes one for an empty pool).
        last = (manifests(fast_run, arm) or [[]])[-1]
        assert {e.target for e in last} == expected, arm
        assert all(e.kind == "direct" for e in last)
        if arm == "control":
            assert len(everything) > len(successes)  # it really kept unaccepted samples


@pytest.mark.slow
def test_the_oracle_trained_on_the_ground_truth_of_the_same_tasks(fast_run: Path) -> None:
    objects = arm_path(fast_run, "oracle") / "objects"
    with arm_session(fast_run, "oracle") as session:
        rows = session.execute(select(Attempt, Task.meta).join(Task)).all()
    assert rows
    for attempt, meta in rows:
        scene = Scene(
            meta["shapes"]["scene"]["background"],
            tuple(Shape(**s) for s in meta["shapes"]["scene"]["shapes"]),
        )
        operations = tuple(
            Operation(OpKind(op["kind"]), op["colour"], op["new_colour"])
            for op in meta["shapes"]["operations"]
        )
        with Image.open(objects / attempt.output_key) as edited:
            target = render_scene(apply_operations(scene, operations), edited.width)
            assert edited.convert("RGB").tobytes() == target.tobytes()
        assert attempt.verdict == Verdict.SUCCESS


@pytest.mark.slow
def test_a_failed_training_job_makes_the_command_exit_non_zero(tmp_path: Path) -> None:
    # A DeepSpeed config that does not exist: the job's training process exits 1.
    folder = tmp_path
    out = folder / "failing"
    result = editloop(
        "bench", "self-improve", "--fast", "--arms", "control", "--rounds", "1",
        "--recipe", f"deepspeed_config={folder / 'missing-ds.json'}", "--out", str(out),
        cwd=folder,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]  # the job's traceback is logged above it
    assert last.startswith("error: 1 failure(s)") and last.endswith(
        "(--allow-failures to accept them)"
    )
    report = (out / "self_improve.md").read_text().splitlines()
    assert report[2] == "**1 failure(s)** (the command exits 1 unless --allow-failures):"
    assert report[3].startswith(
        "- training failed: control (seed 0, judge noise 0) round 1: failed"
    )
    assert "launcher exited with code 1" in report[3] and "missing-ds.json" in report[3]
    assert json.loads((out / "results.json").read_text())["results"]  # still measured


def test_the_fast_and_demo_settings_are_valid_benchmark_configs(tmp_path: Path) -> None:
    fast = SelfImproveConfig(out_dir=tmp_path, **FAST)
    assert fast.arms == tuple(ARMS) and fast.pretrain_steps == 1200  # the shipped editor's
    config = SelfImproveConfig(out_dir=tmp_path, **DEMO)
    assert config.arms == ("hindsight",) and config.rounds == 2
    with pytest.raises(ValueError, match="choose distinct arms"):
        replace(config, arms=("oracle", "wizard"))
    with pytest.raises(ValueError, match="best-of-k takes its budget from the hindsight arm"):
        replace(config, arms=("best-of-k",))
    with pytest.raises(ValueError, match="judge_noise"):
        replace(config, judge_noise=(1.5,))
