"""A database filled by a real small loop run of the shapes world, on SQLite (local folder) and
on PostgreSQL (S3 through moto), and the admin app over it.

What the run leaves (exact judges, a scripted editor, eager Celery):

- run `main`, 4 rounds of 6 tasks, up to 2 reflections: single-operation tasks succeed at once;
  compound tasks are half done at depth 0 (Reflection), finished at depth 1 (Success); the editor
  returns a flat dark image for every attempt whose seed is a multiple of 4, which the judges
  cannot read (unparseable, reflector Invalid → Failed, restart from the source). After round 0
  a training job is claimed, checkpoint A is published from it (with a loss log) and gated
  (promoted), so later rounds edit with A; checkpoint B (child of A) is published and rejected by
  the gate; a second job fails with a launcher log in the trainers' work_dir.
- run `strict`, 1 round, no reflections: compound tasks end Failed (no tries left).
- run `paused`: started, no round yet (running), for the stop write.

The filled database is built once per backend and session; tests that write get a copy.
"""

import json
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from loop.admin.api import create_app
from loop.controller import RunConfig, queue_train_job, run_loop, start_or_resume_run
from loop.ingest import ingest_rows
from loop.settings import Settings
from loop.sources import read_rows
from loop.training.gate import gate_checkpoint, load_eval_tasks
from loop.training.launcher import LAUNCHER_LOG, job_folder
from loop.training.lease import claim_job, end_job
from loop.training.publish import content_version, folder_files, publish_checkpoint
from migrations import upgrade
from policies.types import EditRequest, EditResult
from rewards.shapes_judge import ShapesReflector, ShapesScorer
from rewards.types import JudgeItem, ParseStatus, Reflection, ReflectionTag, Scores
from store.db import make_engine, make_session_factory
from store.images import ImageLimits
from store.models import Attempt, Checkpoint, Run, TrainJobStatus
from store.objects import LocalStore, ObjectStore
from tests.fixtures.loop import FirstOperationEditor, write_shapes_tasks
from tests.fixtures.services import make_s3_store
from workers.app import configure_celery
from workers.context import ModelCache, WorkerContext, set_worker_context
from workers.dispatch import CeleryDispatcher
from workers.settings import WorkerSettings

TOKEN = "test-admin-token"
MAIN_ROUNDS = 4  # rounds of run `main` (enough for the charts to show a trend)


GARBLED = (7, 7, 7)  # the colour of an edit the judges cannot read


class GarblingEditor(FirstOperationEditor):
    """Does the first operation, but returns a flat dark image when the seed is a multiple of 4."""

    def edit(self, requests: Sequence[EditRequest]) -> list[EditResult]:
        results = super().edit(requests)
        for index, request in enumerate(requests):
            if request.seed % 4 == 0 and results[index].image is not None:
                image = Image.new("RGB", request.image.size, GARBLED)
                results[index] = EditResult(image, None, request.seed, self.version, 0.01)
        return results


def _garbled(item: JudgeItem) -> bool:
    return item.edited.getextrema() == ((7, 7), (7, 7), (7, 7))


class GarbleAwareScorer(ShapesScorer):
    """The exact scorer, answering text that cannot be parsed for a garbled edit (as a real
    judge model sometimes does)."""

    def score(self, items: Sequence[JudgeItem]) -> list[Scores]:
        scores = super().score(items)
        return [
            replace(s, following=None, quality=None, preservation=None, overall=None,
                    status=ParseStatus.UNPARSEABLE, raw_output="I cannot rate this image.",
                    detail="missing every dimension")
            if _garbled(item) else s
            for item, s in zip(items, scores, strict=True)
        ]  # fmt: skip


class GarbleAwareReflector(ShapesReflector):
    """The rule reflector, breaking the protocol for a garbled edit."""

    def reflect(
        self, items: Sequence[JudgeItem], *, hints: Sequence[str | None] | None = None
    ) -> list[Reflection]:
        answers = super().reflect(items, hints=hints)
        return [
            replace(r, tag=ReflectionTag.INVALID, new_instruction=None, raw_output="<#Think> ???",
                    detail="no ending tag")
            if _garbled(item) else r
            for item, r in zip(items, answers, strict=True)
        ]  # fmt: skip


class NoiseOnly(FirstOperationEditor):
    """The gate's editor for checkpoint B: a flat image every time, so the gate rejects it."""

    def edit(self, requests: Sequence[EditRequest]) -> list[EditResult]:
        return [
            EditResult(Image.new("RGB", r.image.size, (7, 7, 7)), None, r.seed, "noise", 0.0)
            for r in requests
        ]


