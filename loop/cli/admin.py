"""The admin on the command line: `serve` (the web admin) and the views `runs`, `rounds`,
`metrics`, `samples`, `checkpoints` (rich tables on a terminal; `--json` prints exactly what the
API answers for the same question)."""

import typer
from rich.console import Console
from rich.table import Table

from loop.admin.queries.checkpoints import list_checkpoints
from loop.admin.queries.common import BadValue, NotFound
from loop.admin.queries.runs import find_run, list_rounds, list_runs, round_detail
from loop.admin.queries.samples import SampleFilter, list_samples
from loop.admin.records import dumps
from loop.cli.errors import USAGE, UserError
from loop.schema import ensure_schema
from loop.services import open_database
from loop.settings import get_settings

console = Console()
JSON_HELP = "Print JSON (what the API answers) instead of a table."


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _session():  # type: ignore[no-untyped-def]
    settings = get_settings()
    ensure_schema(settings)
    return open_database(settings)()


def _user_error(exc: Exception) -> UserError:
    if isinstance(exc, BadValue):
        return UserError(f"--{exc.field.replace('_', '-')}: {exc}", code=USAGE)
    return UserError(str(exc))


def serve(
    host: str | None = typer.Option(None, help="Interface to listen on (default: admin.host)."),
    port: int | None = typer.Option(
        None, min=1, max=65535, help="Port to listen on (default: admin.port)."
    ),
) -> None:
    """Serve the admin: pages, the JSON API under /api/v1, /metrics, /healthz and /readyz.

    Reads are open unless EDITLOOP_ADMIN__PROTECT_READS=true; writes (stop a run, promote or
    reject a checkpoint, override a verdict) need the bearer token EDITLOOP_ADMIN__TOKEN.
    """
    import uvicorn

    from loop.admin.api import create_app

    settings = get_settings()
    ensure_schema(settings)
    host = host or settings.admin.host
    port = port or settings.admin.port
    writes = "enabled" if settings.admin.token_value() else "disabled (set EDITLOOP_ADMIN__TOKEN)"
    console.print(f"editloop admin on http://{host}:{port}/ · writes {writes}", highlight=False)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")


