"""The admin's JSON API, pages and images over a database filled by a real loop run, on SQLite
(local folder) and PostgreSQL (S3 on moto): every read endpoint, pagination, filters, errors."""

import hashlib
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from loop.admin.api import create_app
from loop.admin.images import THUMBNAIL_SIDES
from store.db import make_engine
from store.objects import ObjectStore
from tests.fixtures.services import free_port, make_s3_store
from tests.loop.admin.conftest import (
    MAIN_ROUNDS,
    TOKEN,
    Filled,
    admin_settings,
    first_attempt,
    make_client,
)

READ_PATHS = (
    "/api/v1/runs",
    "/api/v1/runs/{main}",
    "/api/v1/runs/{main}/rounds",
    "/api/v1/runs/{main}/rounds/0",
    "/api/v1/samples",
    "/api/v1/samples/{attempt}",
    "/api/v1/checkpoints",
    "/api/v1/checkpoints/{a}",
    "/api/v1/train-jobs",
    "/api/v1/train-jobs/{failed}",
)
PAGES = (
    "/runs",
    "/runs/{main}",
    "/runs/{main}/rounds/0",
    "/samples",
    "/samples/{attempt}",
    "/checkpoints",
    "/checkpoints/{a}",
    "/train-jobs",
    "/train-jobs/{failed}",
)


def paths(filled: Filled, templates: tuple[str, ...]) -> list[str]:
    attempt = first_attempt(filled).id
    ids = {"main": filled.main_run, "attempt": attempt, "a": filled.checkpoint_a}
    return [t.format(**ids, failed=filled.failed_job) for t in templates]


def test_every_read_endpoint_and_page_answers(client: TestClient, filled: Filled) -> None:
    for path in paths(filled, READ_PATHS):
        response = client.get(path)
        assert response.status_code == 200, (path, response.text)
        assert response.headers["content-type"] == "application/json"
    for path in paths(filled, PAGES):
        response = client.get(path)
        assert response.status_code == 200, (path, response.text)
        assert response.text.startswith("<!doctype html>")
        assert "cdn" not in response.text.lower() and "https://" not in response.text
    schema = client.get("/api/v1/openapi.json").json()
    assert {p.split("{")[0] for p in schema["paths"]} >= {
        "/api/v1/runs", "/api/v1/samples", "/api/v1/checkpoints", "/api/v1/train-jobs",
        "/api/v1/attempts/", "/metrics", "/healthz", "/readyz", "/objects/",
    }  # fmt: skip
    assert "RunPage" in schema["components"]["schemas"]
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ok"}
    assert client.get("/docs").status_code == 404  # Swagger UI would load from a CDN


def test_runs_and_rounds_report_the_run(client: TestClient, filled: Filled) -> None:
    runs = client.get("/api/v1/runs").json()
    assert runs["total"] == 3 and runs["next_before"] is None
    by_name = {run["name"]: run for run in runs["items"]}
    assert [run["name"] for run in runs["items"]] == ["paused", "strict", "main"]  # newest first
    main = by_name["main"]
    assert main["status"] == "finished"
    assert main["rounds"] == main["rounds_finished"] == MAIN_ROUNDS
    # round 0 edited with the base editor, the next ones with checkpoint A (promoted after 0)
    assert [(c["number"], c["checkpoint_id"]) for c in main["round_checkpoints"]] == [
        (0, None),
        *((n, filled.checkpoint_a) for n in range(1, MAIN_ROUNDS)),
    ]
    assert 0 < main["accepted"] < main["judged"] <= main["attempts"]
    assert main["acceptance"] == pytest.approx(main["accepted"] / main["judged"])
    assert by_name["paused"]["status"] == "running" and by_name["paused"]["rounds"] == 0
    page = client.get("/api/v1/runs?limit=2").json()
    assert [r["name"] for r in page["items"]] == ["paused", "strict"]
    rest = client.get(f"/api/v1/runs?limit=2&before={page['next_before']}").json()
    assert [r["name"] for r in rest["items"]] == ["main"] and rest["next_before"] is None

    rounds = client.get(f"/api/v1/runs/{filled.main_run}/rounds").json()
    assert [r["number"] for r in rounds] == list(range(MAIN_ROUNDS))
    metrics = rounds[0]["metrics"]
    # the new figures: per-type score means and judge health
    assert 1 <= metrics["by_type/hybrid/scores/overall/mean"] <= 5
    assert metrics["judge/unparseable_rate"] > 0 and metrics["judge/reflector_invalid_rate"] > 0
    assert metrics["judge/overrides"] == 0
    detail = client.get(f"/api/v1/runs/{filled.main_run}/rounds/0").json()
    assert detail["round"] == rounds[0]
    types = {row["edit_type"]: row for row in detail["by_type"]}
    assert types["hybrid"]["overall"] == pytest.approx(
        metrics["by_type/hybrid/scores/overall/mean"]
    )
    assert detail["judge_health"]["unparseable_rate"] == metrics["judge/unparseable_rate"]
    totals = [a["total_seconds"] for a in detail["slowest"]]
    assert totals == sorted(totals, reverse=True) and len(totals) == min(
        10, detail["round"]["attempts"]
    )
    run = client.get(f"/api/v1/runs/{filled.main_run}").json()
    assert run["config"]["name"] == "main" and run["rounds"] == rounds


