"""The loop on real services: PostgreSQL, S3 (moto), Redis or RabbitMQ, two `editloop worker`
processes with the tiny editor and the tiny judge, and the fault cases of DESIGN.md's invariants.

The tiny judge is random, so its answers are unparseable and every attempt ends `Failed` and
restarts until its tries are spent: the mechanics (dispatch, batching, follow-ups, terminal
states, exactly-once effects) are what these tests check, not the verdicts.
"""

import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from loop.controller import RunConfig, run_loop
from loop.ingest import ingest_rows, read_rows
from migrations import upgrade
from store.db import make_engine, make_session_factory
from store.images import ImageLimits
from store.models import Attempt, AttemptStatus, Judgment, Round, Task
from store.objects import S3Store
from tests.fixtures.services import make_s3_store
from tests.fixtures.workers import WorkerProcess
from workers.app import configure_celery
from workers.dispatch import CeleryDispatcher
from workers.settings import WorkerSettings

SAMPLES = Path(__file__).resolve().parents[2] / "loop" / "samples"
REDIS_URL = "redis://127.0.0.1:6379/7"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"

pytestmark = [pytest.mark.services, pytest.mark.slow]


@dataclass
class LoopSetup:
    env: dict[str, str]
    factory: sessionmaker[Session]
    store: S3Store
    broker: str
    tmp: Path

    def worker(self, name: str) -> WorkerProcess:
        return WorkerProcess(self.env, self.tmp / f"{name}.log", name)

    def config(self, name: str, **overrides: object) -> RunConfig:
        options = {
            "rounds": 1,
            "tasks_per_round": 6,
            "max_reflections": 1,
            "batch_size": 2,
            "dispatch_timeout_s": 60.0,
            "poll_interval_s": 0.2,
        } | overrides
        return RunConfig(name=name, **options)  # type: ignore[arg-type]

    def run(self, config: RunConfig) -> None:
        configure_celery(WorkerSettings(eager=False, broker_url=self.broker))
        run_loop(factory=self.factory, dispatcher=CeleryDispatcher(), config=config)


def make_setup(
    tmp: Path, db_url: str, s3_endpoint: str, broker: str, models: dict[str, str]
) -> LoopSetup:
    upgrade(db_url)
    factory = make_session_factory(make_engine(db_url))
    store = make_s3_store(s3_endpoint, retries=8, backoff_s=0.25)
    rows, _ = read_rows(SAMPLES)
    report = ingest_rows(
        rows, session_factory=factory, store=store, limits=ImageLimits(), origin="s"
    )
    assert report.ingested == 6
    # Messages a previous test left behind.
    configure_celery(WorkerSettings(eager=False, broker_url=broker)).control.purge()
    env = {
        "EDITLOOP_DATA_DIR": str(tmp / "data"),
        "EDITLOOP_STORE__DATABASE_URL": db_url,
        "EDITLOOP_STORE__BACKEND": "s3",
        "EDITLOOP_STORE__S3_ENDPOINT": s3_endpoint,
        "EDITLOOP_STORE__S3_ACCESS_KEY": "testing",
        "EDITLOOP_STORE__S3_SECRET_KEY": "testing",
        "EDITLOOP_STORE__S3_BUCKET": store.bucket,
        "EDITLOOP_STORE__RETRIES": "8",
        "EDITLOOP_STORE__BACKOFF_S": "0.25",
        "EDITLOOP_WORKER__EAGER": "false",
        "EDITLOOP_WORKER__BROKER_URL": broker,
        "EDITLOOP_WORKER__VISIBILITY_TIMEOUT_S": "5",
        "OMP_NUM_THREADS": "1",
        **models,
    }
    return LoopSetup(env, factory, store, broker, tmp)


@pytest.fixture(scope="module")
def tiny_models(tiny_instruct_pix2pix: Path, tiny_judge_dir: Path) -> dict[str, str]:
    return {
        "EDITLOOP_EDITOR__MODEL": str(tiny_instruct_pix2pix),
        "EDITLOOP_EDITOR__STEPS": "4",
        "EDITLOOP_JUDGE__MODEL": str(tiny_judge_dir),
        "EDITLOOP_JUDGE__MIN_PIXELS": "3136",
        "EDITLOOP_JUDGE__MAX_PIXELS": "12544",
        "EDITLOOP_JUDGE__MAX_NEW_TOKENS": "16",
        "EDITLOOP_JUDGE__REFLECTOR_MAX_NEW_TOKENS": "16",
        "EDITLOOP_JUDGE__REFLECTOR_RETRIES": "0",
    }


@pytest.fixture
def workers_started() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.stop()


def start_workers(
    setup: LoopSetup, started: list[WorkerProcess], n: int = 2
) -> list[WorkerProcess]:
    workers = [setup.worker(f"w{i}-{uuid.uuid4().hex[:6]}") for i in range(n)]
    started.extend(workers)
    for worker in workers:
        worker.wait_ready()
    return workers


def assert_exactly_once(setup: LoopSetup, *, chains: int = 6, max_depth: int = 1) -> None:
    """Every attempt terminal once, metrics equal to the rows, store = referenced objects."""
    with setup.factory() as session:
        attempts = session.scalars(select(Attempt)).all()
        judgments = session.scalar(select(func.count()).select_from(Judgment))
        metrics = session.scalar(select(Round.metrics))
        referenced = set(session.scalars(select(Task.source_key))) | {
            a.output_key for a in attempts if a.output_key
        }
    assert attempts and all(
        a.status in (AttemptStatus.JUDGED, AttemptStatus.FAILED) for a in attempts
    )
    keys = Counter((a.task_id, a.sample_index, a.depth) for a in attempts)
    assert max(keys.values()) == 1
    assert len({(a.task_id, a.sample_index) for a in attempts}) == chains
    assert max(a.depth for a in attempts) <= max_depth
    judged = [a for a in attempts if a.status == AttemptStatus.JUDGED]
    assert judgments == len(judged)
    verdicts = Counter(a.verdict.value for a in attempts if a.verdict is not None)
    assert metrics["attempts/total"] == len(attempts)
    for verdict in ("Success", "Reflection", "Failed"):
        assert metrics[f"verdict/{verdict}/count"] == verdicts[verdict]
    assert set(setup.store.list()) == referenced


@pytest.mark.parametrize("broker", [REDIS_URL, AMQP_URL], ids=["redis", "rabbitmq"])
def test_loop_with_two_celery_workers(
    broker: str, tmp_path: Path, postgres_url: str, moto_endpoint: str, tiny_models, workers_started
) -> None:  # type: ignore[no-untyped-def]
    setup = make_setup(tmp_path, postgres_url, moto_endpoint, broker, tiny_models)
    start_workers(setup, workers_started)
    setup.run(setup.config("two-workers"))
    assert_exactly_once(setup)
    with setup.factory() as session:
        judged = session.scalars(select(Judgment)).all()
    # Random tiny judge: unparseable answers are Failed with the raw text kept, never a score.
    assert all(j.parse_status == "unparseable" and j.raw_judge_output is not None for j in judged)
