"""The benchmark's figures: intervals over seeds, paired differences, budgets, what went wrong,
the targets, the report's order, the plot."""

import math
from pathlib import Path

import pytest
from PIL import Image

from loop.benchmark.report import (
    Cell,
    across_seeds,
    budget_table,
    gate_rejections,
    job_failures,
    loop_table,
    noise_table,
    paired_difference,
    paired_table,
    proportion,
    report_markdown,
    success_table,
    target_checks,
    training_time_table,
    write_plot,
)


def row(
    arm: str,
    number: int,
    compound: list[bool],
    single: list[bool] | None = None,
    *,
    seed: int = 0,
    noise: float = 0.0,
    **extra: object,
) -> dict:
    return {
        "arm": arm,
        "round": number,
        "seed": seed,
        "noise": noise,
        "evaluation": {
            "compound_successes": compound,
            "single_op_successes": single if single is not None else [True] * len(compound),
        },
        "loop": extra.get("loop", {}),
        "train": extra.get("train", {"status": "promoted"}),
        "seconds": extra.get("seconds", {}),
        "calls": extra.get("calls", 0),
        "tasks": extra.get("tasks", 0),
    }


def rate(k: int, n: int = 10) -> list[bool]:
    return [True] * k + [False] * (n - k)


def test_proportion_is_the_rate_with_its_binomial_standard_error() -> None:
    # 3 of 4: p = .75, SE = sqrt(.75 * .25 / 4) = .2165
    cell = proportion([True, True, True, False])
    assert cell.rate == 0.75 and cell.n == 4
    assert cell.se == pytest.approx(math.sqrt(0.75 * 0.25 / 4))
    assert str(cell) == "0.750 ± 0.217"
    assert proportion([True] * 5).se == 0.0
    with pytest.raises(ValueError, match="empty"):
        proportion([])


def test_paired_difference_uses_the_per_task_differences() -> None:
    # differences 1, 0, 1, 0: mean .5, sample sd sqrt(1/3), SE sqrt(1/3) / 2 = .2887
    cell = paired_difference([True, True, True, False], [False, True, False, False])
    assert cell.rate == pytest.approx(0.5)
    assert cell.se == pytest.approx(math.sqrt(1 / 3) / 2)
    # The same improvement on every task has no spread: SE 0, unlike two independent rates.
    assert paired_difference([True] * 4, [False] * 4).se == 0.0
    with pytest.raises(ValueError, match="one length"):
        paired_difference([True], [True, False])


def test_across_seeds_is_a_t_interval_or_one_seeds_normal_interval() -> None:
    # Seeds .6, .7, .8: mean .7, sd .1, t(2) 4.303: half-width 4.303 * .1 / sqrt(3) = .2484
    three = across_seeds([Cell(0.6, 0.05, 10), Cell(0.7, 0.05, 10), Cell(0.8, 0.05, 10)])
    assert three.mean == pytest.approx(0.7) and three.seeds == 3
    assert three.half_width == pytest.approx(4.303 * 0.1 / math.sqrt(3), rel=1e-6)
    one = across_seeds([Cell(0.5, 0.1, 25)])
    assert (one.low, one.high) == pytest.approx((0.5 - 0.196, 0.5 + 0.196))
    assert str(one) == "0.500 ± 0.196"


def test_success_table_averages_the_seeds_per_arm_round_and_noise() -> None:
    rows = [
        row("hindsight", 0, rate(2), seed=0),
        row("hindsight", 0, rate(2), seed=1),
        row("hindsight", 1, rate(6), seed=0),
        row("hindsight", 1, rate(8), seed=1),
        row("hindsight", 1, rate(1), seed=0, noise=0.25),  # another condition: not averaged in
    ]
    lines = success_table(rows).splitlines()
    assert lines[0] == "| arm | measure | round 0 | round 1 |"
    # round 1: (.6 + .8) / 2 = .7, sd .1414, t(1) 12.706: half-width 12.706 * .1 = 1.271
    assert lines[2] == "| hindsight | one-step compound | 0.200 ± 0.000 | 0.700 ± 1.271 |"
    noisy = success_table(rows, noise=0.25).splitlines()
    assert noisy[2].endswith("| 0.100 ± 0.186 |")  # one seed: 1.96 x sqrt(.1 x .9 / 10)


