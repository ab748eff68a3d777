"""The self-improvement benchmark's figures: success by arm, round and judge noise over seeds,
paired differences, editing budgets, what went wrong, the targets, the plot.

Pure functions over the rows `self_improve.run_benchmark` returns (`asdict(RoundResult)`, as
`results.json` holds them), apart from `write_plot`, which draws them with matplotlib. Across
seeds a figure is the mean with a 95% interval (Student's t over the seeds' values); with one
seed, the binomial interval of that seed's held-out tasks.
"""

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, stdev
from typing import Any

Row = dict[str, Any]

# The issue's targets (docs/design.md, "Learning from judged edits"), over the seeds' means at the
# last round.
TARGET_COMPOUND = 0.70  # hindsight's one-step compound success, judge without noise
TARGET_SHARE_OF_ORACLE = 0.9  # hindsight >= this x the oracle
TARGET_RATIO_TO_BEST_OF_K = 1.5  # hindsight >= this x best-of-k at the same editing budget
TARGET_RATIO_UNDER_NOISE = 2.0  # hindsight >= this x reject with the judge wrong 25% of the time
NOISE_OF_TARGET = 0.25
TARGET_MAX_FORGETTING = 0.03  # single-operation success falls by at most this
CONTROL_FLAT = 0.05
# Student's t, 97.5% quantile, by degrees of freedom (a 95% two-sided interval).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306}
_Z975 = 1.96
KINDS = (("compound", "one-step compound"), ("single_op", "single operation"))
GOOD_STATUSES = ("promoted", "rejected")  # a job that trained, published and was gated


@dataclass(frozen=True)
class Cell:
    """A success rate with its standard error, over `n` held-out tasks."""

    rate: float
    se: float
    n: int

    def __str__(self) -> str:
        return f"{self.rate:.3f} ± {self.se:.3f}"


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with its 95% interval; `seeds` values went into it."""

    mean: float
    low: float
    high: float
    seeds: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.half_width:.3f}"


def proportion(successes: Sequence[bool]) -> Cell:
    """The rate of `successes` and its binomial standard error sqrt(p (1 - p) / n)."""
    n = len(successes)
    if n == 0:
        raise ValueError("successes is empty")
    rate = sum(successes) / n
    return Cell(rate, math.sqrt(rate * (1 - rate) / n), n)


def paired_difference(a: Sequence[bool], b: Sequence[bool]) -> Cell:
    """Mean of a_i - b_i over the same tasks and seeds, with the standard error of that mean
    (sample standard deviation / sqrt(n)): the paired comparison."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired vectors must be non-empty and of one length: {len(a)}, {len(b)}")
    diffs = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    avg = sum(diffs) / n
    variance = sum((d - avg) ** 2 for d in diffs) / (n - 1) if n > 1 else 0.0
    return Cell(avg, math.sqrt(variance / n), n)


def across_seeds(cells: Sequence[Cell]) -> Estimate:
    """The mean of the seeds' values with a 95% interval: Student's t over the seeds when there
    are several, else the one seed's normal interval (1.96 standard errors)."""
    if not cells:
        raise ValueError("no seeds to average")
    values = [c.rate for c in cells]
    if len(cells) == 1:
        half = _Z975 * cells[0].se
    else:
        half = _T975.get(len(cells) - 1, _Z975) * stdev(values) / math.sqrt(len(cells))
    avg = mean(values)
    return Estimate(avg, avg - half, avg + half, len(cells))


def seed_se(cells: Sequence[Cell]) -> float:
    """The standard error of the mean over seeds (the one seed's own with one seed)."""
    if len(cells) == 1:
        return cells[0].se
    return stdev([c.rate for c in cells]) / math.sqrt(len(cells))


# ---- selecting rows ------------------------------------------------------------------------


def _noise(row: Row) -> float:
    return float(row.get("noise", 0.0))


def noise_levels(rows: Iterable[Row]) -> list[float]:
    return sorted({_noise(r) for r in rows})


def arms_of(rows: Iterable[Row], noise: float | None = None) -> list[str]:
    """The arms present (at `noise`), in the order they first appear."""
    seen: dict[str, None] = {}
    for row in rows:
        if noise is None or _noise(row) == noise:
            seen.setdefault(row["arm"], None)
    return list(seen)


def rounds_of(rows: Iterable[Row]) -> list[int]:
    return sorted({int(r["round"]) for r in rows})


def by_seed(rows: Iterable[Row], *, arm: str, noise: float, number: int) -> dict[int, Row]:
    """The rows of one arm, judge noise and round, by seed."""
    return {
        int(r.get("seed", 0)): r
        for r in rows
        if r["arm"] == arm and _noise(r) == noise and int(r["round"]) == number
    }


