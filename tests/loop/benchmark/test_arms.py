"""What some arms do beyond their settings, on a real loop with the scripted editor: best-of-k's
budget matched to the hindsight arm's measured calls, the oracle's ground-truth edits, the same
draws for every arm; and the run order that lets best-of-k wait on hindsight."""

from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from loop.benchmark.arms import (
    ENDED_MARKER,
    OracleEditor,
    open_round_with_samples,
    round_calls,
    spread_budget,
    wait_for_calls,
)
from loop.benchmark.config import SelfImproveConfig, conditions
from loop.benchmark.self_improve import run_config, units
from loop.controller import RunConfig, run_loop, start_or_resume_run
from policies.types import EditRequest
from store.models import Attempt, Round, Run
from workers.dispatch import CeleryDispatcher
from worlds.shapes.tasks import generate_compound_tasks


def test_spread_budget_adds_up_and_is_as_even_as_it_goes() -> None:
    ids = [4, 9, 2, 7]
    samples = spread_budget(ids, 7, seed=0, number=1)
    assert sum(samples.values()) == 7 and sorted(samples) == sorted(ids)
    assert sorted(samples.values()) == [1, 2, 2, 2]  # 7 = 4 x 1 + 3 extra
    assert spread_budget(ids, 7, seed=0, number=1) == samples  # seeded
    draws = {tuple(sorted(spread_budget(ids, 5, seed=s, number=0).items())) for s in range(20)}
    assert len(draws) > 1  # which task gets the extra sample depends on the seed
    assert set(spread_budget(ids, 8, seed=0, number=0).values()) == {2}
    with pytest.raises(ValueError, match="at least one sample per task"):
        spread_budget(ids, 3, seed=0, number=0)


def attempts_by_task(factory, name: str, number: int) -> tuple[Counter, set[int]]:  # type: ignore[no-untyped-def]
    with factory() as session:
        rows = session.execute(
            select(Attempt.task_id, Attempt.depth)
            .join(Round, Round.id == Attempt.round_id)
            .join(Run, Run.id == Round.run_id)
            .where(Run.name == name, Round.number == number)
        ).all()
    assert rows
    return Counter(task for task, _ in rows), {depth for _, depth in rows}


def test_best_of_k_makes_exactly_the_hindsight_arms_editor_calls(loop_env) -> None:  # type: ignore[no-untyped-def]
    factory, _, _ = loop_env
    common = {"rounds": 1, "tasks_per_round": 5, "task_order": "fresh", "seed": 3}
    hindsight = RunConfig(name="h", max_reflections=2, poll_interval_s=0.01, **common)
    run_loop(factory=factory, dispatcher=CeleryDispatcher(), config=hindsight)
    calls, tasks = round_calls(factory, "h", 0)
    # The scripted editor does one operation per call: compound tasks take two calls.
    assert tasks == 5 and calls > tasks
    best = RunConfig(name="b", max_reflections=0, poll_interval_s=0.01, **common)
    run_id = start_or_resume_run(factory, best)
    samples = open_round_with_samples(factory, run_id, 0, best, calls)
    run_loop(factory=factory, dispatcher=CeleryDispatcher(), config=best)
    per_task, depths = attempts_by_task(factory, "b", 0)
    h_tasks, _ = attempts_by_task(factory, "h", 0)
    assert sum(per_task.values()) == calls and depths == {0}  # k one-step samples, same budget
    assert set(per_task) == set(h_tasks)  # the same tasks as the hindsight arm
    assert max(per_task.values()) - min(per_task.values()) <= 1 and dict(per_task) == samples
    # Opening it again (a resumed run) changes nothing.
    assert open_round_with_samples(factory, run_id, 0, best, calls + 10) == samples


def test_waiting_on_an_arm_that_ended_without_the_round_fails_loudly(tmp_path: Path) -> None:
    (tmp_path / ENDED_MARKER).touch()
    with pytest.raises(RuntimeError, match="ended without finishing round 0"):
        wait_for_calls(tmp_path, "self-improve-hindsight", 0, poll_s=0.01)


def test_the_oracle_edits_with_the_ground_truth() -> None:
    tasks = generate_compound_tasks(3, seed=2)
    requests = [EditRequest(t.source_image(), t.instruction, 0) for t in tasks]
    requests.append(EditRequest(tasks[0].source_image(), "paint it purple", 0))
    results = OracleEditor().edit(requests)
    for task, result in zip(tasks, results, strict=False):
        assert result.image is not None and result.image.tobytes() == task.target_image().tobytes()
    assert not results[-1].ok and "not an operation" in (results[-1].error or "")


def test_every_arm_of_a_condition_runs_the_same_fresh_draw_and_hindsight_starts_first(
    tmp_path: Path,
) -> None:
    config = SelfImproveConfig(
        out_dir=tmp_path,
        arms=("best-of-k", "control", "hindsight", "oracle"),
        seeds=2,
        judge_noise=(0.0, 0.25),
    )
    order = units(config)
    # Exact judge first; control and oracle (their data ignore the verdicts) only there.
    assert [(c.seed, c.noise) for c in conditions(config)] == [(0, 0), (1, 0), (0, 0.25), (1, 0.25)]
    assert [arm for c, arm in order if c.noise == 0.25 and c.seed == 0] == [
        "hindsight",
        "best-of-k",
    ]
    for condition in conditions(config):
        arms = [arm for c, arm in order if c == condition]
        assert arms.index("hindsight") < arms.index("best-of-k")
        runs = {arm: run_config(config, condition, arm) for arm in arms}
        # Draws depend on the seed and the order alone: the same tasks in the same rounds.
        assert {(r.seed, r.task_order, r.tasks_per_round) for r in runs.values()} == {
            (condition.seed, "fresh", config.tasks_per_round)
        }
