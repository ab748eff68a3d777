"""Hugging Face Parquet exports, read back by `datasets` and `pyarrow`, not by editloop."""

import hashlib
import io
import json
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image
from sqlalchemy import select

from loop.export.columns import EDIT_COLUMNS, REFLECTION_COLUMNS, ExportFormat, ExportKind
from loop.export.splits import split_of
from loop.training.pool import PoolFilter
from store.models import Export
from tests.loop.export.conftest import (
    ExportEnv,
    folder_digest,
    judged_attempts,
    manifest_verifies,
)


def load_both_ways(out: Path, cache: Path) -> tuple[datasets.DatasetDict, datasets.DatasetDict]:
    by_data_dir = datasets.load_dataset("parquet", data_dir=str(out), cache_dir=str(cache / "a"))
    by_card = datasets.load_dataset(str(out), cache_dir=str(cache / "b"))
    assert isinstance(by_data_dir, datasets.DatasetDict)
    assert isinstance(by_card, datasets.DatasetDict)
    return by_data_dir, by_card


def rows_by_id(dataset: datasets.DatasetDict) -> dict[str, tuple[str, dict]]:
    return {row["id"]: (split, row) for split in dataset for row in dataset[split]}


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def test_edits_load_both_ways_and_equal_the_database(env: ExportEnv, tmp_path: Path) -> None:
    out = tmp_path / "edits"
    result = env.export(out, hindsight=True, val_fraction=0.3, shard_mb=0.004)
    manifest = manifest_verifies(out)
    by_data_dir, by_card = load_both_ways(out, tmp_path / "cache")
    assert set(by_card) == {"train", "validation"}
    for split in by_card:
        assert by_card[split].num_rows == manifest["splits"][split]
        assert by_card[split]["id"] == by_data_dir[split]["id"]
    assert by_card["train"].features["source_image"] == datasets.Image()
    assert list(by_card["train"].features) == [c.name for c in EDIT_COLUMNS]

    # The database, read with one plain query: accepted (override wins), held-out left out.
    attempts = [
        a
        for a in judged_attempts(env.factory)
        if a["verdict"] == "Success" and a["origin"] != "heldout"
    ]
    expected = {f"e{a['attempt_id']:010d}": (a, False) for a in attempts}
    for a in attempts:
        if (a["input_key"], a["instruction"]) != (a["task_source_key"], a["task_instruction"]):
            expected[f"h{a['attempt_id']:010d}"] = (a, True)
    loaded = rows_by_id(by_card)
    assert set(loaded) == set(expected) and result.rows == len(expected)
    assert {i for i in loaded if i.startswith("h")} == {
        f"h{i:010d}" for i in env.seeded.hindsight_of
    }
    for row_id, (split, row) in loaded.items():
        attempt, hindsight = expected[row_id]
        source_key = attempt["task_source_key"] if hindsight else attempt["input_key"]
        instruction = attempt["task_instruction"] if hindsight else attempt["instruction"]
        assert split == split_of(attempt["task_id"], seed=0, val_fraction=0.3)
        assert (row["instruction"], row["hindsight"]) == (instruction, hindsight)
        assert row["original_instruction"] == attempt["task_instruction"]
        for name in ("attempt_id", "task_id", "depth", "seed", "run", "round", "checkpoint",
                     "edit_type", "verdict", "judge_verdict", "reviewer", "overall",
                     "score_quality"):  # fmt: skip
            assert row[name] == attempt[name], (row_id, name)
        assert row["decided_by"] == ("reviewer" if attempt["reviewer"] else "judge")
        for column, key in (("source", source_key), ("edited", attempt["output_key"])):
            stored = env.store.get(key)
            assert row[f"{column}_sha256"] == hashlib.sha256(stored).hexdigest()
            assert (pixels(row[f"{column}_image"]) == pixels(Image.open(io.BytesIO(stored)))).all()
        assert row["dimension_names"] == [
            "Prompt Compliance", "Visual Naturalness", "Physical & Detail Integrity"
        ]  # fmt: skip

    # No task in both splits.
    tasks = {split: set(by_card[split]["task_id"]) for split in by_card}
    assert tasks["train"] and tasks["validation"] and not tasks["train"] & tasks["validation"]
    # The export row says finished, with the manifest's checksum.
    with env.factory() as session:
        export = session.scalars(select(Export)).one()
    manifest_sha = hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()
    assert (export.status, export.kind, export.format) == ("finished", "edits", "hf")
    assert (export.checksum, export.row_count) == (manifest_sha, len(expected))
    assert export.counts["splits"] == manifest["splits"] and export.finished_at is not None
    assert export.object_key == str(out)


def test_parquet_schema_read_by_pyarrow(env: ExportEnv, tmp_path: Path) -> None:
    out = tmp_path / "reflections"
    env.export(out, ExportKind.REFLECTIONS, val_fraction=0)
    (shard,) = sorted((out / "data").glob("*.parquet"))
    assert shard.name == "train-00000-of-00001.parquet"
    schema = pq.read_schema(shard)
    assert schema.names == [c.name for c in REFLECTION_COLUMNS]
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    assert schema.field("source_image").type == image
    assert schema.field("edited_image").type == image
    assert schema.field("source_datasets").type == pa.list_(pa.string())
    assert schema.field("confirmed").type == pa.bool_()
    features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    assert features["edited_image"] == {"_type": "Image"}
    table = pq.read_table(shard)
    assert table.num_rows == 36
    png = table.column("edited_image")[0].as_py()["bytes"]
    assert png.startswith(b"\x89PNG\r\n\x1a\n")


