"""Selecting training examples from the accepted pool: direct and hindsight, filters."""

from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select

from loop.training.pool import (
    PoolFilter,
    PoolRecord,
    count_by_kind,
    load_pool_records,
    pool_examples,
    select_examples,
    staleness_of,
)
from migrations import upgrade
from store.db import make_engine, make_session_factory
from store.models import Attempt, Judgment
from store.objects import LocalStore
from store.taxonomy import Verdict
from tests.fixtures.training import seed_pool

# A compound task "make the red square blue and remove the green circle" (task 1, source s1):
# attempt 10 did the first half (Reflection), its child 11 edited o10 with the missing half and
# succeeded. A single-operation task 2 (source s2) succeeded at depth 0 (attempt 20). A restart
# (attempt 31, depth 1, from the source with the original instruction) succeeded on task 3.
COMPOUND = "make the red square blue and remove the green circle"
BASE = PoolRecord(
    attempt_id=0, run_id=1, round_number=0, task_id=1, depth=0, instruction=COMPOUND,
    input_key="s1", output_key="o10", verdict="Reflection", checkpoint_id=None,
    task_source_key="s1", task_instruction=COMPOUND, edit_type="hybrid", origin="shapes",
    following=3.0, quality=3.0, preservation=3.0, overall=3.0,
)  # fmt: skip
RECORDS = [
    replace(BASE, attempt_id=10),
    replace(
        BASE,
        attempt_id=11,
        depth=1,
        instruction="remove the green circle",
        input_key="o10",
        output_key="o11",
        verdict="Success",
        overall=4.0,
        following=4.0,
    ),  # fmt: skip
    replace(
        BASE,
        attempt_id=20,
        task_id=2,
        instruction="remove the blue disk",
        input_key="s2",
        output_key="o20",
        verdict="Success",
        task_source_key="s2",
        task_instruction="remove the blue disk",
        edit_type="remove",
        overall=5.0,
        round_number=1,
    ),  # fmt: skip
    replace(
        BASE,
        attempt_id=31,
        task_id=3,
        depth=1,
        instruction="recolour",
        input_key="s3",
        output_key="o31",
        verdict="Success",
        task_source_key="s3",
        task_instruction="recolour",
        edit_type="alter",
        overall=4.5,
        checkpoint_id=7,
    ),  # fmt: skip
]


def triples(examples: list) -> list[tuple[str, str, str, str]]:
    return [(e.kind, e.source, e.instruction, e.target) for e in examples]


def test_direct_and_hindsight_examples_of_each_accepted_attempt() -> None:
    assert triples(select_examples(RECORDS, PoolFilter())) == [
        # The reflection step: the parent's output + the revised instruction → the output ...
        ("direct", "o10", "remove the green circle", "o11"),
        # ... and in hindsight the original source and instruction → the same final image.
        ("hindsight", "s1", COMPOUND, "o11"),
        # Depth 0 and a restart: direct and hindsight coincide; kept once.
        ("direct", "s2", "remove the blue disk", "o20"),
        ("direct", "s3", "recolour", "o31"),
    ]


def test_each_kind_can_be_left_out() -> None:
    hindsight_only = select_examples(RECORDS, PoolFilter(direct=False))
    assert [e.kind for e in hindsight_only] == ["hindsight"] * 3
    direct_only = select_examples(RECORDS, PoolFilter(hindsight=False))
    assert ("hindsight", "s1", COMPOUND, "o11") not in triples(direct_only)
    assert count_by_kind(select_examples(RECORDS, PoolFilter())) == {"direct": 3, "hindsight": 1}
    with pytest.raises(ValueError, match="at least one kind"):
        PoolFilter(direct=False, hindsight=False)


@pytest.mark.parametrize(
    ("pool_filter", "attempts"),
    [
        (PoolFilter(min_overall=4.5), {20, 31}),
        (PoolFilter(min_following=4.0), {11}),  # 20 and 31 have following 3
        (PoolFilter(edit_types=("remove", "alter")), {20, 31}),
        (PoolFilter(max_depth=0), {20}),
        (PoolFilter(from_round=1), {20}),
        (PoolFilter(up_to_round=0), {11, 31}),
        (PoolFilter(checkpoint_ids=(7,)), {31}),
        (PoolFilter(checkpoint_ids=(None,)), {11, 20}),
        (PoolFilter(run_id=2), set()),
        (PoolFilter(exclude_origins=("shapes",)), set()),
    ],
)
def test_filters(pool_filter: PoolFilter, attempts: set[int]) -> None:
    assert {e.attempt_id for e in select_examples(RECORDS, pool_filter)} == attempts


