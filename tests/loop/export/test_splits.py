"""Train/validation by a hash of (seed, task id)."""

import pytest

from loop.export.splits import split_of


def test_splits_are_deterministic_per_task_and_near_the_fraction() -> None:
    tasks = range(20_000)
    first = [split_of(t, seed=3, val_fraction=0.2) for t in tasks]
    assert first == [split_of(t, seed=3, val_fraction=0.2) for t in tasks]
    share = first.count("validation") / len(first)
    assert 0.19 < share < 0.21
    other_seed = [split_of(t, seed=4, val_fraction=0.2) for t in tasks]
    assert other_seed != first and 0.19 < other_seed.count("validation") / len(tasks) < 0.21
    # A larger fraction only moves tasks into validation (the same hash, a higher bar).
    larger = [split_of(t, seed=3, val_fraction=0.5) for t in tasks]
    assert all(b == "validation" for a, b in zip(first, larger, strict=True) if a == "validation")
    assert {split_of(t, seed=3, val_fraction=0) for t in tasks} == {"train"}


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 2.0])
def test_a_fraction_outside_0_1_is_refused(fraction: float) -> None:
    with pytest.raises(ValueError, match=f"val_fraction={fraction}"):
        split_of(1, seed=0, val_fraction=fraction)