def _vector(row: Row, kind: str) -> list[bool]:
    return list(row["evaluation"][f"{kind}_successes"])


def estimate(
    rows: Sequence[Row], *, arm: str, noise: float, number: int, kind: str
) -> Estimate | None:
    """The arm's success at round `number` over the seeds (None when it did not run)."""
    seeds = by_seed(rows, arm=arm, noise=noise, number=number)
    if not seeds:
        return None
    return across_seeds([proportion(_vector(r, kind)) for _, r in sorted(seeds.items())])


def paired(
    rows: Sequence[Row],
    *,
    arm: str,
    other: str,
    noise: float,
    number: int,
    other_round: int | None = None,
) -> tuple[dict[int, Cell], Estimate] | None:
    """`arm` − `other` on the same held-out tasks within each seed (round `number`, the other at
    `other_round`, default the same): per seed, and over the seeds. None when a side is missing."""
    mine = by_seed(rows, arm=arm, noise=noise, number=number)
    theirs = by_seed(
        rows, arm=other, noise=noise, number=number if other_round is None else other_round
    )
    seeds = sorted(set(mine) & set(theirs))
    if not seeds:
        return None
    diffs = {
        s: paired_difference(_vector(mine[s], "compound"), _vector(theirs[s], "compound"))
        for s in seeds
    }
    return diffs, across_seeds(list(diffs.values()))


# ---- what went wrong -----------------------------------------------------------------------


def _where(row: Row) -> str:
    seed, noise = row.get("seed", 0), _noise(row)
    return f"{row['arm']} (seed {seed}, judge noise {noise:g}) round {row['round']}"


def job_failures(rows: Sequence[Row], arm_failures: Sequence[dict[str, Any]] = ()) -> list[str]:
    """Every training job that did not train, publish and gate a checkpoint (an empty pool
    included), and every arm that could not run: what makes the command fail."""
    lines = [
        f"training failed: {_where(r)}: {r['train'].get('status', 'no job')}"
        + (f": {_first_line(r['train']['error'])}" if r["train"].get("error") else "")
        for r in rows
        if int(r["round"]) > 0 and r["train"].get("status") not in GOOD_STATUSES
    ]
    lines += [
        f"arm failed: {f['arm']} (seed {f['seed']}, judge noise {float(f['noise']):g}): "
        f"{_first_line(f['error'])}"
        for f in arm_failures
    ]
    return lines


def gate_rejections(rows: Sequence[Row]) -> list[str]:
    """Every checkpoint the gate rejected (the next round kept editing with its parent)."""
    return [
        f"gate rejected: {_where(r)}: Δ {r['train'].get('gate_delta', float('nan')):+.2f}"
        for r in rows
        if int(r["round"]) > 0 and r["train"].get("status") == "rejected"
    ]


def _first_line(text: str, limit: int = 160) -> str:
    """An error in one line: its first line and, for a longer one (a log tail), its last; each cut
    to `limit` characters (the full text is in results.json and the job folder)."""

    def cut(line: str) -> str:
        return line if len(line) <= limit else line[: limit - 1] + "…"

    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) > 1:
        return f"{cut(lines[0])} … {cut(lines[-1])}"
    return cut(lines[0]) if lines else ""


# ---- tables --------------------------------------------------------------------------------


