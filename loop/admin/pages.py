"""Server-rendered pages (Jinja2 templates in `templates/`, SVG charts from `charts`), over the
same reads as the JSON API. No script is needed to read them; `static/admin.js` only sends the
writes (with the bearer token the reviewer types in, kept in the tab's sessionStorage)."""

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from loop.admin.charts import Series, line_chart, metric_series
from loop.admin.queries.checkpoints import checkpoint_detail, list_checkpoints
from loop.admin.queries.common import BadValue
from loop.admin.queries.runs import list_runs, round_detail, run_detail, run_names
from loop.admin.queries.samples import SampleFilter, list_samples, sample_detail
from loop.admin.queries.train_jobs import list_train_jobs, train_job_detail
from loop.admin.queries.workers import list_workers
from loop.admin.records import RunDetail
from loop.metrics import VERDICTS
from store.taxonomy import EditType

TEMPLATES = Path(__file__).resolve().parent / "templates"
THUMBNAIL_SIDE = 256


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _num(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if value != int(value) else str(int(value))


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "–"


def _object_url(key: str | None, side: int | None = None) -> str:
    if not key:
        return ""
    return f"/objects/{quote(key)}" + (f"?side={side}" if side else "")


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        pct=_pct,
        num=_num,
        when=_when,
        object_url=_object_url,
        pretty=lambda value: json.dumps(value, indent=1, sort_keys=True, default=str),
    )
    env.globals.update(verdicts=VERDICTS, edit_types=[t.value for t in EditType])
    return env


ENV = _environment()


def render(template: str, http_status: int = 200, **values: Any) -> HTMLResponse:
    """A page from its template."""
    return HTMLResponse(ENV.get_template(template).render(**values), status_code=http_status)


def render_error(status: int, message: str) -> HTMLResponse:
    """The page shown for an error: the status and the message, no traceback."""
    titles = {404: "Not found", 409: "Conflict", 422: "Bad value", 503: "Unavailable"}
    return render("error.html", status, status=status, title=titles.get(status, "Error"),
                  message=message)  # fmt: skip


def run_charts(detail: RunDetail) -> list[Markup]:
    """The run page's charts over rounds: verdict rates by depth, chains by retries needed,
    mean scores per dimension and per edit type, throughput, GPU-seconds per accepted sample."""
    rounds = [r.metrics for r in detail.rounds]
    xs = [float(r.number) for r in detail.rounds]
    depths = sorted(
        {int(key.split("/")[1]) for m in rounds for key in m if key.startswith("by_depth/")}
    )
    charts = [
        line_chart(
            f"Verdict rates at depth {depth}" + (" (first attempts)" if depth == 0 else ""),
            xs,
            metric_series(rounds, [(v, f"by_depth/{depth}/{v}/rate") for v in VERDICTS]),
            y_min=0,
            y_max=1,
        )
        for depth in depths or [0]
    ]
    retries = sorted(
        {int(key.rsplit("_", 1)[1]) for m in rounds for key in m if "success_after_" in key}
    )
    labels = {0: "at once", 1: "after 1 retry"}
    charts.append(
        line_chart(
            "Chains that succeeded (retries: reflections and restarts)",
            xs,
            metric_series(
                rounds,
                [
                    (labels.get(d, f"after {d} retries"), f"chains/success_after_{d}")
                    for d in retries
                ],
            ),
            y_min=0,
            y_max=1,
        )
    )
    charts.append(
        line_chart(
            "Mean judge scores",
            xs,
            metric_series(
                rounds,
                [
                    (d, f"scores/{d}/mean")
                    for d in ("following", "quality", "preservation", "overall")
                ],
            ),
            y_min=1,
            y_max=5,
        )
    )
    types = sorted({key.split("/")[1] for m in rounds for key in m if key.startswith("by_type/")})
    charts.append(
        line_chart(
            "Mean overall score by edit type",
            xs,
            [Series(t, [m.get(f"by_type/{t}/scores/overall/mean") for m in rounds]) for t in types],
            y_min=1,
            y_max=5,
        )
    )
    charts.append(
        line_chart(
            "Throughput (attempts/s)",
            xs,
            metric_series(rounds, [("attempts/s", "throughput/attempts_per_s")]),
            y_min=0,
        )
    )
    charts.append(
        line_chart(
            "GPU-seconds per accepted sample (edit + judge)",
            xs,
            metric_series(rounds, [("s/sample", "accepted/gpu_seconds_per_sample")]),
            y_min=0,
        )
    )
    return [Markup(chart) for chart in charts]


def _optional(params: Mapping[str, str], name: str, kind: type, minimum: float) -> Any:
    raw = params.get(name, "").strip()
    if not raw:
        return None
    try:
        value = kind(raw)
    except ValueError:
        noun = "a whole number" if kind is int else "a number"
        raise BadValue(name, f"{raw!r} is not {noun}") from None
    if value < minimum:
        raise BadValue(name, f"{raw} is below {minimum:g}")
    return value