def test_paired_table_and_budgets_compare_arms_within_each_seed() -> None:
    rows = [
        row("hindsight", 1, rate(7), seed=0, calls=30, tasks=20),
        row("hindsight", 1, rate(5), seed=1, calls=26, tasks=20),
        row("best-of-k", 1, rate(3), seed=0, calls=30, tasks=20),
        row("best-of-k", 1, rate(3), seed=1, calls=26, tasks=20),
    ]
    lines = paired_table(rows).splitlines()
    assert lines[0] == "| difference | seed 0 | seed 1 | over seeds |"
    assert lines[2].startswith("| hindsight − best-of-k | +0.400 ± 0.163 | +0.200 ± 0.133 | +0.300")
    budget = budget_table(rows).splitlines()
    assert budget[2:] == ["| hindsight | 1.40 |", "| best-of-k | 1.40 |"]  # (1.5 + 1.3) / 2


def test_failed_jobs_and_arms_are_failures_and_rejections_are_listed() -> None:
    rows = [
        row("reject", 0, rate(1)),
        row(
            "reject",
            1,
            rate(1),
            train={"status": "failed", "error": "launcher: code 1; log:\nA\nB: why"},
        ),
        row("hindsight", 1, rate(5), train={"status": "rejected", "gate_delta": -0.4}),
        row("control", 1, rate(1)),
    ]
    crashed = [{"arm": "best-of-k", "seed": 0, "noise": 0.25, "error": "RuntimeError: boom"}]
    failures = job_failures(rows, crashed)
    assert failures == [
        # An error with a log tail: its first and last lines.
        "training failed: reject (seed 0, judge noise 0) round 1: failed: launcher: code 1; log: … "
        "B: why",
        "arm failed: best-of-k (seed 0, judge noise 0.25): RuntimeError: boom",
    ]
    assert gate_rejections(rows) == [
        "gate rejected: hindsight (seed 0, judge noise 0) round 1: Δ -0.40"
    ]
    report = report_markdown(rows, arm_failures=crashed).splitlines()
    # What went wrong comes first, before any table.
    assert report[2].startswith("**2 failure(s)**") and report[3] == f"- {failures[0]}"
    assert "**1 gate rejection(s)**:" in report[:9]
    clean = report_markdown([row("control", 0, rate(1)), row("control", 1, rate(1))])
    assert "No failure" in clean.splitlines()[2]


def test_target_checks_follow_the_issue() -> None:
    rows = []
    for seed in (0, 1):
        rows += [
            row("hindsight", 0, rate(1), seed=seed),
            row("hindsight", 1, rate(8), rate(10), seed=seed),
            row("oracle", 1, rate(9), seed=seed),
            row("best-of-k", 1, rate(4), seed=seed),
            row("reflect-direct", 1, rate(7 - seed), seed=seed),
            row("control", 0, rate(1), seed=seed),
            row("control", 1, rate(2), seed=seed),  # +10 points: not flat
            row("hindsight", 1, rate(6), seed=seed, noise=0.25),
            row("reject", 1, rate(2), seed=seed, noise=0.25),
        ]
    checks = {what: (ok, shown) for what, ok, shown in target_checks(rows)}
    assert checks["hindsight: one-step compound success >= 0.70 (round 1)"][0]
    assert checks["hindsight >= 0.9 x oracle"] == (False, "0.800 vs 0.900 (0.89x)")
    assert checks["hindsight >= 1.5 x best-of-k"][0]
    # hindsight − reflect-direct: +.1 and +.2, mean .15, SE .05: more than two SE
    assert checks["reflect-direct below hindsight by more than two standard errors"] == (
        True,
        "hindsight − reflect-direct = +0.150, SE 0.050",
    )
    assert checks["hindsight: single-operation success within 3 points of round 0"][0]
    assert not checks["control: one-step compound success flat (within 5 points)"][0]
    assert checks["judge wrong 25%: hindsight >= 2 x reject"][0]
    assert target_checks([row("reject", 0, rate(1))]) == []