def success_table(rows: Sequence[Row], *, noise: float = 0.0) -> str:
    """A Markdown table: one-step compound and single-operation success by arm and round at
    `noise`, the mean over seeds ± the half-width of its 95% interval."""
    numbers = rounds_of(rows)
    header = "| arm | measure | " + " | ".join(f"round {n}" for n in numbers) + " |"
    lines = [header, "|" + "---|" * (len(numbers) + 2)]
    for arm in arms_of(rows, noise):
        for kind, label in KINDS:
            cells = [estimate(rows, arm=arm, noise=noise, number=n, kind=kind) for n in numbers]
            shown = ["" if c is None else str(c) for c in cells]
            lines.append(f"| {arm} | {label} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def budget_table(rows: Sequence[Row], *, noise: float = 0.0) -> str:
    """Editor calls per task by arm and round (mean over seeds): each arm's editing budget."""
    numbers = [n for n in rounds_of(rows) if n > 0]
    lines = [
        "| arm | " + " | ".join(f"round {n}" for n in numbers) + " |",
        "|" + "---|" * (len(numbers) + 1),
    ]
    for arm in arms_of(rows, noise):
        cells = []
        for n in numbers:
            seeds = by_seed(rows, arm=arm, noise=noise, number=n)
            per_task = [r["calls"] / r["tasks"] for r in seeds.values() if r.get("tasks")]
            cells.append(f"{mean(per_task):.2f}" if per_task else "")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(rows: Sequence[Row], *, noise: float = 0.0, reference: str = "hindsight") -> str:
    """`reference` − each other arm at the last round, one-step compound success on the same
    held-out tasks: per seed (± paired standard error) and over the seeds (± 95% interval)."""
    last = rounds_of(rows)[-1]
    seeds = sorted({int(r.get("seed", 0)) for r in rows})
    lines = [
        "| difference | " + " | ".join(f"seed {s}" for s in seeds) + " | over seeds |",
        "|" + "---|" * (len(seeds) + 2),
    ]
    for other in arms_of(rows, noise):
        if other == reference:
            continue
        found = paired(rows, arm=reference, other=other, noise=noise, number=last)
        if found is None:
            continue
        diffs, overall = found
        cells = [f"{diffs[s].rate:+.3f} ± {diffs[s].se:.3f}" if s in diffs else "" for s in seeds]
        lines.append(
            f"| {reference} − {other} | " + " | ".join(cells) + f" | {overall.mean:+.3f} ± "
            f"{overall.half_width:.3f} |"
        )
    return "\n".join(lines)


def noise_table(rows: Sequence[Row]) -> str:
    """One-step compound success at the last round by arm and judge error rate."""
    levels = noise_levels(rows)
    last = rounds_of(rows)[-1]
    lines = [
        "| arm | " + " | ".join(f"judge wrong {p:.0%}" for p in levels) + " |",
        "|" + "---|" * (len(levels) + 1),
    ]
    for arm in arms_of(rows):
        cells = [estimate(rows, arm=arm, noise=p, number=last, kind="compound") for p in levels]
        lines.append(f"| {arm} | " + " | ".join("—" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines)


def loop_table(rows: Sequence[Row]) -> str:
    """A Markdown table of what each arm's rounds did: chain success, editing budget, examples,
    gate, time (the loop; the training job from queueing to the gate's decision; of that, the
    optimizer steps)."""
    lines = [
        "| arm | seed | judge noise | round | chains succeeded | at once | after reflection | "
        "calls/task | examples (direct/hindsight) | checkpoint | gate Δ | loop s | train s | "
        "steps s |",
        "|" + "---|" * 14,
    ]
    for row in sorted(
        (r for r in rows if int(r["round"]) > 0),
        key=lambda r: (_noise(r), r.get("seed", 0), arms_of(rows).index(r["arm"]), r["round"]),
    ):
        loop, train = row["loop"], row["train"]
        examples = train.get("examples", {})
        delta = train.get("gate_delta")
        later = sum(v for k, v in loop.items() if k.startswith("chains/success_after_")) - (
            loop.get("chains/success_after_0", 0.0)
        )
        calls = row["calls"] / row["tasks"] if row.get("tasks") else 0.0
        lines.append(
            f"| {row['arm']} | {row.get('seed', 0)} | {_noise(row):g} | {row['round']} | "
            f"{loop.get('chains/success_rate', 0):.3f} | "
            f"{loop.get('chains/success_after_0', 0):.3f} | {later:.3f} | {calls:.2f} | "
            f"{examples.get('direct', 0):.0f}/{examples.get('hindsight', 0):.0f} | "
            f"{train.get('status', 'no job')} | "
            f"{'' if delta is None else f'{delta:+.2f}'} | "
            f"{row['seconds'].get('loop', 0):.0f} | {row['seconds'].get('train', 0):.0f} | "
            f"{train.get('train_seconds') or 0:.0f} |"
        )
    return "\n".join(lines)


TIME_PARTS = (
    ("startup_seconds", "process start + imports"),
    ("setup_seconds", "setup (process group, models, data, DeepSpeed)"),
    ("train_seconds", "optimizer steps"),
    ("save_seconds", "saving"),
)


def training_time_table(rows: Sequence[Row]) -> str:
    """Where a fine-tuning job's time goes, as a mean over every job that trained: the parts the
    training process measures, and the rest of the job's wall time (launcher, publishing, the
    gate's evaluation)."""
    # Jobs that trained and measured their parts (results of older versions lack some).
    jobs = [
        r for r in rows
        if int(r["round"]) > 0 and all(r["train"].get(key) is not None for key, _ in TIME_PARTS)
    ]  # fmt: skip
    if not jobs:
        return "(no training job trained)"
    wall = mean(float(r["seconds"].get("train", 0.0)) for r in jobs)
    parts = [(label, mean(float(r["train"].get(key) or 0.0) for r in jobs)) for key, label in
             TIME_PARTS]  # fmt: skip
    parts.append(("the rest: launcher, publishing, the gate", wall - sum(s for _, s in parts)))
    lines = [f"| part ({len(jobs)} jobs) | mean s | share |", "|---|---|---|"]
    lines += [f"| {label} | {s:.1f} | {s / wall:.0%} |" for label, s in parts if wall > 0]
    lines.append(f"| whole job (queued to gated) | {wall:.1f} | 100% |")
    return "\n".join(lines)


# ---- targets -------------------------------------------------------------------------------


def _last(rows: Sequence[Row], arm: str, noise: float = 0.0) -> Estimate | None:
    last = rounds_of(rows)[-1]
    return estimate(rows, arm=arm, noise=noise, number=last, kind="compound")


def target_checks(rows: Sequence[Row]) -> list[tuple[str, bool, str]]:
    """The issue's targets against the run, for the arms and judge noises present: (what, met,
    the figures), means over seeds at the last round."""
    checks: list[tuple[str, bool, str]] = []
    if not rows:
        return checks
    last = rounds_of(rows)[-1]
    hindsight = _last(rows, "hindsight")
    if hindsight is not None:
        checks.append(
            (
                f"hindsight: one-step compound success >= {TARGET_COMPOUND:.2f} (round {last})",
                hindsight.mean >= TARGET_COMPOUND,
                f"{hindsight}",
            )
        )
        for other, ratio in (
            ("oracle", TARGET_SHARE_OF_ORACLE),
            ("best-of-k", TARGET_RATIO_TO_BEST_OF_K),
        ):
            theirs = _last(rows, other)
            if theirs is not None:
                checks.append(
                    (
                        f"hindsight >= {ratio:g} x {other}",
                        hindsight.mean >= ratio * theirs.mean,
                        f"{hindsight.mean:.3f} vs {theirs.mean:.3f}"
                        + (f" ({hindsight.mean / theirs.mean:.2f}x)" if theirs.mean else ""),
                    )
                )
        found = paired(rows, arm="hindsight", other="reflect-direct", noise=0.0, number=last)
        if found is not None:
            diffs, overall = found
            se = seed_se(list(diffs.values()))
            checks.append(
                (
                    "reflect-direct below hindsight by more than two standard errors",
                    overall.mean > 2 * se,
                    f"hindsight − reflect-direct = {overall.mean:+.3f}, SE {se:.3f}",
                )
            )
        forgetting = _change(rows, "hindsight", "single_op")
        if forgetting is not None:
            checks.append(
                (
                    f"hindsight: single-operation success within {TARGET_MAX_FORGETTING * 100:.0f} "
                    "points of round 0",
                    forgetting.mean >= -TARGET_MAX_FORGETTING,
                    f"round {last} − round 0 = {forgetting}",
                )
            )
    control = _change(rows, "control", "compound")
    if control is not None:
        checks.append(
            (
                f"control: one-step compound success flat (within {CONTROL_FLAT * 100:.0f} points)",
                abs(control.mean) <= CONTROL_FLAT,
                f"round {last} − round 0 = {control}",
            )
        )
    noisy_h = _last(rows, "hindsight", NOISE_OF_TARGET)
    noisy_r = _last(rows, "reject", NOISE_OF_TARGET)
    if noisy_h is not None and noisy_r is not None:
        checks.append(
            (
                f"judge wrong {NOISE_OF_TARGET:.0%}: hindsight >= "
                f"{TARGET_RATIO_UNDER_NOISE:g} x reject",
                noisy_h.mean >= TARGET_RATIO_UNDER_NOISE * noisy_r.mean,
                f"{noisy_h.mean:.3f} vs {noisy_r.mean:.3f}",
            )
        )
    return checks


def _change(rows: Sequence[Row], arm: str, kind: str) -> Estimate | None:
    """The arm's last round − its round 0 (paired within each seed), over the seeds."""
    numbers = rounds_of(rows)
    first = by_seed(rows, arm=arm, noise=0.0, number=numbers[0])
    final = by_seed(rows, arm=arm, noise=0.0, number=numbers[-1])
    seeds = sorted(set(first) & set(final))
    if not seeds or numbers[0] == numbers[-1]:
        return None
    return across_seeds(
        [paired_difference(_vector(final[s], kind), _vector(first[s], kind)) for s in seeds]
    )


# ---- the report ----------------------------------------------------------------------------


def report_markdown(
    rows: Sequence[Row],
    *,
    arm_failures: Sequence[dict[str, Any]] = (),
    targets: bool = True,
    seconds: float | None = None,
    machine: dict[str, Any] | None = None,
) -> str:
    """The whole report: what went wrong first (failed jobs and arms, gate rejections), then the
    success tables, the paired differences, the editing budgets, the judge noise, what each round
    did and (`targets`) the targets met or not."""
    failures = job_failures(rows, arm_failures)
    rejections = gate_rejections(rows)
    seeds = sorted({int(r.get("seed", 0)) for r in rows})
    lines = ["# Does the loop improve an editor?", ""]
    if failures:
        lines += [f"**{len(failures)} failure(s)** (the command exits 1 unless --allow-failures):"]
        lines += [f"- {line}" for line in failures]
    else:
        lines += ["No failure: every training job of every arm trained, published and was gated."]
    if rejections:
        lines += ["", f"**{len(rejections)} gate rejection(s)**:", *(f"- {r}" for r in rejections)]
    else:
        lines += ["No gate rejection."]
    summary = f"Seeds {seeds}; judge error rates {[f'{p:g}' for p in noise_levels(rows)]}"
    if seconds is not None:
        summary += f"; {seconds / 60:.1f} minutes"
    if machine:
        summary += (
            f" on {machine.get('cpus')} CPUs, {machine.get('parallel_arms')} arm runs at once "
            f"(1-minute load average {machine['load_average_mean']:.1f} on average, "
            f"{machine['load_average_max']:.1f} at most)"
        )
    lines += ["", summary + ".", ""]
    for noise in noise_levels(rows):
        title = "exact judge" if noise == 0 else f"judge wrong {noise:.0%} of the time"
        lines += [
            f"## Held-out success, {title} (mean over seeds ± 95% interval)",
            "",
            success_table(rows, noise=noise),
            "",
            f"Paired differences at the last round, one-step compound ({title}):",
            "",
            paired_table(rows, noise=noise),
            "",
            f"Editor calls per task ({title}):",
            "",
            budget_table(rows, noise=noise),
            "",
        ]
    if len(noise_levels(rows)) > 1:
        lines += [
            "## One-step compound success at the last round by judge error rate",
            "",
            noise_table(rows),
            "",
            "(control and oracle train on every sample, whatever the verdict: they run with the "
            "exact judge only.)",
            "",
        ]
    lines += ["## What each round did", "", loop_table(rows), ""]
    lines += ["## Where a training job's time goes", "", training_time_table(rows)]
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


def write_plot(rows: Sequence[Row], path: Path) -> Path:
    """A PNG: success by round for every arm with the exact judge (one-step compound, single
    operation; mean over seeds, 95% intervals) and, with several judge error rates, last-round
    compound success by error rate."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    levels = noise_levels(rows)
    base = levels[0]
    panels = 3 if len(levels) > 1 else 2
    figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 4))
    numbers = rounds_of(rows)
    for arm in arms_of(rows, base):
        for axis, (kind, _) in zip(axes[:2], KINDS, strict=True):
            found = [(n, estimate(rows, arm=arm, noise=base, number=n, kind=kind)) for n in numbers]
            points = [(n, e) for n, e in found if e is not None]
            axis.errorbar(
                [n for n, _ in points],
                [e.mean for _, e in points],
                yerr=[e.half_width for _, e in points],
                marker="o",
                capsize=3,
                label=arm,
            )
    axes[0].axhline(TARGET_COMPOUND, color="grey", linestyle=":", linewidth=1, label="target")
    seeds = len({r.get("seed", 0) for r in rows})
    axes[0].set_title(f"one-step compound success (held out, {seeds} seed(s))")
    axes[1].set_title("single-operation success (held out)")
    for axis in axes[:2]:
        axis.set_xticks(numbers)
        axis.set_xlabel("round (0 = pre-trained)")
        axis.set_ylim(0, 1.02)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("success rate (mean, 95% interval)")
    axes[0].legend(fontsize=8)
    if panels == 3:
        for arm in arms_of(rows):
            found = [(p, _last(rows, arm, p)) for p in levels]
            points = [(p, e) for p, e in found if e is not None]
            if len(points) > 1:
                axes[2].errorbar(
                    [p for p, _ in points],
                    [e.mean for _, e in points],
                    yerr=[e.half_width for _, e in points],
                    marker="o",
                    capsize=3,
                    label=arm,
                )
        axes[2].set_title(f"one-step compound success, round {numbers[-1]}")
        axes[2].set_xlabel("judge error rate")
        axes[2].set_xticks(levels)
        axes[2].set_ylim(0, 1.02)
        axes[2].grid(alpha=0.3)
        axes[2].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
