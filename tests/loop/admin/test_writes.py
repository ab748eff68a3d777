"""The admin's writes on a copy of the filled database (SQLite and PostgreSQL): the token
(401/403 and nothing changes), stop a run, decide a checkpoint, override a verdict, and the
override flowing into the next training job's pool and into the metrics."""

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from loop.controller import queue_train_job
from loop.training.jobs import TrainerParts, prepare_job
from policies.training.data import read_manifest
from policies.training.settings import TrainingSettings
from store.db import make_engine, make_session_factory
from store.models import (
    Attempt,
    AttemptStatus,
    Checkpoint,
    CheckpointStatus,
    Judgment,
    Round,
    Run,
)
from store.taxonomy import Verdict
from tests.loop.admin.conftest import TOKEN, Filled, make_client

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def snapshot(filled: Filled) -> list[Any]:
    """Every row a write could change."""
    factory = make_session_factory(make_engine(filled.url))
    with factory() as session:
        runs = [(r.id, r.status, r.updated_at) for r in session.scalars(select(Run))]
        checkpoints = [
            (c.id, c.status, c.decided_by, c.decided_at)
            for c in session.scalars(select(Checkpoint).order_by(Checkpoint.id))
        ]
        judgments = [
            (j.id, j.override_verdict, j.override_reviewer, j.override_at)
            for j in session.scalars(select(Judgment).order_by(Judgment.id))
        ]
    return [runs, checkpoints, judgments]


def write_requests(filled: Filled) -> list[tuple[str, dict[str, Any] | None]]:
    with make_session_factory(make_engine(filled.url))() as session:
        judged = session.scalar(select(Judgment.attempt_id).order_by(Judgment.id))
    return [
        (f"/api/v1/runs/{filled.paused_run}/stop", None),
        (
            f"/api/v1/checkpoints/{filled.checkpoint_b}/decision",
            {"decision": "promote", "reviewer": "ana", "reason": "looks right"},
        ),
        (
            f"/api/v1/attempts/{judged}/override",
            {"verdict": "Failed", "reviewer": "ana", "reason": "wrong colour"},
        ),
    ]


def test_every_write_needs_the_token_and_changes_nothing_without_it(writable: Filled) -> None:
    before = snapshot(writable)
    requests = write_requests(writable)
    with make_client(writable, token=None) as disabled:
        for path, body in requests:
            response = disabled.post(path, json=body, headers=AUTH)
            assert response.status_code == 403, path
            assert "EDITLOOP_ADMIN__TOKEN" in response.json()["detail"]
    with make_client(writable) as client:
        for path, body in requests:
            for headers in (
                {},
                {"Authorization": "Bearer wrong-token"},
                {"Authorization": f"Bearer {TOKEN}x"},
                {"Authorization": TOKEN},
                {"Authorization": f"Basic {TOKEN}"},
            ):
                response = client.post(path, json=body, headers=headers)
                assert response.status_code == 401, (path, headers)
                assert response.headers["www-authenticate"].startswith("Bearer")
            # a browser's cookie or HTTP Basic credentials are never a write's authority
            client.cookies.set("Authorization", f"Bearer {TOKEN}")
            assert client.post(path, json=body).status_code == 401
            client.cookies.clear()
            assert client.post(path, json=body, auth=("ana", TOKEN)).status_code == 401
            if body is not None:  # JSON bodies only: a form post is refused
                assert client.post(path, data=body, headers=AUTH).status_code == 422
    assert snapshot(writable) == before


def test_stop_a_running_run(writable: Filled) -> None:
    with make_client(writable) as client:
        path = f"/api/v1/runs/{writable.paused_run}/stop"
        first = client.post(path, headers=AUTH)
        assert first.status_code == 200 and first.json()["changed"] is True
        assert "editloop run --name paused" in first.json()["detail"]
        again = client.post(path, headers=AUTH)
        assert again.status_code == 200 and again.json()["changed"] is False
        assert client.get(f"/api/v1/runs/{writable.paused_run}").json()["run"]["status"] == (
            "stopped"
        )
        finished = client.post(f"/api/v1/runs/{writable.main_run}/stop", headers=AUTH)
        assert finished.status_code == 409 and "finished" in finished.json()["detail"]
        assert client.post("/api/v1/runs/999/stop", headers=AUTH).status_code == 404


