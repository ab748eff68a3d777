"""The admin server: `create_app(settings)` builds the FastAPI app.

    /api/v1/...            the versioned JSON API (schema at /api/v1/openapi.json)
    /, /runs, /samples...  server-rendered pages over the same reads (loop/admin/pages.py)
    /objects/{key}         images that some row references (thumbnails with ?side=N)
    /metrics               Prometheus text format, read from the database at scrape time
    /healthz, /readyz      the process is up; the database and the store answer

Reads are open unless `admin.protect_reads`; writes need the bearer token (`admin.token`), sent
in the Authorization header with a JSON body (never a cookie, so a page elsewhere cannot forge
one). No token configured: writes answer 403 and say how to enable them.
"""

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException

from loop.admin import writes
from loop.admin.http import (
    API_PREFIX,
    Unauthorized,
    install_error_handlers,
    json_response,
    token_matches,
)
from loop.admin.images import (
    THUMBNAIL_SIDES,
    ThumbnailCache,
    content_type,
    key_digest,
    make_thumbnail,
    safe_key,
)
from loop.admin.pages import page_router
from loop.admin.queries.checkpoints import checkpoint_detail, list_checkpoints
from loop.admin.queries.common import BadValue, NotFound
from loop.admin.queries.runs import list_rounds, list_runs, round_detail, run_detail
from loop.admin.queries.samples import SampleFilter, list_samples, referenced_key, sample_detail
from loop.admin.queries.train_jobs import list_train_jobs, train_job_detail
from loop.admin.queries.workers import list_workers
from loop.admin.records import (
    CheckpointDetail,
    CheckpointPage,
    RoundDetail,
    RoundRow,
    RunDetail,
    RunPage,
    SampleDetail,
    SamplePage,
    TrainJobDetail,
    TrainJobPage,
    WorkerPage,
    WriteResult,
)
from loop.admin.settings import AdminSettings
from loop.settings import Settings
from store.db import make_engine, make_session_factory
from store.objects import ObjectNotFound, ObjectStore, StoreUnavailable

log = logging.getLogger(__name__)
PACKAGE_DIR = Path(__file__).resolve().parent
IMMUTABLE = "max-age=31536000, immutable"


@dataclass
class AdminContext:
    """What every request handler reads from: settings, database, store, thumbnail cache."""

    settings: AdminSettings
    factory: sessionmaker[Session]  # for writes: one transaction each
    reads: sessionmaker[Session]  # autocommit: a read sends no BEGIN and no ROLLBACK
    store: ObjectStore
    work_dir: Path | None  # the trainers' job folders, for launcher log tails
    thumbnails: ThumbnailCache
    heartbeat_timeout_s: float = 30.0  # a worker silent this long is shown lapsed

    def session(self) -> Session:
        """A session for reads."""
        return self.reads()


class CheckpointDecision(BaseModel):
    decision: Literal["promote", "reject"]
    reviewer: str = Field(min_length=1, max_length=128, description="who decides")
    reason: str = Field(min_length=1, max_length=4000, description="why")


class VerdictOverride(BaseModel):
    verdict: Literal["Success", "Reflection", "Failed"]
    reviewer: str = Field(min_length=1, max_length=128, description="who overrides")
    reason: str = Field(min_length=1, max_length=4000, description="why")


def create_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    store: ObjectStore | None = None,
) -> FastAPI:
    """The admin app over the configured database and store (or the ones given, for tests)."""
    if engine is None:
        engine = make_engine(settings.store.database_url)
    if store is None:
        from loop.services import open_store

        store = open_store(settings)
    admin = settings.admin
    context = AdminContext(
        settings=admin,
        factory=make_session_factory(engine),
        reads=make_session_factory(engine.execution_options(isolation_level="AUTOCOMMIT")),
        store=store,
        work_dir=settings.training.work_dir or settings.data_dir / "training",
        thumbnails=ThumbnailCache(int(admin.thumbnail_cache_mb * 1024 * 1024)),
        heartbeat_timeout_s=settings.worker.heartbeat_timeout_s,
    )
    app = FastAPI(
        title="editloop admin",
        version="1",
        description=__doc__,
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=None,  # Swagger UI loads from a CDN; the admin works offline
        redoc_url=None,
    )
    app.state.admin = context
    install_error_handlers(app)

    def read_access(request: Request) -> None:
        if admin.protect_reads and not token_matches(
            request.headers.get("authorization", ""), admin.token_value(), allow_basic=True
        ):
            raise Unauthorized(basic=True)

    def write_access(request: Request) -> None:
        if not admin.token_value():
            raise HTTPException(
                403,
                "writes are disabled on this server: set EDITLOOP_ADMIN__TOKEN to a secret and "
                "restart `editloop serve` to enable them",
            )
        if not token_matches(
            request.headers.get("authorization", ""), admin.token_value(), allow_basic=False
        ):
            raise Unauthorized(basic=False)

    app.include_router(_api_router(context, read_access, write_access))
    app.include_router(page_router(context), dependencies=[Depends(read_access)])
    app.include_router(_service_router(context, read_access))
    app.mount("/static", StaticFiles(directory=PACKAGE_DIR / "static"), name="static")
    return app


