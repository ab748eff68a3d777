"""The self-improvement benchmark's figures: success by arm and round, standard errors, the plot.

Pure functions over the rows `loop.self_improve.run_benchmark` returns (or `results.json` holds),
apart from `write_plot`, which draws them with matplotlib.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The hindsight experiment (docs/design.md, "Learning from judged edits") as targets: the hindsight
# arm reaches 60% one-step compound success within 3 rounds, 1.5x the rejection-only arm; the
# control stays flat; single operations lose at most 5 points.
TARGET_COMPOUND = 0.60
TARGET_RATIO_TO_REJECT = 1.5
TARGET_MAX_FORGETTING = 0.05
CONTROL_FLAT = 0.05


@dataclass(frozen=True)
class Cell:
    """A success rate with its standard error, over `n` held-out tasks."""

    rate: float
    se: float
    n: int

    def __str__(self) -> str:
        return f"{self.rate:.3f} ± {self.se:.3f}"


def proportion(successes: Sequence[bool]) -> Cell:
    """The rate of `successes` and its binomial standard error sqrt(p (1 - p) / n)."""
    n = len(successes)
    if n == 0:
        raise ValueError("successes is empty")
    rate = sum(successes) / n
    return Cell(rate, math.sqrt(rate * (1 - rate) / n), n)


def paired_difference(a: Sequence[bool], b: Sequence[bool]) -> Cell:
    """Mean of a_i - b_i over the same tasks and seeds, with the standard error of that mean
    (sample standard deviation / sqrt(n)): the paired comparison docs/design.md reports."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired vectors must be non-empty and of one length: {len(a)}, {len(b)}")
    diffs = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    variance = sum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else 0.0
    return Cell(mean, math.sqrt(variance / n), n)


