"""Which rows an export is made of: edit triples (direct and hindsight), reflection records, and
the pool's filter, in SQL and as the plain function, choosing the same attempts."""

from dataclasses import replace
from pathlib import Path

import pytest

from loop.export.columns import ExportKind
from loop.export.selection import Child, ExportRecord, edit_rows, iter_records, reflection_row
from loop.training.pool import PoolFilter, accepted, iter_pool_records
from migrations import upgrade
from store.db import make_engine, make_session_factory
from store.objects import LocalStore
from tests.loop.export.seed import seed_export_data

STEP = ExportRecord(
    attempt_id=11, task_id=1, run_id=1, run_name="alpha", round_number=0, depth=1, seed=5,
    instruction="remove the cup", input_key="edits/o10.png", output_key="edits/o11.png",
    checkpoint_id=None, checkpoint_version=None, task_source_key="sources/s1.png",
    task_instruction="recolour the plate and remove the cup", edit_type="hybrid",
    origin="imgedit", sources=(("imgedit", "CC-BY-4.0"),), dimension_names=("a", "b", "c"),
    following=4.0, quality=4.0, preservation=4.0, overall=4.0, judge_verdict="Success",
    override_verdict=None, reviewer=None, judge_model="j", reflector_model="r",
    reflector_tag="Success",
)  # fmt: skip


def test_a_successful_reflection_step_gives_a_hindsight_triple_when_asked() -> None:
    (direct,) = edit_rows(STEP, hindsight=False)
    assert direct.image_keys == {"source_image": "edits/o10.png", "edited_image": "edits/o11.png"}
    assert (direct.id, direct.values["instruction"], direct.values["hindsight"]) == (
        "e0000000011", "remove the cup", False
    )  # fmt: skip
    _, hindsight = edit_rows(STEP, hindsight=True)
    assert hindsight.id == "h0000000011" and hindsight.values["hindsight"] is True
    assert hindsight.image_keys["source_image"] == "sources/s1.png"
    assert hindsight.values["instruction"] == STEP.task_instruction
    assert hindsight.values["attempt_id"] == 11 and hindsight.values["depth"] == 1
    # A first edit, or a restart from the source with the original instruction: nothing to add.
    restart = replace(STEP, input_key=STEP.task_source_key, instruction=STEP.task_instruction)
    assert len(edit_rows(restart, hindsight=True)) == 1
    # Only a successful chain is a right answer to the original task.
    failed = replace(STEP, judge_verdict="Failed")
    assert len(edit_rows(failed, hindsight=True)) == 1
    overruled = replace(STEP, judge_verdict="Failed", override_verdict="Success", reviewer="ann")
    rows = edit_rows(overruled, hindsight=True)
    assert len(rows) == 2 and rows[1].values["decided_by"] == "reviewer"
    assert rows[1].values["reviewer"] == "ann" and rows[1].values["judge_verdict"] == "Failed"


def test_a_reflection_is_confirmed_only_by_a_child_that_tried_its_proposal() -> None:
    asked = replace(
        STEP, depth=0, judge_verdict="Reflection", reflector_tag="Reflection",
        proposed_instruction="also remove the cup", think="half done", target_description="t",
    )  # fmt: skip
    tried = Child(12, "also remove the cup", asked.output_key, "Success")
    row = reflection_row(replace(asked, child=tried))
    assert row.values["confirmed"] is True and row.values["child_attempt_id"] == 12
    assert row.image_keys["source_image"] == asked.task_source_key
    assert row.values["instruction"] == asked.task_instruction
    assert row.values["attempt_instruction"] == asked.instruction
    failed = reflection_row(replace(asked, child=replace(tried, verdict="Failed")))
    assert failed.values["confirmed"] is False
    # Not judged yet, or a restart from the source (the verdict rule overrode the tag): unknown.
    pending = reflection_row(replace(asked, child=replace(tried, verdict=None)))
    assert pending.values["confirmed"] is None
    restart = Child(12, asked.task_instruction, asked.task_source_key, "Success")
    assert reflection_row(replace(asked, child=restart)).values["confirmed"] is None
    # No retry left: the proposal is kept, nothing confirms it.
    alone = reflection_row(replace(asked, judge_verdict="Failed"))
    assert alone.values["proposed_instruction"] == "also remove the cup"
    assert (alone.values["confirmed"], alone.values["child_attempt_id"]) == (None, None)


FILTERS = [
    PoolFilter(),
    PoolFilter(verdicts=("Failed",)),
    PoolFilter(verdicts=("Reflection", "Success"), min_depth=1),
    PoolFilter(unfiltered=True, max_depth=0),
    PoolFilter(origins=("seed-edit",)),
    PoolFilter(unfiltered=True, exclude_origins=("seed-edit", "heldout")),
    PoolFilter(unfiltered=True, licences=("",)),
    PoolFilter(licences=("CC-BY-4.0", "CC-BY-NC-4.0")),
    PoolFilter(unfiltered=True, checkpoint_ids=(None,)),
    PoolFilter(unfiltered=True, min_quality=3.0, edit_types=("add", "remove")),
    PoolFilter(unfiltered=True, from_round=1),
    PoolFilter(unfiltered=True, up_to_round=0, run_ids=(2,)),
]


def test_sql_and_the_plain_filter_choose_the_same_attempts(db_url: str, tmp_path: Path) -> None:
    upgrade(db_url)
    factory = make_session_factory(make_engine(db_url))
    seeded = seed_export_data(factory, LocalStore(tmp_path / "objects"))
    with factory() as session:
        everything = list(iter_pool_records(session, PoolFilter(unfiltered=True), page_size=7))
    assert len(everything) == 37 and len({r.task_id for r in everything}) == 25
    # Task 0 arrived from two datasets; the held-out task from one.
    sources = {r.task_id: r.sources for r in everything}
    assert sources[seeded.task_ids[0]] == (("imgedit", "CC-BY-4.0"), ("seed-edit", "CC-BY-NC-4.0"))
    for pool_filter in FILTERS:
        expected = {r.attempt_id for r in everything if accepted(r, pool_filter)}
        with factory() as session:
            in_sql = {r.attempt_id for r in iter_pool_records(session, pool_filter, page_size=5)}
        exported = {
            r.attempt_id for r in iter_records(factory, pool_filter, ExportKind.EDITS, page_size=4)
        }
        assert in_sql == exported == expected, pool_filter
        assert 0 < len(expected) < len(everything), pool_filter  # each filter discriminates


def test_new_filter_fields_are_checked_and_round_trip() -> None:
    pool_filter = PoolFilter(run_ids=(1, 2), verdicts=("Failed",), origins=("a",),
                             licences=("",), min_depth=1)  # fmt: skip
    assert PoolFilter.from_dict(pool_filter.to_dict()) == pool_filter
    with pytest.raises(ValueError, match="unknown verdict 'success'"):
        PoolFilter(verdicts=("success",))
    with pytest.raises(ValueError, match="min_depth=-1"):
        PoolFilter(min_depth=-1)