def runs(
    limit: int = typer.Option(100, min=1, help="Runs to show, newest first."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Runs: status, rounds done, attempts, acceptance."""
    with _session() as session:
        page = list_runs(session, limit=limit)
    if as_json:
        print(dumps(page))
        return
    table = Table(title=f"runs ({page.total})")
    for name in ("id", "name", "status", "rounds", "attempts", "judged", "accepted", "acceptance"):
        table.add_column(name, justify="right" if name not in ("name", "status") else "left")
    for run in page.items:
        table.add_row(
            str(run.id),
            run.name,
            run.status,
            f"{run.rounds_finished}/{run.rounds}",
            str(run.attempts),
            str(run.judged),
            str(run.accepted),
            _pct(run.acceptance),
        )
    console.print(table)


def rounds(
    run: str = typer.Argument(..., help="Run name or id."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """The rounds of a run with their main figures (`editloop metrics RUN N` for one round)."""
    try:
        with _session() as session:
            run_id = find_run(session, ref=run).id
            rows = list_rounds(session, run_id=run_id)
    except NotFound as exc:
        raise _user_error(exc) from None
    if as_json:
        from loop.admin.records import RoundRow

        print(dumps(rows, list[RoundRow]))
        return
    table = Table(title=f"rounds of {run}")
    columns = ("round", "status", "checkpoint", "attempts", "Success", "Reflection", "Failed",
               "chains ok", "overall", "attempts/s", "seconds")  # fmt: skip
    for name in columns:
        table.add_column(name, justify="left" if name in ("status", "checkpoint") else "right")
    for row in rows:
        m = row.metrics
        table.add_row(
            str(row.number),
            row.status,
            row.checkpoint_version or "base",
            str(row.attempts),
            *(_pct(m.get(f"verdict/{v}/rate")) for v in ("Success", "Reflection", "Failed")),
            _pct(m.get("chains/success_rate")),
            _num(m.get("scores/overall/mean")),
            _num(m.get("throughput/attempts_per_s")),
            _num(row.duration_s, 1),
        )
    console.print(table)


def metrics(
    run: str = typer.Argument(..., help="Run name or id."),
    number: int = typer.Argument(..., min=0, help="Round number (from 0)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """One round: metrics by edit type, judge health, slowest attempts."""
    try:
        with _session() as session:
            run_id = find_run(session, ref=run).id
            detail = round_detail(session, run_id=run_id, number=number)
    except NotFound as exc:
        raise _user_error(exc) from None
    if as_json:
        print(dumps(detail))
        return
    by_type = Table(title=f"round {number} of {detail.run_name} by edit type")
    for name in ("edit type", "judged", "Success", "Reflection", "Failed", "following",
                 "quality", "preservation", "overall"):  # fmt: skip
        by_type.add_column(name, justify="left" if name == "edit type" else "right")
    for t in detail.by_type:
        by_type.add_row(
            t.edit_type,
            str(t.judged),
            _pct(t.success_rate),
            _pct(t.reflection_rate),
            _pct(t.failed_rate),
            _num(t.following),
            _num(t.quality),
            _num(t.preservation),
            _num(t.overall),
        )
    console.print(by_type)
    h = detail.judge_health
    health = Table(title="judge health")
    health.add_column("figure")
    health.add_column("value", justify="right")
    for label, value in (
        ("judgments", str(h.judgments)),
        ("unparseable", _pct(h.unparseable_rate)),
        ("capped", _pct(h.capped_rate)),
        ("no-op guard trips", str(h.noop_trips)),
        ("reflector invalid", _pct(h.reflector_invalid_rate)),
        ("overrides", str(h.overrides)),
        ("disagreements", f"{h.disagreements} ({_pct(h.disagreement_rate)})"),
    ):
        health.add_row(label, value)
    console.print(health)
    slow = Table(title="slowest attempts")
    for name in ("attempt", "task", "depth", "edit s", "judge s", "total s"):
        slow.add_column(name, justify="right")
    for a in detail.slowest:
        slow.add_row(str(a.attempt_id), str(a.task_id), str(a.depth), _num(a.edit_seconds, 3),
                     _num(a.judge_seconds, 3), _num(a.total_seconds, 3))  # fmt: skip
    console.print(slow)


def samples(
    run: str = typer.Argument(..., help="Run name or id."),
    round_number: int | None = typer.Option(None, "--round", min=0, help="Only this round."),
    verdict: str | None = typer.Option(
        None, help="Only this verdict (Success, Reflection, Failed; a reviewer's override wins)."
    ),
    edit_type: str | None = typer.Option(None, help="Only this ImgEdit edit type."),
    depth: int | None = typer.Option(None, min=0, help="Only attempts this deep (0: first)."),
    min_score: float | None = typer.Option(None, help="Overall judge score at least (1-5)."),
    max_score: float | None = typer.Option(None, help="Overall judge score at most (1-5)."),
    search: str | None = typer.Option(None, help="Text in the task's instruction."),
    limit: int = typer.Option(20, min=1, max=1000, help="Samples to show, newest first."),
    before: int | None = typer.Option(
        None, min=1, help="Only attempts with a smaller id (the `next_before` of a page)."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """A run's attempts with their verdicts and scores, newest first, filtered."""
    try:
        with _session() as session:
            sample_filter = SampleFilter(
                run_id=find_run(session, ref=run).id,
                round_number=round_number,
                verdict=verdict,
                edit_type=edit_type,
                depth=depth,
                min_score=min_score,
                max_score=max_score,
                text=search,
            )
            page = list_samples(session, sample_filter=sample_filter, limit=limit, before=before)
    except (NotFound, BadValue) as exc:
        raise _user_error(exc) from None
    if as_json:
        print(dumps(page))
        return
    table = Table(title=f"samples of {run}: {len(page.items)} of {page.total}")
    for name in (
        "attempt",
        "round",
        "depth",
        "type",
        "verdict",
        "scores",
        "overall",
        "instruction",
    ):
        table.add_column(name, justify="right" if name in ("attempt", "round", "depth") else "left")
    for s in page.items:
        judge = f" (judge: {s.judge_verdict})" if s.override_verdict else ""
        scores = "/".join(_num(v, 0) for v in (s.following, s.quality, s.preservation))
        verdict = f"{s.verdict or '–'}{judge}"
        table.add_row(str(s.attempt_id), str(s.round_number), str(s.depth), s.edit_type,
                      verdict, scores, _num(s.overall), s.instruction)  # fmt: skip
    console.print(table)
    if page.next_before:
        console.print(f"more: --before {page.next_before}", highlight=False)


def checkpoints(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Checkpoints in lineage order: status, the live one, gate figures, who decided."""
    with _session() as session:
        page = list_checkpoints(session)
    if as_json:
        print(dumps(page))
        return
    table = Table(title=f"checkpoints ({page.total})")
    for name in ("id", "version", "status", "samples", "gate (candidate vs parent)", "decided by"):
        table.add_column(name, justify="right" if name in ("id", "samples") else "left")
    for c in page.items:
        gate = f"{_num(c.gate.candidate_mean)} vs {_num(c.gate.parent_mean)}" if c.gate else "–"
        version = "  " * c.lineage_depth + ("↳ " if c.lineage_depth else "") + c.version
        status = c.status + (" (live)" if c.live else "")
        decided = c.decided_by or ("the gate" if c.status in ("promoted", "rejected") else "–")
        table.add_row(str(c.id), version, status, str(c.sample_count), gate, decided)
    console.print(table)