@dataclass(frozen=True)
class Filled:
    """A filled database: its URL, store and the ids the tests look at."""

    url: str
    store: ObjectStore
    work_dir: Path
    backend: str
    main_run: int
    strict_run: int
    paused_run: int
    checkpoint_a: int
    checkpoint_b: int
    finished_job: int
    failed_job: int


def _publish(
    factory: sessionmaker[Session],
    store: ObjectStore,
    folder: Path,
    *,
    parent_id: int | None,
    job_id: int | None,
    losses: list[float],
) -> int:
    folder.mkdir(parents=True)
    (folder / "weights.bin").write_bytes(folder.name.encode() * 64)
    (folder / "loss_log.jsonl").write_text(
        "".join(
            json.dumps({"step": step + 1, "train/loss": loss, "train/lr": 1e-3}) + "\n"
            for step, loss in enumerate(losses)
        )
    )
    return publish_checkpoint(
        factory=factory,
        store=store,
        folder=folder,
        version=content_version(folder.name, folder_files(folder)),
        parent_id=parent_id,
        kind="full",
        data_filter={"run_id": 1, "up_to_round": 0},
        sample_count=9,
        train_metrics={"train/final_loss": losses[-1]},
        verify=lambda path: None,
        job_id=job_id,
    )


def fill_database(url: str, store: ObjectStore, root: Path, backend: str) -> Filled:
    """Run the loop of the module docstring into `url` and `store`."""
    upgrade(url)
    factory = make_session_factory(make_engine(url))
    rows, _ = read_rows(write_shapes_tasks(root / "tasks", compound=4, single=3))
    report = ingest_rows(
        rows, session_factory=factory, store=store, limits=ImageLimits(), origin="shapes"
    )
    assert report.ingested == 7
    rows, _ = read_rows(write_shapes_tasks(root / "heldout", compound=0, single=3, seed=5))
    ingest_rows(rows, session_factory=factory, store=store, limits=ImageLimits(), origin="heldout")
    editor = GarblingEditor()
    configure_celery(WorkerSettings(eager=True))
    set_worker_context(
        WorkerContext(
            session_factory=factory,
            store=store,
            models=ModelCache(
                load_editor=lambda old, checkpoint: editor,
                load_judges=lambda: (GarbleAwareScorer(), GarbleAwareReflector()),
            ),
        )
    )
    work_dir = root / "training"
    ids: dict[str, int] = {}

    def after_round(number: int, metrics: dict[str, float]) -> None:
        if number != 0:
            return
        with factory() as session:
            run_id = session.scalar(select(Run.id).where(Run.name == "main"))
        queue_train_job(factory, run_id, up_to_round=0)
        job = claim_job(factory, owner="trainer-a", lease_s=600, max_claims=3)
        assert job is not None
        a = _publish(
            factory, store, root / "ckpt-a", parent_id=None, job_id=job, losses=[0.9, 0.5, 0.3]
        )
        with factory() as session:
            tasks = load_eval_tasks(session, store, origin="heldout", limit=3, seed=0)
        gate_checkpoint(
            factory=factory,
            checkpoint_id=a,
            editor_for=lambda checkpoint: FirstOperationEditor(),
            scorer=ShapesScorer(),
            tasks=tasks,
            margin=0.1,
        )
        end_job(factory, job, owner="trainer-a", status=TrainJobStatus.FINISHED, progress_step=3)
        b = _publish(factory, store, root / "ckpt-b", parent_id=a, job_id=None, losses=[0.4, 0.35])
        gate_checkpoint(
            factory=factory,
            checkpoint_id=b,
            editor_for=lambda checkpoint: NoiseOnly() if checkpoint and checkpoint.id == b
            else FirstOperationEditor(),
            scorer=ShapesScorer(),
            tasks=tasks,
            margin=0.1,
        )  # fmt: skip
        failing = queue_train_job(factory, run_id, up_to_round=0)
        assert claim_job(factory, owner="trainer-b", lease_s=600, max_claims=3) == failing
        folder = job_folder(work_dir, failing)
        folder.mkdir(parents=True)
        (folder / LAUNCHER_LOG).write_text("starting ranks\nstep 1\nRuntimeError: out of memory\n")
        end_job(
            factory,
            failing,
            owner="trainer-b",
            status=TrainJobStatus.FAILED,
            error="RuntimeError: the training launcher exited with code 1",
        )
        ids.update(a=a, b=b, finished_job=job, failed_job=failing)

    try:
        main = run_loop(
            factory=factory,
            dispatcher=CeleryDispatcher(),
            config=RunConfig(
                name="main", rounds=MAIN_ROUNDS, tasks_per_round=6, poll_interval_s=0.01
            ),
            on_round=after_round,
        )
        strict = run_loop(
            factory=factory,
            dispatcher=CeleryDispatcher(),
            config=RunConfig(
                name="strict", rounds=1, tasks_per_round=7, max_reflections=0, seed=3,
                poll_interval_s=0.01,
            ),
        )  # fmt: skip
        paused = start_or_resume_run(factory, RunConfig(name="paused"))
    finally:
        set_worker_context(None)
    factory.kw["bind"].dispose()
    return Filled(
        url=url,
        store=store,
        work_dir=work_dir,
        backend=backend,
        main_run=main,
        strict_run=strict,
        paused_run=paused,
        checkpoint_a=ids["a"],
        checkpoint_b=ids["b"],
        finished_job=ids["finished_job"],
        failed_job=ids["failed_job"],
    )


