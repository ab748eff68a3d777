"""The benchmark's figures: standard errors, paired differences, tables, targets, the plot."""

import math
from pathlib import Path

import pytest
from PIL import Image

from loop.benchmark.report import (
    loop_table,
    paired_difference,
    proportion,
    report_markdown,
    success_table,
    target_checks,
    write_plot,
)


def row(arm: str, number: int, compound: list[bool], single: list[bool], **extra: object) -> dict:
    return {
        "arm": arm,
        "round": number,
        "evaluation": {"compound_successes": compound, "single_op_successes": single},
        "loop": extra.get("loop", {}),
        "train": extra.get("train", {}),
        "seconds": extra.get("seconds", {}),
    }


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


def test_success_table_has_a_row_per_arm_and_measure_and_a_column_per_round() -> None:
    rows = [
        row("hindsight", 1, [True, True], [True, True]),
        row("hindsight", 0, [False, True], [True, True]),
    ]
    lines = success_table(rows).splitlines()
    assert lines[0] == "| arm | measure | round 0 | round 1 |"
    # round 0 first, whatever the input order
    assert lines[2] == "| hindsight | one-step compound | 0.500 ± 0.354 | 1.000 ± 0.000 |"
    assert lines[3] == "| hindsight | single operation | 1.000 ± 0.000 | 1.000 ± 0.000 |"


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
    }
    rows = [
        row("hindsight", 0, [False], [True]),
        row(
            "hindsight", 1, [True], [True], loop=loop, train=train, seconds={"loop": 9, "train": 30}
        ),
    ]
    lines = loop_table(rows).splitlines()
    assert len(lines) == 3  # header, rule, round 1 (round 0 is the pre-trained editor)
    assert (
        lines[2] == "| hindsight | 1 | 0.700 | 0.200 | 0.500 | 30/20 | promoted | +0.50 | 9 | 30 |"
    )


def test_target_checks_compare_the_arms_as_the_issue_states() -> None:
    n = 10
    zero, six, two = [False] * n, [True] * 6 + [False] * 4, [True] * 2 + [False] * 8
    rows = [
        row("hindsight", 0, zero, [True] * n),
        row("hindsight", 1, six, [True] * 9 + [False]),  # single falls by 10 points
        row("reject", 0, zero, [True] * n),
        row("reject", 1, two, [True] * n),
        row("control", 0, zero, [True] * n),
        row("control", 1, [True] + [False] * 9, [True] * n),  # +10 points: not flat
    ]
    checks = target_checks(rows)
    assert [what.split(":")[0] for what, _, _ in checks] == [
        "hindsight", "hindsight", "hindsight >= 1.5x rejection-only (last round)", "control"
    ]  # fmt: skip
    results = [ok for _, ok, _ in checks]
    # compound reaches 60%: met; forgetting 10 points > 5: not met; 0.6 >= 1.5 x 0.2: met;
    # control moved 10 points: not flat.
    assert results == [True, False, True, False]
    only_reject = target_checks([row("reject", 0, zero, zero)])
    assert only_reject == []


def test_write_plot_draws_a_png(tmp_path: Path) -> None:
    rows = [
        row(arm, r, [r > 0] * 4, [True] * 4) for arm in ("hindsight", "control") for r in (0, 1)
    ]
    path = write_plot(rows, tmp_path / "plot.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 500


def test_the_report_holds_the_tables_and_ticks_the_targets_met() -> None:
    rows = [row("control", 0, [False] * 4, [True] * 4), row("control", 1, [False] * 4, [True] * 4)]
    report = report_markdown(rows)
    assert report.startswith("## Held-out success")
    assert success_table(rows) in report and loop_table(rows) in report
    assert "- [x] control: one-step compound success flat" in report
    assert "Targets" not in report_markdown(rows, targets=False)