def sample_query(
    params: Mapping[str, str], *, default_limit: int, max_limit: int
) -> tuple[SampleFilter, int, int | None]:
    """The samples page's filter, page size and cursor from its query string (empty fields of
    the form mean "any")."""
    sample_filter = SampleFilter(
        run_id=_optional(params, "run_id", int, 1),
        round_number=_optional(params, "round", int, 0),
        verdict=params.get("verdict") or None,
        edit_type=params.get("edit_type") or None,
        depth=_optional(params, "depth", int, 0),
        min_score=_optional(params, "min_score", float, 1),
        max_score=_optional(params, "max_score", float, 1),
        text=params.get("q") or None,
    )
    limit = _optional(params, "limit", int, 1) or default_limit
    if limit > max_limit:
        raise BadValue("limit", f"{limit} is above {max_limit}")
    return sample_filter, limit, _optional(params, "before", int, 1)


def page_router(context: Any) -> APIRouter:
    """The pages; `context` is the app's `AdminContext`."""
    router = APIRouter(include_in_schema=False)
    settings = context.settings

    @router.get("/runs")
    def runs_page(request: Request) -> HTMLResponse:
        before = _optional(request.query_params, "before", int, 1)
        with context.session() as session:
            page = list_runs(session, limit=settings.max_page_size, before=before)
        return render("runs.html", page=page, nav="runs")

    @router.get("/runs/{run_id}")
    def run_page(run_id: int) -> HTMLResponse:
        with context.session() as session:
            detail = run_detail(session, run_id=run_id)
        return render("run.html", detail=detail, charts=run_charts(detail), nav="runs")

    @router.get("/runs/{run_id}/rounds/{number}")
    def round_page(run_id: int, number: int) -> HTMLResponse:
        with context.session() as session:
            detail = round_detail(session, run_id=run_id, number=number)
        return render("round.html", detail=detail, nav="runs")

    @router.get("/samples")
    def samples_page(request: Request) -> HTMLResponse:
        params = request.query_params
        sample_filter, limit, before = sample_query(
            params, default_limit=settings.page_size, max_limit=settings.max_page_size
        )
        with context.session() as session:
            page = list_samples(session, sample_filter=sample_filter, limit=limit, before=before)
            runs = run_names(session)
        kept = {k: v for k, v in params.items() if v and k != "before"}
        next_url = (
            "/samples?" + urlencode({**kept, "before": page.next_before})
            if page.next_before
            else ""
        )
        return render(
            "samples.html",
            page=page,
            params=params,
            runs=runs,
            next_url=next_url,
            first_url="/samples?" + urlencode(kept) if before else "",
            side=THUMBNAIL_SIDE,
            nav="samples",
        )

    @router.get("/samples/{attempt_id}")
    def sample_page(attempt_id: int) -> HTMLResponse:
        with context.session() as session:
            detail = sample_detail(session, attempt_id=attempt_id)
        return render("sample.html", detail=detail, nav="samples")

    @router.get("/checkpoints")
    def checkpoints_page() -> HTMLResponse:
        with context.session() as session:
            page = list_checkpoints(session)
        return render("checkpoints.html", page=page, nav="checkpoints")

    @router.get("/checkpoints/{checkpoint_id}")
    def checkpoint_page(checkpoint_id: int) -> HTMLResponse:
        with context.session() as session:
            detail = checkpoint_detail(session, checkpoint_id=checkpoint_id, store=context.store)
        steps = [float(p.step) for p in detail.loss_curve]
        chart = line_chart(
            "Training loss",
            steps,
            [Series("train/loss", [p.loss for p in detail.loss_curve])],
            x_label="step",
            width=620,
        )
        return render("checkpoint.html", detail=detail, chart=Markup(chart), nav="checkpoints")

    @router.get("/train-jobs")
    def train_jobs_page(request: Request) -> HTMLResponse:
        before = _optional(request.query_params, "before", int, 1)
        with context.session() as session:
            page = list_train_jobs(session, limit=settings.max_page_size, before=before)
        return render("train_jobs.html", page=page, nav="train-jobs")

    @router.get("/workers")
    def workers_page() -> HTMLResponse:
        with context.session() as session:
            page = list_workers(session, heartbeat_timeout_s=context.heartbeat_timeout_s)
        return render("workers.html", page=page, nav="workers")

    @router.get("/train-jobs/{job_id}")
    def train_job_page(job_id: int) -> HTMLResponse:
        with context.session() as session:
            detail = train_job_detail(session, job_id=job_id, work_dir=context.work_dir)
        return render("train_job.html", detail=detail, nav="train-jobs")

    return router
