"""Judge and reflector examples from the pool: confirmed outcomes; examples equal the rows."""

from dataclasses import replace
from pathlib import Path

import pytest

from loop.export.columns import ExportKind
from loop.export.selection import iter_records
from loop.export.splits import split_of
from loop.training.judge_data import build_examples, select_examples
from loop.training.outcomes import confirmed_outcome
from loop.training.pool import PoolFilter
from migrations import upgrade
from rewards.parsing import parse_scores
from rewards.prompts import dimension_names
from rewards.reflection import validate_reflection
from rewards.verdict import VerdictThresholds
from store.db import make_engine, make_session_factory
from store.models import CheckpointRole
from store.objects import LocalStore
from store.taxonomy import EditType
from tests.loop.export.conftest import ALL_VERDICTS, ExportEnv, judged_attempts
from tests.loop.export.seed import seed_export_data

POOL = PoolFilter(verdicts=ALL_VERDICTS, exclude_origins=("heldout",))
THRESHOLDS = VerdictThresholds()


@pytest.fixture
def env(tmp_path: Path) -> ExportEnv:
    """SQLite and a local folder seeded with every chain shape (tests/loop/export/seed.py)."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    factory = make_session_factory(make_engine(url))
    store = LocalStore(tmp_path / "objects")
    return ExportEnv(factory, store, seed_export_data(factory, store), url)


def expected_outcomes(env: ExportEnv) -> dict[int, str | None]:
    """What each seeded chain shape confirms (tests/loop/export/seed.py)."""
    seeded = env.seeded
    unconfirmed = {*seeded.unconfirmed, *seeded.no_retry_left, *seeded.overruled_to_failed,
                   *seeded.overruled_to_success}  # fmt: skip
    expected: dict[int, str | None] = {}
    for row in judged_attempts(env.factory):
        if row["origin"] == "heldout":
            continue
        attempt = row["attempt_id"]
        if attempt in unconfirmed:
            expected[attempt] = None
        elif attempt in seeded.confirmed:
            expected[attempt] = "Reflection"
        else:  # seeded Success edits score 4.5/4.0/4.5, above the thresholds
            expected[attempt] = row["tag"]
    return expected


def test_confirmed_outcomes_follow_the_chains(env: ExportEnv) -> None:
    records = list(iter_records(env.factory, POOL, ExportKind.REFLECTIONS))
    outcomes = {r.attempt_id: confirmed_outcome(r, THRESHOLDS) for r in records}
    assert outcomes == expected_outcomes(env)
    assert {"Success", "Reflection", "Failed", None} == set(outcomes.values())
    # The scorer must agree for a Success: stricter thresholds unconfirm every one.
    strict = VerdictThresholds(success_min_overall=4.5)
    assert "Success" not in {confirmed_outcome(r, strict) for r in records}


def test_judge_examples_equal_the_judgments(env: ExportEnv) -> None:
    rows = {row["attempt_id"]: row for row in judged_attempts(env.factory)}
    examples = select_examples(env.factory, POOL, CheckpointRole.JUDGE, THRESHOLDS,
                               val_fraction=0.3, seed=7)  # fmt: skip
    expected = {a for a, outcome in expected_outcomes(env).items() if outcome is not None}
    assert {e.attempt_id for e in examples} == expected
    for example in examples:
        row = rows[example.attempt_id]
        assert (example.instruction, example.source_key, example.edited_key) == (
            row["task_instruction"], row["task_source_key"], row["output_key"],
        )  # fmt: skip
        assert example.split == split_of(row["task_id"], seed=7, val_fraction=0.3)
        parsed = parse_scores(example.answer, dimension_names(EditType(row["edit_type"])))
        assert parsed.values is not None
        # Seeded scores: following = overall + 0.25 = preservation, quality 0.5 lower.
        following, quality = row["overall"] + 0.25, row["score_quality"]
        assert parsed.values == (round(following), round(quality), round(following))
    assert {e.split for e in examples} == {"train", "validation"}


def test_reflector_examples_validate_as_the_reflector_answered(env: ExportEnv) -> None:
    rows = {row["attempt_id"]: row for row in judged_attempts(env.factory)}
    records = list(iter_records(env.factory, POOL, ExportKind.REFLECTIONS))
    every = build_examples(records, CheckpointRole.REFLECTOR, THRESHOLDS, confirmed_only=False)
    confirmed = build_examples(records, CheckpointRole.REFLECTOR, THRESHOLDS)
    assert len(every) == len(records) > len(confirmed) > 0
    assert {e.attempt_id for e in confirmed} == {
        a for a, outcome in expected_outcomes(env).items() if outcome is not None
    }
    for example in every:
        row = rows[example.attempt_id]
        check = validate_reflection(example.answer, example.instruction)
        assert check.tag.value == row["tag"]
        assert check.new_instruction == row["proposed_instruction"]
        assert check.think == f"reasoning about attempt {example.attempt_id}"
        assert example.target_description == f"the target of task {row['task_id']}"
        # The hint is the stored scores, as the worker passed them to the reflector.
        assert example.hint is not None and f"overall {row['overall']:.2f}" in example.hint


def test_judge_scores_that_contradict_the_outcome_are_not_confirmed(env: ExportEnv) -> None:
    records = list(iter_records(env.factory, POOL, ExportKind.REFLECTIONS))
    failed = next(r for r in records if confirmed_outcome(r, THRESHOLDS) == "Failed")
    # The reflector failed an edit the scorer rated highly: its tag stands, the scores do not.
    high = replace(failed, following=5.0, quality=5.0, preservation=5.0, overall=5.0)
    assert confirmed_outcome(high, THRESHOLDS) == "Failed"
    assert build_examples([high], CheckpointRole.REFLECTOR, THRESHOLDS) != []
    assert build_examples([high], CheckpointRole.JUDGE, THRESHOLDS) == []
    assert build_examples([failed], CheckpointRole.JUDGE, THRESHOLDS) != []