def test_samples_paginate_without_gaps_or_repeats(client: TestClient, filled: Filled) -> None:
    everything = client.get("/api/v1/samples?limit=200").json()
    total = everything["total"]
    ids = [s["attempt_id"] for s in everything["items"]]
    assert len(ids) == total and ids == sorted(ids, reverse=True)
    seen: list[int] = []
    before = None
    while True:
        query = "/api/v1/samples?limit=7" + (f"&before={before}" if before else "")
        page = client.get(query).json()
        assert page["total"] == total and len(page["items"]) <= 7
        seen += [s["attempt_id"] for s in page["items"]]
        before = page["next_before"]
        if before is None:
            break
    assert seen == ids


def test_sample_filters_narrow_the_grid(client: TestClient, filled: Filled) -> None:
    def get(query: str) -> dict:
        response = client.get(f"/api/v1/samples?limit=200&{query}")
        assert response.status_code == 200, response.text
        return response.json()

    main = get(f"run_id={filled.main_run}")
    assert {s["run_name"] for s in main["items"]} == {"main"}
    round1 = get(f"run_id={filled.main_run}&round=1")
    assert 0 < round1["total"] < main["total"]
    assert {s["round_number"] for s in round1["items"]} == {1}
    for verdict in ("Success", "Reflection", "Failed"):
        found = get(f"verdict={verdict}")
        assert found["total"] > 0 and {s["verdict"] for s in found["items"]} == {verdict}
    hybrid = get("edit_type=hybrid")
    assert hybrid["total"] > 0 and {s["edit_type"] for s in hybrid["items"]} == {"hybrid"}
    assert get("edit_type=compose")["total"] == hybrid["total"]  # ImgEdit's alias
    deep = get("depth=1")
    assert deep["total"] > 0 and {s["depth"] for s in deep["items"]} == {1}
    scored = get("min_score=4&max_score=5")
    assert scored["total"] > 0 and all(4 <= s["overall"] <= 5 for s in scored["items"])
    low = get("max_score=3.5")
    assert all(s["overall"] <= 3.5 for s in low["items"])
    assert scored["total"] + low["total"] <= get("")["total"]
    text = get("q=BACKGROUND")  # case-insensitive, in the task's instruction
    assert text["total"] > 0
    assert all("background" in s["task_instruction"].lower() for s in text["items"])
    assert get("q=100%25")["total"] == 0  # a literal %, not a wildcard
    combined = get(f"run_id={filled.main_run}&round=0&verdict=Success&edit_type=hybrid&depth=1")
    assert all(
        (s["round_number"], s["verdict"], s["edit_type"], s["depth"]) == (0, "Success", "hybrid", 1)
        for s in combined["items"]
    )


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("verdict=Great", "verdict"),
        ("edit_type=paint", "edit_type"),
        ("depth=-1", "depth"),
        ("min_score=0", "min_score"),
        ("max_score=6", "max_score"),
        ("min_score=4&max_score=2", "min_score"),
        ("round=0", "round"),  # a round number needs a run
        ("limit=100000", "limit"),
        ("limit=0", "limit"),
        ("run_id=abc", "run_id"),
    ],
)
def test_bad_filter_values_are_422_naming_the_field(
    client: TestClient, query: str, field: str
) -> None:
    response = client.get(f"/api/v1/samples?{query}")
    assert response.status_code == 422
    assert response.json()["field"] == field and field in response.json()["detail"]
    page = client.get(f"/samples?{query}")
    assert page.status_code == 422 and field in page.text and "Traceback" not in page.text