def test_unfiltered_keeps_every_judged_edit_with_an_output_whatever_its_verdict() -> None:
    no_output = replace(BASE, attempt_id=40, output_key=None, verdict="Failed")
    records = [*RECORDS, no_output]
    # Attempt 10 (Reflection) joins the accepted ones; 40 has no image to train on.
    unfiltered = PoolFilter(unfiltered=True, hindsight=False)
    assert {e.attempt_id for e in select_examples(records, unfiltered)} == {10, 11, 20, 31}
    assert ("direct", "s1", COMPOUND, "o10") in triples(select_examples(records, unfiltered))
    # The other conditions still hold.
    one_step = PoolFilter(unfiltered=True, max_depth=0, hindsight=False)
    assert {e.attempt_id for e in select_examples(records, one_step)} == {10, 20}


def test_filter_round_trips_through_a_job_row_and_checks_its_values() -> None:
    data = {"run_id": 3, "up_to_round": 2, "pool_size": 40, "edit_types": ["add"]}
    pool_filter = PoolFilter.from_dict(data)
    assert pool_filter.up_to_round == 2 and pool_filter.edit_types == ("add",)
    assert pool_filter.extra == {"pool_size": 40}
    assert PoolFilter.from_dict(pool_filter.to_dict()) == pool_filter
    with pytest.raises(ValueError, match="unknown edit type 'recolor'"):
        PoolFilter(edit_types=("recolor",))
    with pytest.raises(ValueError, match="'adjust' is an alias; write 'alter'"):
        PoolFilter(edit_types=("adjust",))
    with pytest.raises(ValueError, match="min_overall=7"):
        PoolFilter(min_overall=7)


def test_examples_read_from_the_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    factory = make_session_factory(make_engine(url))
    seeded = seed_pool(factory, LocalStore(tmp_path / "objects"), single=2, compound=3, heldout=2)
    with factory() as session:
        examples = pool_examples(session, PoolFilter(exclude_origins=("heldout",)))
    # 2 single-op successes (direct) + 3 reflection chains (direct + hindsight each).
    assert count_by_kind(examples) == {"direct": 5, "hindsight": 3}
    assert {e.attempt_id for e in examples} == set(seeded.accepted_attempt_ids)
    with factory() as session:
        assert pool_examples(session, PoolFilter(run_id=seeded.run_id + 1)) == []
        unfiltered = pool_examples(
            session, PoolFilter(exclude_origins=("heldout",), unfiltered=True, hindsight=False)
        )
    # ... and unfiltered, the 3 half-done parents (Reflection) as well.
    assert len(unfiltered) == 5 + 3
    assert {e.attempt_id for e in unfiltered} > set(seeded.accepted_attempt_ids)


def test_a_reviewer_override_wins_over_the_judge(db_url: str, tmp_path: Path) -> None:
    upgrade(db_url)
    factory = make_session_factory(make_engine(db_url))
    seeded = seed_pool(factory, LocalStore(tmp_path / "objects"), single=2, compound=1, heldout=1)
    rejected, kept = seeded.accepted_attempt_ids[0], seeded.accepted_attempt_ids[1]
    with factory() as session, session.begin():
        judgments = {
            j.attempt_id: j
            for j in session.scalars(select(Judgment).join(Attempt).where(Attempt.depth == 0))
        }
        # A judge's Success overruled to Failed, and a judge's Reflection (the compound task's
        # half-done parent) overruled to Success.
        judgments[rejected].override_verdict = Verdict.FAILED
        parent = next(a for a, j in judgments.items() if j.verdict == Verdict.REFLECTION)
        judgments[parent].override_verdict = Verdict.SUCCESS
    with factory() as session:
        chosen = {e.attempt_id for e in pool_examples(session, PoolFilter(hindsight=False))}
        records = {r.attempt_id: r.verdict for r in load_pool_records(session, PoolFilter())}
    assert rejected not in chosen and kept in chosen and parent in chosen
    assert records[parent] == "Success" and rejected not in records


def test_staleness_of_the_accepted_edits_a_job_trains_on() -> None:
    records = [
        replace(BASE, attempt_id=1, verdict="Success", staleness=0),
        replace(BASE, attempt_id=2, verdict="Success", staleness=2),
        replace(BASE, attempt_id=3, verdict="Reflection", staleness=5),  # not accepted
        replace(BASE, attempt_id=4, verdict="Success", staleness=None),  # edited before it counted
    ]
    assert staleness_of(records, PoolFilter()) == {
        "train/staleness_max": 2.0,
        "train/staleness_mean": 1.0,
    }
    assert staleness_of([], PoolFilter()) == {
        "train/staleness_max": 0.0,
        "train/staleness_mean": 0.0,
    }