def test_reflection_records_carry_the_outcome_of_the_next_attempt(
    env: ExportEnv, tmp_path: Path
) -> None:
    out = tmp_path / "reflections"
    env.export(out, ExportKind.REFLECTIONS)
    loaded = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "c"))
    rows = {row["attempt_id"]: row for split in loaded for row in loaded[split]}
    attempts = {a["attempt_id"]: a for a in judged_attempts(env.factory)}
    # Every judged attempt the reflector answered, whatever its verdict; not the held-out one.
    assert set(rows) == {i for i, a in attempts.items() if a["origin"] != "heldout"}
    for parent in env.seeded.confirmed:
        row = rows[parent]
        assert (row["tag"], row["confirmed"], row["child_verdict"]) == (
            "Reflection", True, "Success"
        )  # fmt: skip
        assert row["child_instruction"] == row["proposed_instruction"]
        assert row["attempt_instruction"] == row["instruction"] == attempts[parent]["instruction"]
    for parent in env.seeded.unconfirmed:
        assert (rows[parent]["confirmed"], rows[parent]["child_verdict"]) == (False, "Failed")
    for attempt_id in env.seeded.no_retry_left:
        # No retry was left: the proposal is kept, and nothing says whether it would have worked.
        row = rows[attempt_id]
        assert row["proposed_instruction"] == attempts[attempt_id]["proposed_instruction"]
        assert (row["tag"], row["verdict"], row["child_attempt_id"], row["confirmed"]) == (
            "Reflection", "Failed", None, None
        )  # fmt: skip
    child = rows[env.seeded.hindsight_of[0]]
    # A reflection step's record is judged against the task's original instruction.
    assert child["instruction"] != child["attempt_instruction"]
    assert child["reasoning"] and child["target_description"]


def test_overrides_win_over_the_judge(env: ExportEnv, tmp_path: Path) -> None:
    out = tmp_path / "edits"
    env.export(out, val_fraction=0)
    rows = {r["attempt_id"]: r for r in datasets.load_dataset(
        str(out), cache_dir=str(tmp_path / "c"), split="train")}  # fmt: skip
    assert not set(env.seeded.overruled_to_failed) & set(rows)  # the judge said Success
    (overruled,) = env.seeded.overruled_to_success  # the judge said Failed
    row = rows[overruled]
    assert (row["verdict"], row["judge_verdict"], row["decided_by"], row["reviewer"]) == (
        "Success", "Failed", "reviewer", "ann"
    )  # fmt: skip
    assert {r["decided_by"] for i, r in rows.items() if i != overruled} == {"judge"}


def test_licence_filter_and_the_card_lists_every_licence_present(
    env: ExportEnv, tmp_path: Path
) -> None:
    everything, non_commercial = tmp_path / "all", tmp_path / "nc"
    env.export(everything)
    env.export(non_commercial, pool_filter=PoolFilter(
        exclude_origins=("heldout",), licences=("CC-BY-NC-4.0",), hindsight=False))  # fmt: skip
    rows = datasets.load_dataset(str(non_commercial), cache_dir=str(tmp_path / "c"))
    licences = [set(r["source_licences"]) for split in rows for r in rows[split]]
    assert licences and all("CC-BY-NC-4.0" in found for found in licences)
    # Task 0 arrived from two datasets: it is in, with both its sources.
    assert {"CC-BY-4.0", "CC-BY-NC-4.0"} in licences
    for folder, expected in ((everything, ["cc-by-4.0", "cc-by-nc-4.0", "unknown"]),
                             (non_commercial, ["cc-by-4.0", "cc-by-nc-4.0"])):  # fmt: skip
        card = (folder / "README.md").read_text()
        meta = yaml.safe_load(card.split("---\n")[1])
        assert meta["license"] == expected
        for licence in expected:
            assert f"| {licence.upper() if licence != 'unknown' else licence} |" in card
        assert "## Skipped rows\n\n0 selected rows were left out." in card


def test_reexport_is_byte_identical(env: ExportEnv, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    env.export(first, hindsight=True, shard_mb=0.004)  # several shards
    env.export(second, hindsight=True, shard_mb=0.004)
    digest = folder_digest(first)
    assert len([p for p in digest if p.endswith(".parquet")]) >= 3
    assert digest == folder_digest(second)
    # Again into the same folder: an earlier export of the same kind is replaced, same bytes.
    env.export(first, hindsight=True, shard_mb=0.004)
    assert folder_digest(first) == digest
    with env.factory() as session:
        assert [e.status for e in session.scalars(select(Export))] == ["finished"] * 3


def test_the_format_changes_the_files_not_the_rows(env: ExportEnv, tmp_path: Path) -> None:
    hf = env.export(tmp_path / "hf", ExportKind.REFLECTIONS)
    jsonl = env.export(tmp_path / "jsonl", ExportKind.REFLECTIONS, ExportFormat.JSONL)
    assert hf.counts | {"files": 0} == jsonl.counts | {"files": 0}


def test_several_shards_load_as_one_split(env: ExportEnv, tmp_path: Path) -> None:
    out = tmp_path / "edits"
    env.export(out, hindsight=True, val_fraction=0.3, shard_mb=0.004)
    manifest = manifest_verifies(out)
    shards = [f for f in manifest["files"] if f["path"].startswith("data/train-")]
    assert len(shards) >= 2 and shards[0]["path"].endswith(f"-of-{len(shards):05d}.parquet")
    by_data_dir, by_card = load_both_ways(out, tmp_path / "cache")
    assert (
        by_card["train"].num_rows == by_data_dir["train"].num_rows == sum(f["rows"] for f in shards)
    )