def app_from_settings() -> FastAPI:
    """The app over the process's settings, for `uvicorn --factory loop.admin.api:app_from_settings`
    (several worker processes behind one port)."""
    from loop.settings import get_settings

    return create_app(get_settings())


def _limit(value: int | None, default: int, settings: AdminSettings) -> int:
    limit = default if value is None else value
    if not 1 <= limit <= settings.max_page_size:
        raise BadValue("limit", f"{limit} is outside 1-{settings.max_page_size}")
    return limit


def _api_router(context: AdminContext, read_access: Any, write_access: Any) -> APIRouter:
    reads = APIRouter(prefix=API_PREFIX, tags=["read"], dependencies=[Depends(read_access)])
    settings = context.settings
    before_query = Query(None, ge=1, description="id from `next_before` of the previous page")
    limit_query = Query(None, ge=1, description="items per page (bounded by admin.max_page_size)")

    @reads.get("/runs", response_model=RunPage, summary="Runs, newest first")
    def runs(limit: int | None = limit_query, before: int | None = before_query) -> Response:
        with context.session() as session:
            page = list_runs(session, limit=_limit(limit, 100, settings), before=before)
        return json_response(page)

    @reads.get("/runs/{run_id}", response_model=RunDetail, summary="A run and its rounds")
    def run(run_id: int) -> Response:
        with context.session() as session:
            return json_response(run_detail(session, run_id=run_id))

    @reads.get("/runs/{run_id}/rounds", response_model=list[RoundRow], summary="A run's rounds")
    def rounds(run_id: int) -> Response:
        with context.session() as session:
            return json_response(list_rounds(session, run_id=run_id), list[RoundRow])

    @reads.get(
        "/runs/{run_id}/rounds/{number}",
        response_model=RoundDetail,
        summary="A round: metrics by edit type, judge health, slowest attempts",
    )
    def round_(run_id: int, number: int) -> Response:
        with context.session() as session:
            return json_response(round_detail(session, run_id=run_id, number=number))

    @reads.get("/samples", response_model=SamplePage, summary="Attempts, filtered, newest first")
    def samples(
        run_id: int | None = Query(None, ge=1),
        round_number: int | None = Query(None, alias="round", ge=0),
        verdict: Literal["Success", "Reflection", "Failed"] | None = None,
        edit_type: str | None = None,
        depth: int | None = Query(None, ge=0),
        min_score: float | None = Query(None, ge=1, le=5, description="overall at least"),
        max_score: float | None = Query(None, ge=1, le=5, description="overall at most"),
        q: str | None = Query(None, max_length=200, description="text in the task instruction"),
        limit: int | None = limit_query,
        before: int | None = before_query,
    ) -> Response:
        sample_filter = SampleFilter(
            run_id=run_id,
            round_number=round_number,
            verdict=verdict,
            edit_type=edit_type,
            depth=depth,
            min_score=min_score,
            max_score=max_score,
            text=q,
        )
        with context.session() as session:
            page = list_samples(
                session,
                sample_filter=sample_filter,
                limit=_limit(limit, settings.page_size, settings),
                before=before,
            )
        return json_response(page)

    @reads.get(
        "/samples/{attempt_id}", response_model=SampleDetail, summary="An attempt's whole chain"
    )
    def sample(attempt_id: int) -> Response:
        with context.session() as session:
            return json_response(sample_detail(session, attempt_id=attempt_id))

    @reads.get("/checkpoints", response_model=CheckpointPage, summary="Checkpoints by lineage")
    def checkpoints() -> Response:
        with context.session() as session:
            return json_response(list_checkpoints(session))

    @reads.get(
        "/checkpoints/{checkpoint_id}",
        response_model=CheckpointDetail,
        summary="A checkpoint: lineage, loss curve, gate figures",
    )
    def checkpoint(checkpoint_id: int) -> Response:
        with context.session() as session:
            detail = checkpoint_detail(session, checkpoint_id=checkpoint_id, store=context.store)
        return json_response(detail)

    @reads.get("/train-jobs", response_model=TrainJobPage, summary="Training jobs, newest first")
    def train_jobs(limit: int | None = limit_query, before: int | None = before_query) -> Response:
        with context.session() as session:
            page = list_train_jobs(session, limit=_limit(limit, 100, settings), before=before)
        return json_response(page)

    @reads.get(
        "/train-jobs/{job_id}",
        response_model=TrainJobDetail,
        summary="A training job with its launcher log tail",
    )
    def train_job(job_id: int) -> Response:
        with context.session() as session:
            detail = train_job_detail(session, job_id=job_id, work_dir=context.work_dir)
        return json_response(detail)

    @reads.get(
        "/workers",
        response_model=WorkerPage,
        summary="Worker processes as their heartbeats report them, live ones first",
    )
    def workers() -> Response:
        with context.session() as session:
            page = list_workers(session, heartbeat_timeout_s=context.heartbeat_timeout_s)
        return json_response(page)

    changes = APIRouter(prefix=API_PREFIX, tags=["write"], dependencies=[Depends(write_access)])
    responses: dict[int | str, dict[str, Any]] = {
        401: {"description": "missing or wrong token; nothing changed"},
        403: {"description": "writes are disabled (no EDITLOOP_ADMIN__TOKEN)"},
        404: {"description": "no such row"},
        409: {"description": "the row's state does not allow it"},
    }

    @changes.post(
        "/runs/{run_id}/stop",
        response_model=WriteResult,
        responses=responses,
        summary="Stop a running run (the controller exits between passes)",
    )
    def stop_run(run_id: int) -> Response:
        with context.factory() as session, session.begin():
            return json_response(writes.stop_run(session, run_id=run_id))

    @changes.post(
        "/checkpoints/{checkpoint_id}/decision",
        response_model=WriteResult,
        responses=responses,
        summary="Promote or reject a checkpoint by hand",
    )
    def decide(checkpoint_id: int, body: CheckpointDecision) -> Response:
        with context.factory() as session, session.begin():
            result = writes.decide_checkpoint(
                session,
                checkpoint_id=checkpoint_id,
                decision=body.decision,
                reviewer=body.reviewer,
                reason=body.reason,
            )
        return json_response(result)

    @changes.post(
        "/attempts/{attempt_id}/override",
        response_model=WriteResult,
        responses=responses,
        summary="Override the judge's verdict of an attempt (stored beside it)",
    )
    def override(attempt_id: int, body: VerdictOverride) -> Response:
        with context.factory() as session, session.begin():
            result = writes.override_verdict(
                session,
                attempt_id=attempt_id,
                verdict=body.verdict,
                reviewer=body.reviewer,
                reason=body.reason,
            )
        return json_response(result)

    router = APIRouter()
    router.include_router(reads)
    router.include_router(changes)
    return router