def test_unknown_ids_are_404_naming_the_id(client: TestClient) -> None:
    for path, named in [
        ("/api/v1/runs/9999", "run 9999"),
        ("/api/v1/runs/9999/rounds", "run 9999"),
        ("/api/v1/runs/1/rounds/77", "round 77 of run 1"),
        ("/api/v1/samples/9999", "attempt 9999"),
        ("/api/v1/samples?run_id=9999", "run 9999"),
        ("/api/v1/samples?run_id=1&round=42", "round 42 of run 1"),
        ("/api/v1/checkpoints/9999", "checkpoint 9999"),
        ("/api/v1/train-jobs/9999", "train job 9999"),
        ("/runs/9999", "run 9999"),
    ]:
        response = client.get(path)
        assert response.status_code == 404, path
        assert named in response.text, (path, response.text)


def test_sample_page_shows_the_whole_reflection_chain(client: TestClient, filled: Filled) -> None:
    reflected = client.get("/api/v1/samples?verdict=Reflection&depth=0&limit=1").json()["items"][0]
    detail = client.get(f"/api/v1/samples/{reflected['attempt_id']}").json()
    chain = detail["chain"]
    assert [step["depth"] for step in chain] == list(range(len(chain))) and len(chain) >= 2
    first, second = chain[0], chain[1]
    assert first["attempt_id"] == reflected["attempt_id"]
    assert second["parent_id"] == first["attempt_id"]
    judgment = first["judgment"]
    assert judgment["verdict"] == judgment["reflector_tag"] == "Reflection"
    assert judgment["think"] and judgment["target_description"] and judgment["raw_reflector_output"]
    # the child edited the parent's output with the reflector's instruction
    assert second["input_key"] == first["output_key"]
    assert second["instruction"] == judgment["revised_instruction"] != first["instruction"]
    assert detail["task"]["sources"] == [{"dataset": "shapes", "licence": ""}]
    page = client.get(f"/samples/{reflected['attempt_id']}").text
    assert page.count('<li class="step') == len(chain)
    assert judgment["revised_instruction"] in page and judgment["think"][:40] in page


def test_a_failed_try_restarts_from_the_source(client: TestClient) -> None:
    failed = client.get("/api/v1/samples?verdict=Failed&depth=0&limit=200").json()["items"]
    chains = [client.get(f"/api/v1/samples/{s['attempt_id']}").json() for s in failed]
    restarted = [c for c in chains if len(c["chain"]) > 1]
    assert restarted, "the run has a Failed first try with tries left"
    for detail in restarted:
        second = detail["chain"][1]
        assert second["input_key"] == detail["task"]["source_key"]
        assert second["instruction"] == detail["task"]["instruction"]


def test_checkpoints_show_lineage_loss_and_gate(client: TestClient, filled: Filled) -> None:
    page = client.get("/api/v1/checkpoints").json()
    rows = {row["id"]: row for row in page["items"]}
    a, b = rows[filled.checkpoint_a], rows[filled.checkpoint_b]
    assert [row["id"] for row in page["items"]] == [a["id"], b["id"]]  # parent first
    assert (a["status"], a["live"], a["lineage_depth"]) == ("promoted", True, 0)
    assert (b["status"], b["live"], b["parent_version"]) == ("rejected", False, a["version"])
    assert b["lineage_depth"] == 1
    assert a["rounds_using"] == MAIN_ROUNDS  # main's rounds after the first, strict's round
    assert b["gate"]["candidate_mean"] < b["gate"]["parent_mean"]
    assert a["gate"]["parent_version"] == "base"
    detail = client.get(f"/api/v1/checkpoints/{filled.checkpoint_a}").json()
    assert [p["loss"] for p in detail["loss_curve"]] == [0.9, 0.5, 0.3]
    assert detail["children"] == [b["version"]] and detail["train_job_id"] == filled.finished_job
    html = client.get(f"/checkpoints/{filled.checkpoint_a}").text
    assert html.count('class="point"') == 3


def test_train_jobs_show_status_and_the_launcher_log(client: TestClient, filled: Filled) -> None:
    jobs = client.get("/api/v1/train-jobs").json()
    by_id = {job["id"]: job for job in jobs["items"]}
    assert by_id[filled.finished_job]["status"] == "finished"
    assert by_id[filled.finished_job]["checkpoint_id"] == filled.checkpoint_a
    failed = by_id[filled.failed_job]
    assert failed["status"] == "failed" and failed["claims"] == 1 and "exited" in failed["error"]
    detail = client.get(f"/api/v1/train-jobs/{filled.failed_job}").json()
    assert detail["log_tail"].splitlines()[-1] == "RuntimeError: out of memory"
    assert "out of memory" in client.get(f"/train-jobs/{filled.failed_job}").text


