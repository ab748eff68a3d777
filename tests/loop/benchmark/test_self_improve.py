"""The self-improvement benchmark at toy size, through the real CLI: the mechanics of every arm.

`editloop bench self-improve --fast` pre-trains a small pixel editor for a few hundred steps, then
runs each arm's two rounds on the real loop (controller, eager Celery workers, SQLite, local
store, `editloop train` under the trainer, the gate). A toy editor improves nothing; what is
asserted is that each arm did what it says: chains recorded, the right examples selected,
checkpoints trained, published and promoted, metrics stored and reported.
"""

import json
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from loop.benchmark.config import ARMS, DEMO, FAST, SelfImproveConfig
from policies.training.data import read_manifest
from store.db import make_engine, sqlite_url
from store.models import Attempt, Checkpoint, CheckpointStatus, Judgment, Round, TrainJob
from store.taxonomy import Verdict
from tests.loop.cli.test_app import editloop


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("self-improve")
    out = folder / "out"
    result = editloop(
        "bench", "self-improve", "--fast", "--threads", "1", "--out", str(out), cwd=folder
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (out / "stdout.txt").write_text(result.stdout)
    return out


def arm_session(out: Path, arm: str) -> Session:
    return Session(make_engine(sqlite_url(out / "arms" / arm / "editloop.db")))


def manifests(out: Path, arm: str) -> list[list]:
    jobs = sorted((out / "arms" / arm / "training").glob("job-*/manifest.jsonl"))
    return [read_manifest(path) for path in jobs]


@pytest.mark.slow
def test_every_arm_ran_its_rounds_and_was_measured(fast_run: Path) -> None:
    data = json.loads((fast_run / "results.json").read_text())
    seen = sorted((row["arm"], row["round"]) for row in data["results"])
    assert seen == sorted((arm, r) for arm in ARMS for r in range(FAST["rounds"] + 1))
    for row in data["results"]:
        evaluation = row["evaluation"]
        assert len(evaluation["compound_successes"]) == FAST["eval_tasks"]
        assert evaluation["compound_success"] == pytest.approx(
            sum(evaluation["compound_successes"]) / FAST["eval_tasks"]
        )
    report = (fast_run / "self_improve.md").read_text()
    assert "| hindsight | one-step compound |" in report and "## Targets" in report
    assert (fast_run / "self_improve.png").stat().st_size > 10_000
    assert "Held-out success" in (fast_run / "stdout.txt").read_text()


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
        assert [r.number for r in rounds] == list(range(FAST["rounds"]))
        assert all("chains/success_rate" in r.metrics for r in rounds)
        # One job per round on the pool so far. It is published and (margin 4 on the 1-5 scale)
        # promoted, unless the toy editor's rejection-only pool is still empty: then the job fails
        # and says so, and the next round keeps the parent.
        assert len(jobs) == FAST["rounds"]
        current = None
        for round_, job, pool in zip(rounds, jobs, accepted, strict=True):
            assert round_.checkpoint_id == current  # the latest promoted one when it opened
            if arm == "reject" and pool == 0:
                assert job.status.value == "failed" and "no accepted examples" in job.error
                continue
            assert job.status.value == "finished", job.error
            checkpoint = checkpoints[job.checkpoint_id]
            assert checkpoint.status == CheckpointStatus.PROMOTED
            assert checkpoint.parent_id == current
            assert "eval/delta_overall" in checkpoint.eval_metrics
            current = checkpoint.id
        assert arm == "reject" or current is not None


@pytest.mark.slow
def test_the_hindsight_arm_records_chains_and_trains_on_their_final_images(fast_run: Path) -> None:
    with arm_session(fast_run, "hindsight") as session:
        attempts = session.scalars(select(Attempt)).all()
        verdicts = dict(session.execute(select(Judgment.attempt_id, Judgment.verdict)).all())
    by_id = {a.id: a for a in attempts}
    reflected = [a for a in attempts if a.depth > 0]
    assert reflected, "no reflection or restart was recorded"
    for child in reflected:
        parent = by_id[child.parent_id]
        assert child.depth == parent.depth + 1 and child.task_id == parent.task_id
        if verdicts[parent.id] == Verdict.REFLECTION:
            assert child.input_key == parent.output_key  # edits the previous output
    chained = [a for a in reflected if verdicts.get(a.id) == Verdict.SUCCESS]
    assert chained, "no reflection chain succeeded: the toy editor is too weak for the test"
    last = manifests(fast_run, "hindsight")[-1]
    examples = {(e.source, e.instruction, e.target): e.kind for e in last}
    kinds = set()
    for attempt in chained:
        root = attempt
        while root.parent_id is not None:
            root = by_id[root.parent_id]
        # The original source and instruction → the chain's final accepted image. After a
        # restart that is also the direct example (kept once, as direct); after a reflection it
        # is a hindsight example of its own.
        kinds.add(examples[(root.input_key, root.instruction, attempt.output_key)])
    assert "hindsight" in kinds


@pytest.mark.slow
def test_the_reject_and_control_arms_edit_in_one_step_and_keep_what_they_say(
    fast_run: Path,
) -> None:
    for arm in ("reject", "control"):
        with arm_session(fast_run, arm) as session:
            rows = session.execute(select(Attempt, Judgment.verdict).join(Judgment)).all()
        assert rows and all(attempt.depth == 0 for attempt, _ in rows)
        successes = {a.output_key for a, verdict in rows if verdict == Verdict.SUCCESS}
        everything = {a.output_key for a, _ in rows if a.output_key is not None}
        expected = successes if arm == "reject" else everything
        # The last job's manifest holds the whole pool (no job writes one for an empty pool).
        last = (manifests(fast_run, arm) or [[]])[-1]
        assert {e.target for e in last} == expected
        assert all(e.kind == "direct" for e in last)
        if arm == "control":
            assert len(everything) > len(successes)  # it really kept unaccepted samples


def test_the_demo_setting_is_a_valid_benchmark_config(tmp_path: Path) -> None:
    config = SelfImproveConfig(out_dir=tmp_path, **DEMO)
    assert config.arms == ("hindsight",) and config.rounds == 2
    with pytest.raises(ValueError, match="choose from"):
        replace(config, arms=("oracle",))