def _service_router(context: AdminContext, read_access: Any) -> APIRouter:
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/runs")

    @router.get("/healthz", summary="The process is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", summary="The database and the store answer")
    def readyz() -> Response:
        problems = {}
        try:
            with context.session() as session:
                session.execute(text("SELECT 1"))
        except DBAPIError as exc:
            problems["database"] = f"{type(exc.orig).__name__}: {exc.orig}".strip()
        try:
            context.store.exists("readyz-probe")
        except (StoreUnavailable, OSError) as exc:
            problems["store"] = str(exc)
        if problems:
            return JSONResponse({"status": "unavailable", **problems}, status_code=503)
        return JSONResponse({"status": "ok"})

    @router.get(
        "/metrics", dependencies=[Depends(read_access)], summary="Prometheus text exposition"
    )
    def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from loop.admin.prometheus import build_registry

        return Response(
            generate_latest(build_registry(context.reads)), media_type=CONTENT_TYPE_LATEST
        )

    @router.get(
        "/objects/{key:path}",
        dependencies=[Depends(read_access)],
        summary="An image some row references (a thumbnail with ?side=N)",
        responses={404: {"description": "no row references this key"}},
    )
    def objects(request: Request, key: str, side: int | None = None) -> Response:
        if not safe_key(key):
            raise NotFound(f"no object {key!r}")
        if side is not None and side not in THUMBNAIL_SIDES:
            raise BadValue("side", f"{side}: use one of {THUMBNAIL_SIDES}")
        with context.session() as session:
            if not referenced_key(session, key=key):
                raise NotFound(f"no object {key!r}")
        cache = ("private, " if context.settings.protect_reads else "public, ") + IMMUTABLE
        variant = f"-{side}" if side else ""
        digest = key_digest(key)
        wanted = request.headers.get("if-none-match")
        if digest is not None and wanted == f'"{digest}{variant}"':
            return Response(status_code=304, headers={"ETag": wanted, "Cache-Control": cache})
        data = context.thumbnails.get(key, side) if side else None
        if data is None:
            try:
                original = context.store.get(key)
            except ObjectNotFound:
                raise NotFound(f"object {key!r} is referenced but missing") from None
            digest = digest or hashlib.sha256(original).hexdigest()
            data = make_thumbnail(original, side) if side else original
            if side:
                context.thumbnails.put(key, side, data)
        tag = f'"{digest or hashlib.sha256(data).hexdigest()}{variant}"'
        headers = {"ETag": tag, "Cache-Control": cache}
        if wanted == tag:
            return Response(status_code=304, headers=headers)
        return Response(data, media_type=content_type(key), headers=headers)

    return router
