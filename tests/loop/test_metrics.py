"""Round metrics on hand-made records, expected numbers worked out in the comments."""

import pytest

from loop.metrics import AttemptRecord, round_metrics


def record(task: int, depth: int, verdict: str | None, kind: str = "alter", **kw) -> AttemptRecord:  # type: ignore[no-untyped-def]
    status = "judged" if verdict else "failed"
    return AttemptRecord(task, 0, depth, kind, status, verdict, **kw)


def test_round_metrics_worked_example() -> None:
    records = [
        # chain 1: success at once
        record(1, 0, "Success", following=5, quality=4, preservation=3, overall=4, edit_seconds=1),
        # chain 2: reflection, then success after one reflection
        record(2, 0, "Reflection", "hybrid", following=2, quality=2, preservation=2, overall=2),
        record(2, 1, "Success", "hybrid", following=5, quality=5, preservation=5, overall=5),
        # chain 3: failed twice, then an edit error (no verdict)
        record(3, 0, "Failed", "remove", following=1, quality=1, preservation=1, overall=1),
        record(3, 1, "Failed", "remove"),  # unparseable: no scores
        record(3, 2, None, "remove", edit_seconds=2),
    ]
    m = round_metrics(records, wall_seconds=3.0)
    assert m["attempts/total"] == 6 and m["attempts/errors"] == 1
    # 5 judged: 2 Success, 1 Reflection, 2 Failed
    assert m["verdict/Success/count"] == 2 and m["verdict/Success/rate"] == pytest.approx(2 / 5)
    assert m["verdict/Failed/rate"] == pytest.approx(2 / 5)
    # depth 0: 3 judged, 1 Success; depth 1: 2 judged, 1 Success
    assert m["by_depth/0/Success/rate"] == pytest.approx(1 / 3)
    assert m["by_depth/1/count"] == 2 and m["by_depth/1/Success/rate"] == pytest.approx(1 / 2)
    assert m["by_type/hybrid/Reflection/rate"] == pytest.approx(1 / 2)
    # following over the 4 scored attempts: (5 + 2 + 5 + 1) / 4 = 3.25
    assert m["scores/following/mean"] == pytest.approx(3.25)
    assert m["scores/overall/count"] == 4
    # 3 chains: first success at depth 0 (chain 1) and depth 1 (chain 2), none for chain 3
    assert m["chains/total"] == 3
    assert m["chains/success_rate"] == pytest.approx(2 / 3)
    assert m["chains/success_after_0"] == pytest.approx(1 / 3)
    assert m["chains/success_after_1"] == pytest.approx(1 / 3)
    assert m["chains/success_after_2"] == 0
    assert m["edit/gpu_seconds"] == 3 and m["throughput/attempts_per_s"] == pytest.approx(2.0)


def test_empty_round_gives_zero_rates() -> None:
    m = round_metrics([], wall_seconds=0.0)
    assert m["verdict/Success/rate"] == 0.0 and m["chains/success_rate"] == 0.0


def test_per_type_score_means_and_judge_health() -> None:
    records = [
        record(1, 0, "Success", "alter", following=5, quality=4, preservation=5, overall=14 / 3,
               parse_status="ok", reason="accepted: overall 4.67", reflector_tag="Success",
               edit_seconds=2, judge_seconds=1),
        record(2, 0, "Reflection", "hybrid", following=3, quality=3, preservation=3, overall=3,
               parse_status="capped", reason="reflect: no visible change",
               reflector_tag="Reflection", override_verdict="Success", edit_seconds=1),
        record(2, 1, "Failed", "hybrid", following=1, quality=1, preservation=1, overall=1,
               parse_status="ok", reason="no-op: change 0.0000 <= 0.02: edited image is the source",
               reflector_tag="Invalid", override_verdict="Failed", edit_seconds=1),
        record(3, 0, "Failed", "remove", parse_status="unparseable", reason="unparseable: empty",
               reflector_tag=None),
        record(4, 0, None, "remove"),  # the edit failed: no judgment
    ]  # fmt: skip
    m = round_metrics(records, wall_seconds=1.0)
    # hybrid: following (3 + 1) / 2; alter has one scored attempt
    assert m["by_type/hybrid/scores/following/mean"] == pytest.approx(2.0)
    assert m["by_type/alter/scores/overall/mean"] == pytest.approx(14 / 3)
    assert m["by_type/remove/scores/overall/mean"] == 0.0  # judged, never scored
    # 4 judgments: 1 unparseable, 1 capped; no-op guard: the Reflection and the no-op Failed
    assert m["judge/judgments"] == 4
    assert m["judge/unparseable_rate"] == pytest.approx(1 / 4)
    assert m["judge/capped_rate"] == pytest.approx(1 / 4)
    assert m["judge/noop_trips"] == 2
    # 3 reflector answers, 1 Invalid
    assert m["judge/reflector_invalid_rate"] == pytest.approx(1 / 3)
    # 2 overrides; only the Reflection → Success one disagrees with the judge
    assert m["judge/overrides"] == 2 and m["judge/disagreements"] == 1
    assert m["judge/disagreement_rate"] == pytest.approx(1 / 4)
    # the judge's verdicts still count as the judge gave them
    assert m["verdict/Success/count"] == 1
    # edit 4 s + judge 1 s over 1 accepted sample
    assert m["accepted/gpu_seconds_per_sample"] == pytest.approx(5.0)