def test_promote_and_reject_a_checkpoint_by_hand(writable: Filled) -> None:
    decision = {"decision": "promote", "reviewer": "ana", "reason": "the gate's set is too small"}
    with make_client(writable) as client:
        path = f"/api/v1/checkpoints/{writable.checkpoint_b}/decision"
        response = client.post(path, json=decision, headers=AUTH)
        assert response.status_code == 200 and response.json()["changed"] is True
        row = client.get(f"/api/v1/checkpoints/{writable.checkpoint_b}").json()["checkpoint"]
        assert (row["status"], row["decided_by"]) == ("promoted", "ana")
        assert row["decision_reason"] == "the gate's set is too small" and row["decided_at"]
        assert row["live"] is True  # the latest promoted: the next round edits with it
        assert client.post(path, json=decision, headers=AUTH).json()["changed"] is False
        reject = {**decision, "decision": "reject", "reason": "artifacts on faces"}
        assert client.post(path, json=reject, headers=AUTH).json()["changed"] is True
        listed = {c["id"]: c for c in client.get("/api/v1/checkpoints").json()["items"]}
        assert listed[writable.checkpoint_b]["status"] == "rejected"
        assert listed[writable.checkpoint_a]["live"] is True
        for body, field in [
            ({**decision, "decision": "ship"}, "decision"),
            ({**decision, "reviewer": ""}, "reviewer"),
            ({"decision": "promote", "reviewer": "ana"}, "reason"),
        ]:
            bad = client.post(path, json=body, headers=AUTH)
            assert bad.status_code == 422 and bad.json()["field"] == field
        factory = make_session_factory(make_engine(writable.url))
        with factory() as session, session.begin():
            training = Checkpoint(version="still-training", status=CheckpointStatus.TRAINING)
            session.add(training)
            session.flush()
            training_id = training.id
        busy = client.post(
            f"/api/v1/checkpoints/{training_id}/decision", json=decision, headers=AUTH
        )
        assert busy.status_code == 409 and "training" in busy.json()["detail"]
        assert (
            client.post("/api/v1/checkpoints/999/decision", json=decision, headers=AUTH)
        ).status_code == 404


def verdict_gauges(client: TestClient) -> dict[tuple[str, ...], float]:
    """`editloop_verdicts` and the override gauges of /metrics, parsed."""
    text = client.get("/metrics").text
    found: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("editloop_verdicts", "editloop_judge_disagreements",
                               "editloop_judge_overrides"):  # fmt: skip
                found[(sample.name, *sorted(sample.labels.items()))] = sample.value
    return found


def pool_of_new_job(filled: Filled, tmp_path: Path) -> dict[int, set[str]]:
    """The examples of a training job queued and prepared now: attempt id → kinds of example."""
    factory = make_session_factory(make_engine(filled.url))
    job_id = queue_train_job(factory, filled.main_run, up_to_round=1)
    parts = TrainerParts(
        factory=factory,
        store=filled.store,
        settings=TrainingSettings(),
        work_dir=tmp_path / f"work-{job_id}",
        model="unused-base-model",
        cache_dir=tmp_path / "cache",
        editor_for=lambda checkpoint: None,  # type: ignore[arg-type,return-value]
        verify=lambda folder: None,
        load_scorer=lambda: None,  # type: ignore[arg-type,return-value]
    )
    prepared = prepare_job(parts, job_id)
    examples = read_manifest(prepared.folder / "manifest.jsonl")
    pool: dict[int, set[str]] = {}
    for example in examples:
        pool.setdefault(example.attempt_id, set()).add(example.kind)
    return pool