def _create_database(admin_dsn: str, template: str | None = None) -> str:
    name = f"editloop_admin_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        if template:  # a template must have no other connection (the read tests' pools)
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (template,),
            )
        admin.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return name


def _drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _pg_url(name: str) -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


@pytest.fixture(
    scope="session", params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)]
)
def filled(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Filled]:
    """The filled database of each backend (read-only for the tests that use it)."""
    root = tmp_path_factory.mktemp(f"admin-{request.param}")
    if request.param == "sqlite":
        yield fill_database(
            f"sqlite:///{root / 'db.sqlite'}", LocalStore(root / "objects"), root, "sqlite"
        )
        return
    admin_dsn = request.getfixturevalue("postgres_server")
    store = make_s3_store(request.getfixturevalue("moto_endpoint"))
    name = _create_database(admin_dsn)
    try:
        yield fill_database(_pg_url(name), store, root, "postgres")
    finally:
        _drop_database(admin_dsn, name)


@pytest.fixture
def writable(filled: Filled, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Filled]:
    """A copy of the filled database for a test that writes (the store is shared: writes never
    touch it)."""
    if filled.backend == "sqlite":
        source = filled.url.removeprefix("sqlite:///")
        copy = tmp_path / "copy.sqlite"
        shutil.copy(source, copy)
        for suffix in ("-wal", "-shm"):
            if Path(source + suffix).exists():
                shutil.copy(source + suffix, str(copy) + suffix)
        yield Filled(**{**filled.__dict__, "url": f"sqlite:///{copy}"})
        return
    admin_dsn = request.getfixturevalue("postgres_server")
    name = _create_database(admin_dsn, template=filled.url.rsplit("/", 1)[1])
    try:
        yield Filled(**{**filled.__dict__, "url": _pg_url(name)})
    finally:
        _drop_database(admin_dsn, name)


def admin_settings(filled: Filled, **admin: object) -> Settings:
    """Settings of an admin over `filled` (the token set unless `token=None` is given)."""
    section = {"token": TOKEN} | admin
    return Settings(
        data_dir=filled.work_dir.parent,
        training={"work_dir": filled.work_dir},
        admin={k: v for k, v in section.items() if v is not None},
    )


def make_client(filled: Filled, **admin: object) -> TestClient:
    app = create_app(
        admin_settings(filled, **admin), engine=make_engine(filled.url), store=filled.store
    )
    return TestClient(app)


@pytest.fixture
def client(filled: Filled) -> Iterator[TestClient]:
    with make_client(filled) as test_client:
        yield test_client


def first_attempt(filled: Filled, **where: object) -> Attempt:
    """The first attempt (by id) matching `where` (attribute = value)."""
    with make_session_factory(make_engine(filled.url))() as session:
        query = select(Attempt).order_by(Attempt.id)
        for name, value in where.items():
            query = query.where(getattr(Attempt, name) == value)
        attempt = session.scalars(query).first()
        assert attempt is not None, where
        return attempt


def checkpoint_row(filled: Filled, checkpoint_id: int) -> Checkpoint:
    with make_session_factory(make_engine(filled.url))() as session:
        return session.get_one(Checkpoint, checkpoint_id)