def test_noise_table_shows_each_arm_at_each_error_rate() -> None:
    rows = [
        row("hindsight", 1, rate(8)),
        row("hindsight", 1, rate(6), noise=0.25),
        row("control", 1, rate(1)),
    ]
    lines = noise_table(rows).splitlines()
    assert lines[0] == "| arm | judge wrong 0% | judge wrong 25% |"
    assert lines[3] == "| control | 0.100 ± 0.186 | — |"  # control runs without noise only


def test_loop_table_reports_what_each_round_kept_and_the_gate() -> None:
    loop = {
        "chains/success_rate": 0.7,
        "chains/success_after_0": 0.2,
        "chains/success_after_1": 0.4,
        "chains/success_after_2": 0.1,
    }
    train = {
        "status": "promoted",
        "examples": {"direct": 30.0, "hindsight": 20.0},
        "gate_delta": 0.5,
        "train_seconds": 21.4,
    }
    rows = [
        row("hindsight", 0, [False]),
        row(
            "hindsight",
            1,
            [True],
            loop=loop,
            train=train,
            seconds={"loop": 9, "train": 30},
            calls=15,
            tasks=10,
        ),
    ]
    lines = loop_table(rows).splitlines()
    assert len(lines) == 3  # header, rule, round 1 (round 0 is the pre-trained editor)
    assert lines[2] == (
        "| hindsight | 0 | 0 | 1 | 0.700 | 0.200 | 0.500 | 1.50 | 30/20 | promoted | +0.50 | 9 "
        "| 30 | 21 |"
    )


def test_training_time_table_splits_a_jobs_wall_time_into_its_parts() -> None:
    parts = {"startup_seconds": 4.0, "setup_seconds": 6.0, "train_seconds": 20.0}
    rows = [
        row("hindsight", 0, [False]),
        row("hindsight", 1, [True], train={**parts, "save_seconds": 2.0}, seconds={"train": 40}),
        row("control", 1, [True], train={**parts, "save_seconds": 4.0}, seconds={"train": 60}),
        row("reject", 1, [True], train={"status": "failed"}, seconds={"train": 5}),  # no steps
        row("oracle", 1, [True], train={"train_seconds": 9.0}, seconds={"train": 30}),  # no parts
    ]
    lines = training_time_table(rows).splitlines()
    assert lines[0] == "| part (2 jobs) | mean s | share |"
    assert "| optimizer steps | 20.0 | 40% |" in lines
    assert "| saving | 3.0 | 6% |" in lines
    assert "| the rest: launcher, publishing, the gate | 17.0 | 34% |" in lines
    assert lines[-1] == "| whole job (queued to gated) | 50.0 | 100% |"
    assert training_time_table(rows[:1]) == "(no training job trained)"


def test_write_plot_draws_a_png_with_a_noise_panel(tmp_path: Path) -> None:
    rows = [
        row(arm, r, rate(2 + 3 * r), seed=s, noise=p)
        for arm in ("hindsight", "reject")
        for r in (0, 1)
        for s in (0, 1)
        for p in (0.0, 0.25)
    ]
    path = write_plot(rows, tmp_path / "plot.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 1500  # three panels
    one = write_plot([row("control", 0, rate(1)), row("control", 1, rate(2))], tmp_path / "one.png")
    with Image.open(one) as image:
        assert 800 < image.size[0] < 1500  # two panels