def test_an_override_changes_the_next_pool_and_the_metrics(
    writable: Filled, tmp_path: Path
) -> None:
    factory = make_session_factory(make_engine(writable.url))
    with factory() as session:
        main_rounds = select(Round.id).where(Round.run_id == writable.main_run)
        accepted = session.scalars(  # the first: kept when later rounds repeat its example
            select(Attempt)
            .where(
                Attempt.round_id.in_(main_rounds),
                Attempt.verdict == Verdict.SUCCESS,
                Attempt.depth == 0,
            )
            .order_by(Attempt.id)
        ).first()
        reflected = session.scalars(
            select(Attempt).where(
                Attempt.round_id.in_(main_rounds), Attempt.verdict == Verdict.REFLECTION
            )
        ).first()
        assert accepted is not None and reflected is not None
        task_of = {a.id: session.get_one(Round, a.round_id).number for a in (accepted, reflected)}
    pool_before = pool_of_new_job(writable, tmp_path)
    assert "direct" in pool_before[accepted.id] and reflected.id not in pool_before

    with make_client(writable) as client:
        gauges_before = verdict_gauges(client)
        for attempt, verdict in ((accepted, "Failed"), (reflected, "Success")):
            response = client.post(
                f"/api/v1/attempts/{attempt.id}/override",
                json={"verdict": verdict, "reviewer": "ana", "reason": "checked by eye"},
                headers=AUTH,
            )
            assert response.status_code == 200 and response.json()["changed"] is True
        same = client.post(
            f"/api/v1/attempts/{accepted.id}/override",
            json={"verdict": "Failed", "reviewer": "ana", "reason": "checked by eye"},
            headers=AUTH,
        )
        assert same.json()["changed"] is False  # idempotent
        # stored beside the judge's verdict, never over it
        chain = client.get(f"/api/v1/samples/{accepted.id}").json()["chain"]
        step = next(s for s in chain if s["attempt_id"] == accepted.id)
        assert step["verdict"] == "Failed" and step["judgment"]["verdict"] == "Success"
        assert step["judgment"]["override_reviewer"] == "ana"
        card = client.get("/api/v1/samples?verdict=Failed&limit=200").json()["items"]
        assert any(c["attempt_id"] == accepted.id and c["judge_verdict"] == "Success" for c in card)

        # metrics count overrides as disagreements with the judge
        rounds = {
            r["number"]: r["metrics"]
            for r in client.get(f"/api/v1/runs/{writable.main_run}/rounds").json()
        }
        overridden = sum(rounds[n]["judge/overrides"] for n in rounds)
        assert overridden == 2 and sum(rounds[n]["judge/disagreements"] for n in rounds) == 2
        health = client.get(
            f"/api/v1/runs/{writable.main_run}/rounds/{task_of[accepted.id]}"
        ).json()["judge_health"]
        assert health["overrides"] >= 1 and health["disagreement_rate"] > 0
        gauges_after = verdict_gauges(client)
        assert (
            sum(v for k, v in gauges_after.items() if k[0] == "editloop_judge_disagreements") == 2
        )

        def total(gauges: dict[tuple[str, ...], float], verdict: str) -> float:
            return sum(
                value
                for key, value in gauges.items()
                if key[0] == "editloop_verdicts" and ("verdict", verdict) in key
            )

        # one Success became Failed, one Reflection became Success
        assert total(gauges_after, "Success") == total(gauges_before, "Success")
        assert total(gauges_after, "Failed") == total(gauges_before, "Failed") + 1
        assert total(gauges_after, "Reflection") == total(gauges_before, "Reflection") - 1

    pool_after = pool_of_new_job(writable, tmp_path)
    assert accepted.id not in pool_after
    assert "direct" in pool_after[reflected.id]  # a Reflection made Success is trained on


def test_an_attempt_without_judgment_cannot_be_overridden(writable: Filled) -> None:
    factory = make_session_factory(make_engine(writable.url))
    with factory() as session, session.begin():
        template = session.scalars(select(Attempt).order_by(Attempt.id)).first()
        assert template is not None
        failed = Attempt(
            round_id=template.round_id,
            task_id=template.task_id,
            sample_index=9,
            depth=0,
            instruction=template.instruction,
            input_key=template.input_key,
            seed=1,
            status=AttemptStatus.FAILED,
            verdict=Verdict.FAILED,
            error="no result after 3 dispatches",
        )
        session.add(failed)
        session.flush()
        failed_id = failed.id
    body = {"verdict": "Success", "reviewer": "ana", "reason": "x"}
    with make_client(writable) as client:
        response = client.post(f"/api/v1/attempts/{failed_id}/override", json=body, headers=AUTH)
        assert response.status_code == 409 and "no judgment" in response.json()["detail"]
        assert (
            client.post("/api/v1/attempts/99999/override", json=body, headers=AUTH).status_code
            == 404
        )
        bad = client.post(
            f"/api/v1/attempts/{failed_id}/override",
            json={**body, "verdict": "Great"},
            headers=AUTH,
        )
        assert bad.status_code == 422 and bad.json()["field"] == "verdict"


@pytest.mark.parametrize("token", ["", "   "])
def test_an_empty_token_setting_leaves_writes_disabled(writable: Filled, token: str) -> None:
    with make_client(writable, token=token) as client:
        path, body = write_requests(writable)[0]
        response = client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 403
        assert (
            client.get(f"/api/v1/runs/{writable.paused_run}").json()["run"]["status"] == "running"
        )


def test_rounds_stored_before_judge_health_are_recomputed_on_read(writable: Filled) -> None:
    with make_client(writable) as client:
        path = f"/api/v1/runs/{writable.main_run}/rounds/0"
        current = client.get(path).json()["round"]["metrics"]
        factory = make_session_factory(make_engine(writable.url))
        with factory() as session, session.begin():
            round_ = session.scalars(
                select(Round).where(Round.run_id == writable.main_run, Round.number == 0)
            ).one()
            # what an older editloop stored: no judge health, no per-type score means
            round_.metrics = {
                k: v
                for k, v in current.items()
                if not k.startswith("judge/") and "/scores/" not in k
                and k != "accepted/gpu_seconds_per_sample"
            }  # fmt: skip
        recomputed = client.get(path).json()["round"]["metrics"]
    assert recomputed["judge/unparseable_rate"] == current["judge/unparseable_rate"] > 0
    assert recomputed["by_type/hybrid/scores/overall/mean"] == pytest.approx(
        current["by_type/hybrid/scores/overall/mean"]
    )
    assert recomputed["round/wall_seconds"] == current["round/wall_seconds"]  # the stored one