def by_arm(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Result rows (as `asdict(RoundResult)`) grouped by arm, each sorted by round."""
    arms: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        arms.setdefault(row["arm"], []).append(row)
    return {arm: sorted(items, key=lambda r: r["round"]) for arm, items in arms.items()}


def _vector(row: dict[str, Any], kind: str) -> list[bool]:
    return list(row["evaluation"][f"{kind}_successes"])


def success_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table: one-step compound and single-operation success by arm and round."""
    arms = by_arm(rows)
    rounds = max(len(items) for items in arms.values())
    header = "| arm | measure | " + " | ".join(f"round {r}" for r in range(rounds)) + " |"
    lines = [header, "|" + "---|" * (rounds + 2)]
    for arm, items in arms.items():
        for kind, label in (("compound", "one-step compound"), ("single_op", "single operation")):
            cells = [str(proportion(_vector(row, kind))) for row in items]
            lines.append(f"| {arm} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def loop_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of what each arm's rounds did: chain success, examples, gate, time."""
    lines = [
        "| arm | round | chains succeeded | at once | after reflection | examples "
        "(direct/hindsight) | checkpoint | gate Δ | loop s | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, items in by_arm(rows).items():
        for row in items:
            if row["round"] == 0:
                continue
            loop, train = row["loop"], row["train"]
            examples = train.get("examples", {})
            delta = train.get("gate_delta")
            later = sum(v for k, v in loop.items() if k.startswith("chains/success_after_")) - (
                loop.get("chains/success_after_0", 0.0)
            )
            lines.append(
                f"| {arm} | {row['round']} | {loop.get('chains/success_rate', 0):.3f} | "
                f"{loop.get('chains/success_after_0', 0):.3f} | {later:.3f} | "
                f"{examples.get('direct', 0):.0f}/{examples.get('hindsight', 0):.0f} | "
                f"{train.get('status', 'no job')} | "
                f"{'' if delta is None else f'{delta:+.2f}'} | "
                f"{row['seconds'].get('loop', 0):.0f} | {row['seconds'].get('train', 0):.0f} |"
            )
    return "\n".join(lines)


def target_checks(rows: Sequence[dict[str, Any]]) -> list[tuple[str, bool, str]]:
    """The issue's targets against the run: (what, met, the figures), for the arms present."""
    arms = by_arm(rows)
    checks: list[tuple[str, bool, str]] = []
    hindsight, reject, control = arms.get("hindsight"), arms.get("reject"), arms.get("control")
    if hindsight:
        first, last = hindsight[0], hindsight[-1]
        best = max(proportion(_vector(r, "compound")).rate for r in hindsight[1:4] or hindsight)
        gain = paired_difference(_vector(last, "compound"), _vector(first, "compound"))
        checks.append(
            (
                f"hindsight: one-step compound success >= {TARGET_COMPOUND:.0%} within 3 rounds",
                best >= TARGET_COMPOUND,
                f"best {best:.3f}; last - round 0 = {gain.rate:+.3f} (paired SE {gain.se:.3f})",
            )
        )
        forgetting = paired_difference(_vector(first, "single_op"), _vector(last, "single_op"))
        checks.append(
            (
                f"hindsight: single-operation success falls by at most {TARGET_MAX_FORGETTING:.0%}",
                forgetting.rate <= TARGET_MAX_FORGETTING,
                f"round 0 - last = {forgetting.rate:+.3f} (paired SE {forgetting.se:.3f})",
            )
        )
    if hindsight and reject:
        h = proportion(_vector(hindsight[-1], "compound")).rate
        r = proportion(_vector(reject[-1], "compound")).rate
        diff = paired_difference(
            _vector(hindsight[-1], "compound"), _vector(reject[-1], "compound")
        )
        checks.append(
            (
                f"hindsight >= {TARGET_RATIO_TO_REJECT}x rejection-only (last round)",
                h >= TARGET_RATIO_TO_REJECT * r,
                f"{h:.3f} vs {r:.3f}; difference {diff.rate:+.3f} (paired SE {diff.se:.3f})",
            )
        )
    if control:
        change = paired_difference(
            _vector(control[-1], "compound"), _vector(control[0], "compound")
        )
        checks.append(
            (
                f"control: one-step compound success flat (within {CONTROL_FLAT:.0%})",
                abs(change.rate) <= CONTROL_FLAT,
                f"last - round 0 = {change.rate:+.3f} (paired SE {change.se:.3f})",
            )
        )
    return checks


def report_markdown(rows: Sequence[dict[str, Any]], *, targets: bool = True) -> str:
    """The whole report: success table, what each round did, and (`targets`) the benchmark's targets
    met or not."""
    lines = [
        "## Held-out success (± 1 standard error)",
        "",
        success_table(rows),
        "",
        "## What each round did",
        "",
        loop_table(rows),
    ]
    if targets:
        lines += [
            "",
            "## Targets",
            "",
            *(
                f"- [{'x' if ok else ' '}] {what}: {shown}"
                for what, ok, shown in target_checks(rows)
            ),
        ]
    return "\n".join(lines) + "\n"


def write_plot(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """A PNG of success by round for every arm: one-step compound (left), single op (right)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for arm, items in by_arm(rows).items():
        for axis, kind in zip(axes, ("compound", "single_op"), strict=True):
            cells = [proportion(_vector(row, kind)) for row in items]
            axis.errorbar(
                [row["round"] for row in items],
                [c.rate for c in cells],
                yerr=[c.se for c in cells],
                marker="o",
                capsize=3,
                label=arm,
            )
    axes[0].axhline(TARGET_COMPOUND, color="grey", linestyle=":", linewidth=1, label="target")
    axes[0].set_title("one-step compound success (held out)")
    axes[1].set_title("single-operation success (held out)")
    last_round = max(row["round"] for row in rows)
    for axis in axes:
        axis.set_xticks(range(last_round + 1))
        axis.set_xlabel("round (0 = pre-trained)")
        axis.set_ylim(0, 1.02)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("success rate (± 1 SE)")
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