class CountingStore:
    """The filled store, counting what reaches it."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.keys: list[str] = []

    def get(self, key: str) -> bytes:
        self.keys.append(key)
        return self.inner.get(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)


@pytest.fixture
def counted(filled: Filled) -> Iterator[tuple[TestClient, CountingStore]]:
    store = CountingStore(filled.store)
    app = create_app(
        admin_settings(filled, thumbnail_cache_mb=0.001),
        engine=make_engine(filled.url),
        store=store,  # type: ignore[arg-type]
    )
    with TestClient(app) as test_client:
        yield test_client, store


def test_objects_serve_only_referenced_keys(counted, filled: Filled) -> None:  # type: ignore[no-untyped-def]
    client, store = counted
    attempt = first_attempt(filled, depth=1)
    key = attempt.output_key
    response = client.get(f"/objects/{key}")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    digest = hashlib.sha256(response.content).hexdigest()
    assert response.headers["etag"] == f'"{digest}"' and digest in key
    assert "immutable" in response.headers["cache-control"]
    again = client.get(f"/objects/{key}", headers={"If-None-Match": f'"{digest}"'})
    assert again.status_code == 304 and not again.content
    assert store.keys == [key]  # the 304 never read the store
    store.keys.clear()
    for bad in ("../etc/passwd", "sources/../../x.png", "%2Fetc%2Fpasswd", "sources//a.png"):
        assert client.get(f"/objects/{bad}").status_code == 404, bad
    # a key that exists in the store but that no row references
    filled.store.put("sources/zz/unreferenced.png", b"not an image")
    try:
        assert client.get("/objects/sources/zz/unreferenced.png").status_code == 404
    finally:
        filled.store.delete("sources/zz/unreferenced.png")
    assert store.keys == []  # nothing unreferenced or malformed reached the store


def test_thumbnails_are_resized_and_cached_within_the_bound(counted, filled: Filled) -> None:  # type: ignore[no-untyped-def]
    client, store = counted
    keys = [first_attempt(filled, depth=d).output_key for d in (0, 1)]
    side = THUMBNAIL_SIDES[0]
    for _ in range(2):
        response = client.get(f"/objects/{keys[0]}?side={side}")
        assert response.status_code == 200
    # the shapes images are 16 px: already smaller than the thumbnail, served as they are
    assert store.keys == [keys[0]]
    assert client.get(f"/objects/{keys[0]}?side=100").status_code == 422
    cache = client.app.state.admin.thumbnails
    assert cache.size_bytes <= cache.max_bytes
    client.get(f"/objects/{keys[1]}?side={side}")
    assert cache.size_bytes <= cache.max_bytes and len(cache) >= 1


def test_protected_reads_need_the_token(filled: Filled) -> None:
    with make_client(filled, protect_reads=True) as client:
        for path in (
            "/api/v1/runs",
            "/runs",
            "/metrics",
            f"/objects/{first_attempt(filled).input_key}",
        ):
            response = client.get(path)
            assert response.status_code == 401, path
            assert "Basic" in response.headers["www-authenticate"]
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/api/v1/runs", headers=bearer).status_code == 200
        assert client.get("/runs", auth=("anyone", TOKEN)).status_code == 200  # a browser's way
        assert client.get("/runs", auth=("anyone", "wrong")).status_code == 401
        assert client.get("/healthz").status_code == 200  # probes stay open


def test_a_database_that_is_down_gives_503_without_traceback(filled: Filled) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing?connect_timeout=2"
    app = create_app(admin_settings(filled), engine=make_engine(url),
                     store=filled.store)  # fmt: skip
    with TestClient(app, raise_server_exceptions=False) as client:
        for path in ("/api/v1/runs", "/runs", "/metrics", "/readyz"):
            response = client.get(path)
            assert response.status_code == 503, (path, response.text)
            assert "database" in response.text and "Traceback" not in response.text


def test_a_store_that_is_down_gives_503(filled: Filled) -> None:
    down = make_s3_store(f"127.0.0.1:{free_port()}", retries=0, timeout_s=1)
    app = create_app(admin_settings(filled), engine=make_engine(filled.url), store=down)
    key = first_attempt(filled).input_key
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get(f"/objects/{key}")
        assert response.status_code == 503 and "did not answer" in response.text
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "store" in ready.json()
