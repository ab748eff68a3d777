"""The dataset card (`README.md`): YAML metadata the hub and `datasets` read, then what the export
holds, its licences, counts, score histograms, skipped rows, columns and the filter that made it.
Pure text from the counts: the same export gives the same card, byte for byte (no dates)."""

import json
from collections.abc import Iterable
from typing import Any

import yaml

from loop.export.columns import Column, ExportFormat, ExportKind, feature_yaml
from loop.export.stats import ExportStats

HISTOGRAM_PATH = "card/scores.png"
UNKNOWN_LICENCE = "unknown"  # how a card shows a source ingested without `--licence`

_INTRO = {
    ExportKind.EDITS: (
        "Edit triples (source image, instruction, edited image) accepted by editloop's judge and "
        "reflector, or by a reviewer, with the scores and the provenance of every edit: for "
        "training instruction-based image editors."
    ),
    ExportKind.REFLECTIONS: (
        "Reflection records (source image, edited image, instruction → the reflector's "
        "reasoning, target description, tag and proposed instruction, and whether the proposed "
        "instruction then succeeded), as ReasonEdit trains reflection models: for training "
        "judges and reflectors."
    ),
}

_FILES = {
    ExportFormat.HF: (
        "Parquet shards `data/<split>-NNNNN-of-NNNNN.parquet` (images as `datasets` `Image` "
        "features holding PNG bytes):\n\n```python\nfrom datasets import load_dataset\n"
        'dataset = load_dataset("parquet", data_dir="OUT")  # or load_dataset("OUT")\n```'
    ),
    ExportFormat.WEBDATASET: (
        "WebDataset tar shards `<split>-NNNNNN.tar`; each row is `KEY.source.png`, "
        "`KEY.edited.png` and `KEY.json` (every other column):\n\n```python\n"
        "import webdataset as wds\n"
        'rows = wds.WebDataset("OUT/train-{000000..000009}.tar").decode("pil")\n```'
    ),
    ExportFormat.JSONL: (
        "`<split>.jsonl`, one JSON object per row; `source_image` and `edited_image` are paths "
        "of PNG files relative to the export (`images/ab/<sha256>.png`)."
    ),
}


def hub_licence(licence: str) -> str:
    """A licence as the hub's `license` metadata writes it (lowercase ids; none: `unknown`)."""
    return licence.lower() if licence else UNKNOWN_LICENCE


def size_category(rows: int) -> str:
    """The hub's size bucket of `rows`."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):  # fmt: skip
        if rows < limit:
            return name
    return "n>10M"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: tuple[str, str], rows: Iterable[tuple[Any, Any]]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {_cell(a)} | {_cell(b)} |" for a, b in rows]
    return "\n".join(lines)


def metadata(
    *,
    kind: ExportKind,
    export_format: ExportFormat,
    columns: tuple[Column, ...],
    stats: ExportStats,
    data_files: dict[str, str],
) -> dict[str, Any]:
    """The card's YAML metadata; `data_files` (split → glob) makes `configs` and `dataset_info`
    (given for Parquet exports, which `load_dataset(OUT)` reads)."""
    licences = sorted({hub_licence(licence) for licence in stats.licences})
    meta: dict[str, Any] = {
        "license": licences[0] if len(licences) == 1 else licences,
        "pretty_name": f"editloop {kind.value}",
        "task_categories": ["image-to-image"],
        "tags": ["image-editing", "editloop", kind.value],
        "size_categories": [size_category(stats.rows)],
    }
    if data_files:
        meta["configs"] = [
            {
                "config_name": "default",
                "data_files": [{"split": s, "path": glob} for s, glob in data_files.items()],
            }
        ]
        meta["dataset_info"] = {
            "features": feature_yaml(columns),
            "splits": [{"name": s, "num_examples": stats.splits[s]} for s in data_files],
        }
    return meta


def dataset_card(
    *,
    kind: ExportKind,
    export_format: ExportFormat,
    columns: tuple[Column, ...],
    stats: ExportStats,
    export_filter: dict[str, Any],
    data_files: dict[str, str],
    histograms: bool,
) -> str:
    """The whole `README.md` of an export."""
    meta = metadata(
        kind=kind, export_format=export_format, columns=columns, stats=stats, data_files=data_files
    )
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000)
    licence_rows = sorted((licence or UNKNOWN_LICENCE, n) for licence, n in stats.licences.items())
    sections = [
        f"---\n{front}---",
        f"# editloop {kind.value}",
        _INTRO[kind],
        "## Splits\n\nTrain and validation are split by task (a hash of the seed and the task "
        "id), so no task is in both.\n\n" + _table(("split", "rows"), sorted(stats.splits.items())),
        "## Licences\n\nEvery row carries the datasets its task arrived from and their licences, "
        "as given at ingest (`source_datasets`, `source_licences`; a task that arrived from "
        "several datasets lists each). Check each licence before using or redistributing the "
        f"data; `{UNKNOWN_LICENCE}` means none was given.\n\n"
        + _table(("licence", "rows"), licence_rows)
        + "\n\n"
        + _table(("source dataset", "rows"), sorted(stats.datasets.items())),
        "## Counts\n\n"
        + _table(("edit type", "rows"), sorted(stats.edit_types.items()))
        + "\n\n"
        + _table(("verdict", "rows"), sorted(stats.verdicts.items()))
        + "\n\n"
        + _table(("verdict decided by", "rows"), sorted(stats.decided_by.items()))
        + "\n\n"
        + _table(
            ("run/round", "rows"), [(f"{r}/{n}", c) for (r, n), c in sorted(stats.rounds.items())]
        ),
    ]
    if kind == ExportKind.EDITS:
        sections.append(f"Hindsight triples (marked `hindsight: true`): {stats.hindsight}.")
    else:
        sections.append(
            _table(("reflector tag", "rows"), sorted(stats.tags.items()))
            + "\n\n"
            + _table(("proposed instruction succeeded", "rows"), sorted(stats.confirmed.items()))
        )
    if histograms:
        sections.append(f"## Scores\n\n![judge score histograms]({HISTOGRAM_PATH})")
    skipped = f"## Skipped rows\n\n{len(stats.skipped)} selected rows were left out."
    if stats.skipped:
        shown = [(s.id, f"attempt {s.attempt_id}: {s.reason}") for s in stats.skipped[:100]]
        skipped += "\n\n" + _table(("row", "why"), shown)
        if len(stats.skipped) > 100:
            skipped += f"\n\n... and {len(stats.skipped) - 100} more."
    sections.append(skipped)
    sections.append(
        "## Columns\n\n"
        + "\n".join(
            ["| column | type | description |", "|---|---|---|"]
            + [f"| `{c.name}` | {c.dtype} | {_cell(c.description)} |" for c in columns]
        )
    )
    sections.append("## Files\n\n" + _FILES[export_format])
    sections.append(
        "## How it was made\n\n`editloop export` with this filter and these options "
        "(`loop/training/pool.py` `PoolFilter`):\n\n```json\n"
        + json.dumps(export_filter, indent=2, sort_keys=True)
        + "\n```"
    )
    return "\n\n".join(sections) + "\n"
