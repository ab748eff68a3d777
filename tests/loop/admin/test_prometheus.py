"""`/metrics` over the filled database, parsed with prometheus_client's own parser."""

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from loop.admin.prometheus import LATENCY_BUCKETS
from store.db import make_engine, make_session_factory
from store.models import Attempt, Checkpoint, Judgment
from tests.loop.admin.conftest import MAIN_ROUNDS, Filled


def test_metrics_parse_and_match_the_rows(client: TestClient, filled: Filled) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert {
        "editloop_attempts", "editloop_dispatch_backlog", "editloop_dispatch_lapsed",
        "editloop_verdicts", "editloop_judge_overrides", "editloop_judge_disagreements",
        "editloop_train_jobs", "editloop_round_duration_seconds", "editloop_edit_seconds",
        "editloop_judge_seconds", "editloop_live_checkpoint_info", "editloop_live_checkpoint_id",
    } <= set(families)  # fmt: skip

    def values(name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {
            tuple(sorted(s.labels.items())): s.value
            for s in families[name].samples
            if s.name == name
        }

    factory = make_session_factory(make_engine(filled.url))
    with factory() as session:
        attempts = session.scalar(select(func.count()).select_from(Attempt))
        edited = session.scalar(select(func.count(Attempt.edit_seconds)))
        judged = session.scalar(select(func.count(Judgment.latency_s)))
        version_a = session.get_one(Checkpoint, filled.checkpoint_a).version
    by_status = values("editloop_attempts")
    assert sum(by_status.values()) == attempts and by_status[(("status", "judged"),)] == attempts
    assert sum(values("editloop_dispatch_backlog").values()) == 0  # every round finished
    # every attempt ended with a verdict: the verdict gauges count each once
    verdicts = values("editloop_verdicts")
    assert sum(verdicts.values()) == attempts
    runs = {dict(labels)["run"] for labels in verdicts}
    assert runs == {"main", "strict"}
    assert {dict(labels)["verdict"] for labels in verdicts} == {"Success", "Reflection", "Failed"}
    assert values("editloop_train_jobs")[(("status", "failed"),)] == 1
    assert values("editloop_train_jobs")[(("status", "finished"),)] == 1
    durations = values("editloop_round_duration_seconds")
    assert len(durations) == MAIN_ROUNDS + 1 and all(v > 0 for v in durations.values())
    assert values("editloop_live_checkpoint_info") == {(("version", version_a),): 1}
    assert values("editloop_live_checkpoint_id")[()] == filled.checkpoint_a
    assert values("editloop_judge_disagreements") == {}  # nobody overrode a verdict yet
    for name, count in (("editloop_edit_seconds", edited), ("editloop_judge_seconds", judged)):
        samples = {s.name + str(s.labels.get("le", "")): s.value for s in families[name].samples}
        assert samples[f"{name}_count"] == count and samples[f"{name}_bucket+Inf"] == count
        buckets = [samples[f"{name}_bucket{bound}"] for bound in map(float, LATENCY_BUCKETS)]
        assert buckets == sorted(buckets) and buckets[-1] <= count  # cumulative
