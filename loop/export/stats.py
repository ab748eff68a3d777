"""What a dataset card reports about an export, counted row by row (never the rows themselves)."""

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

SCORES = ("overall", "score_following", "score_quality", "score_preservation")
BIN_WIDTH = 0.25  # judge scores are 1-5; continuous scores fall between the integers


def score_bin(value: float) -> float:
    """The lower edge of the histogram bin of a 1-5 score."""
    return min(math.floor(value / BIN_WIDTH) * BIN_WIDTH, 5.0)


@dataclass
class SkippedRow:
    id: str
    attempt_id: int
    reason: str


@dataclass
class ExportStats:
    """Counts per split, edit type, verdict, round, licence and dataset; score histograms; rows
    skipped and why."""

    splits: Counter[str] = field(default_factory=Counter)
    edit_types: Counter[str] = field(default_factory=Counter)
    verdicts: Counter[str] = field(default_factory=Counter)
    decided_by: Counter[str] = field(default_factory=Counter)
    rounds: Counter[tuple[str, int]] = field(default_factory=Counter)  # (run, round)
    licences: Counter[str] = field(default_factory=Counter)
    datasets: Counter[str] = field(default_factory=Counter)
    hindsight: int = 0
    tags: Counter[str] = field(default_factory=Counter)
    confirmed: Counter[str] = field(default_factory=Counter)  # "true", "false", "untested"
    histograms: dict[str, Counter[float]] = field(
        default_factory=lambda: {name: Counter() for name in SCORES}
    )
    skipped: list[SkippedRow] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(self.splits.values())

    def add(self, split: str, values: dict[str, Any]) -> None:
        """Count one written row."""
        self.splits[split] += 1
        self.edit_types[values["edit_type"]] += 1
        self.verdicts[values["verdict"]] += 1
        self.decided_by[values["decided_by"]] += 1
        self.rounds[(values["run"], values["round"])] += 1
        self.licences.update(set(values["source_licences"]))
        self.datasets.update(set(values["source_datasets"]))
        self.hindsight += bool(values.get("hindsight"))
        if "tag" in values:
            self.tags[values["tag"]] += 1
            confirmed = values["confirmed"]
            self.confirmed["untested" if confirmed is None else str(confirmed).lower()] += 1
        for name in SCORES:
            if values[name] is not None:
                self.histograms[name][score_bin(values[name])] += 1

    def skip(self, row_id: str, attempt_id: int, reason: str) -> None:
        """Count a row left out, with why."""
        self.skipped.append(SkippedRow(row_id, attempt_id, reason))

    def counts(self) -> dict[str, Any]:
        """The counts as JSON (the `export` row's `counts`), keys sorted."""
        return {
            "rows": self.rows,
            "splits": dict(sorted(self.splits.items())),
            "edit_types": dict(sorted(self.edit_types.items())),
            "verdicts": dict(sorted(self.verdicts.items())),
            "decided_by": dict(sorted(self.decided_by.items())),
            "rounds": {f"{run}/{number}": n for (run, number), n in sorted(self.rounds.items())},
            "licences": dict(sorted(self.licences.items())),
            "datasets": dict(sorted(self.datasets.items())),
            "hindsight": self.hindsight,
            "tags": dict(sorted(self.tags.items())),
            "confirmed": dict(sorted(self.confirmed.items())),
            "skipped": len(self.skipped),
        }
