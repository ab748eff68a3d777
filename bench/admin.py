"""The admin's samples views at scale: 100 rounds, 100,000 attempts (with judgments) in PostgreSQL.

Side by side in one run, for each filter of the samples grid: the SQL alone (the same two
statements the views run, one page and the count, through psycopg with no ORM), the JSON API
(`GET /api/v1/samples`) and the page (`GET /samples`, HTML with the filter form), both served by
`uvicorn` in its own process (as deployed) over loopback HTTP with keep-alive. Prints medians and
the ratios view / SQL (target: the page within 3x of its query), the PostgreSQL plans of the page
queries (they must use indexes), the images of one page through `/objects` against their
"is it referenced" checks, and the SQL alone again without migration 0004's indexes.

    .venv/bin/python bench/admin.py [--rounds 100] [--attempts-per-round 1000] [--repeat 25]
"""

import argparse
import hashlib
import io
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from PIL import Image

from loop.admin.queries.runs import RUN_NAMES
from loop.admin.queries.samples import SampleFilter, referenced_key_query, sample_queries
from loop.metrics import AttemptRecord, round_metrics
from migrations import downgrade, upgrade
from store.db import make_engine
from store.objects import LocalStore

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
EDIT_TYPES = ("add", "remove", "replace", "alter", "background", "style", "hybrid", "action")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
THINGS = ("cup", "chair", "dog", "lamp", "car", "tree", "sky", "hat", "shoe", "book")


def fake_key(prefix: str, seed: str) -> str:
    digest = hashlib.sha256(seed.encode()).hexdigest()
    return f"{prefix}/{digest[:2]}/{digest}.png"


def fill(dsn: str, rounds: int, per_round: int, tasks: int) -> int:
    """Tasks, one run, `rounds` finished rounds of `per_round` judged attempts; the run id."""
    rng = random.Random(0)
    now = datetime.now(UTC) - timedelta(days=3)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY task (id, source_key, instruction, instruction_sha256, edit_type, origin, "
            "width, height, meta, created_at) FROM STDIN"
        ) as copy:
            for i in range(1, tasks + 1):
                text = f"make the {rng.choice(THINGS)} {rng.choice(COLOURS)} (task {i})"
                copy.write_row((
                    i, fake_key("sources", f"s{i}"), text,
                    hashlib.sha256(text.encode()).hexdigest(), EDIT_TYPES[i % len(EDIT_TYPES)],
                    "bench", 512, 512, "{}", now,
                ))  # fmt: skip
        cur.execute("SELECT setval('task_id_seq', %s)", (tasks,))
        cur.execute(
            "INSERT INTO run (id, name, status, config, created_at, updated_at) "
            "VALUES (1, 'bench', 'finished', '{}', %s, %s)",
            (now, now),
        )
        for round_id in range(1, rounds + 1):
            started = now + timedelta(minutes=10 * round_id)
            cur.execute(
                "INSERT INTO round (id, run_id, number, status, metrics, started_at, finished_at) "
                "VALUES (%s, 1, %s, 'finished', '{}', %s, %s)",
                (round_id, round_id - 1, started, started + timedelta(minutes=10)),
            )
        attempt_id = 0
        metrics_of: dict[int, str] = {}
        with cur.copy(
            "COPY attempt (id, round_id, task_id, sample_index, depth, parent_id, instruction, "
            "input_key, seed, output_key, status, verdict, dispatch_count, edit_seconds, "
            "created_at, updated_at) FROM STDIN"
        ) as attempts_copy:
            judgments: list[tuple[Any, ...]] = []
            for number in range(rounds):
                round_id = number + 1
                records = []
                task_ids = rng.sample(range(1, tasks + 1), per_round)
                made = 0
                for task_id in task_ids:
                    if made == per_round:
                        break
                    parent = None
                    for depth in range(3):
                        if made == per_round:
                            break
                        attempt_id += 1
                        made += 1
                        verdict = rng.choices(("Success", "Reflection", "Failed"), (5, 3, 2))[0]
                        if depth == 2 and verdict == "Reflection":
                            verdict = "Failed"
                        scores = [float(rng.randint(1, 5)) for _ in range(3)]
                        overall = sum(scores) / 3
                        stamp = now + timedelta(seconds=attempt_id)
                        edit_s = rng.uniform(0.5, 3.0)
                        attempts_copy.write_row((
                            attempt_id, round_id, task_id, 0, depth, parent,
                            f"instruction {attempt_id}", fake_key("sources", f"s{task_id}"),
                            attempt_id, fake_key("edits", f"e{attempt_id}"), "judged", verdict,
                            1, edit_s, stamp, stamp,
                        ))  # fmt: skip
                        judgments.append((
                            attempt_id, *scores, overall, '{"names": []}', "ok", verdict,
                            "accepted: bench", "bench-judge", "Brief reasoning: bench", 0.4, stamp,
                        ))  # fmt: skip
                        records.append(
                            AttemptRecord(task_id, 0, depth, EDIT_TYPES[task_id % 8], "judged",
                                          verdict, *scores, overall, edit_s, 0.4, "ok")
                        )  # fmt: skip
                        parent = attempt_id
                        if verdict == "Success":
                            break
                metrics_of[round_id] = json.dumps(round_metrics(records, wall_seconds=600.0))
        with cur.copy(
            "COPY judgment (attempt_id, score_following, score_quality, score_preservation, "
            "overall, dimension_names, parse_status, verdict, reason, judge_model, "
            "raw_judge_output, latency_s, created_at) FROM STDIN"
        ) as copy:
            for row in judgments:
                copy.write_row(row)
        for round_id, metrics in metrics_of.items():
            cur.execute("UPDATE round SET metrics = %s WHERE id = %s", (metrics, round_id))
        cur.execute("SELECT setval('attempt_id_seq', %s)", (attempt_id,))
        cur.execute("SELECT setval('round_id_seq', %s)", (rounds,))
        conn.commit()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return attempt_id


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def compiled(
    statement: Any, dialect: Any, params: dict[str, Any] | None = None
) -> tuple[str, dict[str, Any]]:
    """The SQL text and parameters psycopg runs for a SQLAlchemy statement (`dialect`: the
    engine's, initialised by a first connection, as the app's is)."""
    sql = statement.compile(dialect=dialect)
    return str(sql), dict(sql.construct_params(params))


class AdminServer:
    """`uvicorn --factory loop.admin.api:app_from_settings` in its own process (as deployed),
    on a free loopback port; entering gives its base URL."""

    def __init__(self, env: dict[str, str]) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> str:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "loop.admin.api:app_from_settings",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"],
            env=self.env,
        )  # fmt: skip
        base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    return base
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("the admin server did not start within 60 s")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=20)


def run_sql(conn: psycopg.Connection, statements: list[tuple[str, dict[str, Any]]]) -> Any:
    """A function running `statements` through psycopg and fetching every row."""

    def run() -> None:
        with conn.cursor() as cur:
            for text, values in statements:
                cur.execute(text, values)
                cur.fetchall()

    return run


def write_page_images(dsn: str, store: LocalStore, limit: int) -> list[str]:
    """Small PNGs under the keys of the newest page of samples (outputs and sources); the keys."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT a.output_key, t.source_key FROM attempt a JOIN task t ON t.id = a.task_id "
            "ORDER BY a.id DESC LIMIT %s",
            (limit,),
        ).fetchall()
    keys = sorted({key for row in rows for key in row})
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (40, 90, 160)).save(buffer, format="PNG")
    for key in keys:
        store.put(key, buffer.getvalue(), "image/png")
    return keys


def measure_views(
    client: httpx.Client,
    conn: psycopg.Connection,
    cases: dict[str, dict[str, Any]],
    statements: dict[str, list[tuple[str, dict[str, Any]]]],
    names: tuple[str, dict[str, Any]],
    limit: int,
    repeat: int,
) -> dict[str, float]:
    """Print the SQL, API and page medians of each filter and the page queries' plans; returns
    the SQL medians."""
    print(
        f"\n{limit} samples per page, median of {repeat}, milliseconds; the API runs the list "
        "and count statements, the page also the run names of its filter form"
    )
    print(f"{'filter':<22}{'matches':>8}{'SQL':>7}{'API':>7}{'ratio':>7}"
          f"{'SQL':>9}{'page':>7}{'ratio':>7}")  # fmt: skip
    sql_medians, plans = {}, {}
    for label, params in cases.items():
        query = "&".join(f"{k}={v}" for k, v in params.items())
        sql = run_sql(conn, statements[label])
        page_sql = run_sql(conn, [*statements[label], names])

        def api(query: str = query) -> None:
            assert client.get(f"/api/v1/samples?{query}").status_code == 200

        def html(query: str = query) -> None:
            assert client.get(f"/samples?{query}").status_code == 200

        for fn in (sql, page_sql, api, html):  # warm caches and plans
            fn()
        times: dict[str, list[float]] = {"sql": [], "page_sql": [], "api": [], "page": []}
        for _ in range(repeat):  # interleaved, so that drift hits all four alike
            times["sql"].append(timed(sql))
            times["api"].append(timed(api))
            times["page_sql"].append(timed(page_sql))
            times["page"].append(timed(html))
        matches = client.get(f"/api/v1/samples?{query}&limit=1").json()["total"]
        q, a, pq, p = (median_ms(times[k]) for k in ("sql", "api", "page_sql", "page"))
        sql_medians[label] = q
        print(f"{label:<22}{matches:>8}{q:>7.2f}{a:>7.2f}{a / q:>7.2f}"
              f"{pq:>9.2f}{p:>7.2f}{p / pq:>7.2f}")  # fmt: skip
        plans[label] = [
            [row[0] for row in conn.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + text,
                                            values).fetchall()]
            for text, values in statements[label]
        ]  # fmt: skip
    print("\nPostgreSQL plans: how the page query and the count find attempt rows")
    for label, (page_plan, count_plan) in plans.items():
        for kind, plan in (("page", page_plan), ("count", count_plan)):
            scans = [line.strip().removeprefix("->  ") for line in plan if " on attempt" in line]
            print(f"  {label}, {kind}: {'; '.join(scans)}")
    return sql_medians


def measure_images(
    client: httpx.Client,
    conn: psycopg.Connection,
    keys: list[str],
    checks: list[tuple[str, dict[str, Any]]],
    repeat: int,
) -> float:
    """Print the time to serve a page's images vs their "is it referenced" queries alone;
    returns the queries' median."""

    def serve() -> None:
        for key in keys:
            assert client.get(f"/objects/{key}").status_code == 200

    sql = run_sql(conn, checks)
    serve()
    sql()
    served = median_ms([timed(serve) for _ in range(repeat)])
    alone = median_ms([timed(sql) for _ in range(repeat)])
    print(f"\n/objects for one page's {len(keys)} images: {served:.1f} ms; their reference "
          f"checks alone {alone:.1f} ms")  # fmt: skip
    return alone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--attempts-per-round", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=25)
    args = parser.parse_args()

    name = f"editloop_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    dsn = f"postgresql://postgres@127.0.0.1:5432/{name}"
    try:
        upgrade(url)
        started = time.perf_counter()
        total = fill(dsn, args.rounds, args.attempts_per_round, args.tasks)
        print(f"filled {args.rounds} rounds, {total} attempts and judgments "
              f"in {time.perf_counter() - started:.0f} s")  # fmt: skip
        middle = total // 2
        cases = {
            "grid, first page": {"run_id": 1},
            "one round": {"run_id": 1, "round": args.rounds // 2},
            "verdict Failed": {"run_id": 1, "verdict": "Failed"},
            "type + score >= 4": {"run_id": 1, "edit_type": "remove", "min_score": 4},
            "depth 2, deep page": {"run_id": 1, "depth": 2, "before": middle},
            "task text search": {"run_id": 1, "q": "dog purple"},
        }
        limit = 48
        filters = {
            label: SampleFilter(
                run_id=p.get("run_id"), round_number=p.get("round"), verdict=p.get("verdict"),
                edit_type=p.get("edit_type"), depth=p.get("depth"),
                min_score=p.get("min_score"), text=p.get("q"),
            )
            for label, p in cases.items()
        }  # fmt: skip
        engine = make_engine(url)
        with engine.connect():
            dialect = engine.dialect  # initialised by a connection, as the app's is
        store = LocalStore(Path(tempfile.mkdtemp(prefix="editloop-bench-")))
        image_keys = write_page_images(dsn, store, limit)
        statements = {}
        for label, params in cases.items():
            query = sample_queries(filters[label], limit=limit, before=params.get("before"))
            statements[label] = [
                compiled(query.page, dialect, query.params),
                compiled(query.count, dialect, query.params),
            ]
        checks = [compiled(referenced_key_query(key), dialect) for key in image_keys]
        env = {
            **os.environ,
            "EDITLOOP_STORE__DATABASE_URL": url,
            "EDITLOOP_STORE__LOCAL_ROOT": str(store.root),
            "EDITLOOP_ADMIN__PAGE_SIZE": str(limit),
            "EDITLOOP_DATA_DIR": str(store.root.parent),
        }
        with (
            AdminServer(env) as base,
            httpx.Client(base_url=base, timeout=60) as client,
            psycopg.connect(dsn, autocommit=True) as conn,
        ):
            names = compiled(RUN_NAMES, dialect)
            sql_with = measure_views(client, conn, cases, statements, names, limit, args.repeat)
            images_with = measure_images(client, conn, image_keys, checks, args.repeat)
        engine.dispose()
        downgrade(url, "0003")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("ANALYZE")
            print("\nthe SQL alone with and without migration 0004's indexes (median ms)")
            print(f"{'query':<26}{'with':>8}{'without':>9}")
            for label in cases:
                without = median_ms([timed(run_sql(conn, statements[label]))
                                     for _ in range(args.repeat)])  # fmt: skip
                print(f"{label:<26}{sql_with[label]:>8.2f}{without:>9.2f}")
            without = median_ms([timed(run_sql(conn, checks)) for _ in range(args.repeat)])
            print(f"{'referenced? x' + str(len(checks)) + ' images':<26}{images_with:>8.2f}"
                  f"{without:>9.2f}")  # fmt: skip
        shutil.rmtree(store.root, ignore_errors=True)
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
