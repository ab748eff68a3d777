"""Reads of checkpoints: lineage, gate figures, the published loss curve."""

import json
from collections import defaultdict
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from loop.admin.queries.common import NotFound
from loop.admin.records import (
    CheckpointDetail,
    CheckpointPage,
    CheckpointRow,
    GateFigures,
    LossPoint,
)
from loop.checkpoints import latest_promoted
from policies.training.layout import LOSS_LOG
from store.models import (
    Checkpoint,
    Round,
    TrainJob,
)
from store.objects import ObjectNotFound, ObjectStore


def list_checkpoints(session: Session) -> CheckpointPage:
    """Every checkpoint in lineage order (a parent before its children, siblings by id)."""
    rows = _checkpoint_rows(session, None)
    return CheckpointPage(items=lineage_order(rows), total=len(rows))


def _checkpoint_rows(session: Session, ids: list[int] | None) -> list[CheckpointRow]:
    parent = aliased(Checkpoint)
    query = (
        select(Checkpoint, parent.version)
        .outerjoin(parent, parent.id == Checkpoint.parent_id)
        .order_by(Checkpoint.id)
    )
    if ids is not None:
        query = query.where(Checkpoint.id.in_(ids))
    found = session.execute(query).all()
    usage = dict(
        session.execute(
            select(Round.checkpoint_id, func.count())
            .where(Round.checkpoint_id.is_not(None))
            .group_by(Round.checkpoint_id)
        ).all()
    )
    live = latest_promoted(session)
    depths = _lineage_depths(session)
    return [
        CheckpointRow(
            id=c.id,
            version=c.version,
            parent_id=c.parent_id,
            parent_version=parent_version,
            kind=c.kind,
            status=c.status.value,
            live=live is not None and live.id == c.id,
            sample_count=c.sample_count,
            data_filter=dict(c.data_filter),
            created_at=c.created_at,
            decided_by=c.decided_by,
            decision_reason=c.decision_reason,
            decided_at=c.decided_at,
            rounds_using=int(usage.get(c.id, 0)),
            gate=gate_figures(c.eval_metrics),
            lineage_depth=depths.get(c.id, 0),
        )
        for c, parent_version in found
    ]


def _lineage_depths(session: Session) -> dict[int, int]:
    parents = dict(session.execute(select(Checkpoint.id, Checkpoint.parent_id)).all())
    depths: dict[int, int] = {}

    def depth(node: int, seen: frozenset[int] = frozenset()) -> int:
        if node not in depths:
            parent = parents.get(node)
            depths[node] = (
                0 if parent is None or parent in seen else 1 + depth(parent, seen | {node})
            )
        return depths[node]

    for node in parents:
        depth(node)
    return depths


def lineage_order(rows: list[CheckpointRow]) -> list[CheckpointRow]:
    """Depth-first from the roots: each checkpoint right after its parent's subtree starts."""
    children: dict[int | None, list[CheckpointRow]] = defaultdict(list)
    ids = {row.id for row in rows}
    for row in sorted(rows, key=lambda r: r.id):
        children[row.parent_id if row.parent_id in ids else None].append(row)
    ordered: list[CheckpointRow] = []
    stack = list(reversed(children[None]))
    while stack:
        row = stack.pop()
        ordered.append(row)
        stack.extend(reversed(children[row.id]))
    return ordered


def gate_figures(eval_metrics: dict[str, Any]) -> GateFigures | None:
    """The gate's figures out of `checkpoint.eval_metrics` (loop/training/gate.py's keys)."""
    if not eval_metrics or "eval/candidate/mean_overall" not in eval_metrics:
        return None

    def number(key: str) -> float | None:
        value = eval_metrics.get(key)
        return float(value) if isinstance(value, int | float) else None

    tasks = number("eval/candidate/tasks")
    return GateFigures(
        parent_version=str(eval_metrics.get("eval/parent_version", "")),
        candidate_mean=number("eval/candidate/mean_overall"),
        parent_mean=number("eval/parent/mean_overall"),
        delta=number("eval/delta_overall"),
        margin=number("eval/margin"),
        tasks=int(tasks) if tasks is not None else None,
    )


def checkpoint_detail(
    session: Session, *, checkpoint_id: int, store: ObjectStore | None
) -> CheckpointDetail:
    """A checkpoint with its lineage, gate figures and training loss curve (from the published
    loss log; read from the store when one is given)."""
    rows = _checkpoint_rows(session, [checkpoint_id])
    if not rows:
        raise NotFound(f"checkpoint {checkpoint_id} not found")
    checkpoint = session.get_one(Checkpoint, checkpoint_id)
    children = session.scalars(
        select(Checkpoint.version)
        .where(Checkpoint.parent_id == checkpoint_id)
        .order_by(Checkpoint.id)
    )
    job_id = session.scalar(
        select(TrainJob.id).where(TrainJob.checkpoint_id == checkpoint_id).order_by(TrainJob.id)
    )
    curve, note = [], "not read"
    if store is not None:
        curve, note = read_loss_curve(store, checkpoint.object_prefix)
    return CheckpointDetail(
        checkpoint=rows[0],
        children=list(children),
        train_metrics=dict(checkpoint.train_metrics),
        eval_metrics=dict(checkpoint.eval_metrics),
        train_job_id=job_id,
        loss_curve=curve,
        loss_note=note,
    )


def read_loss_curve(store: ObjectStore, prefix: str | None) -> tuple[list[LossPoint], str]:
    """The per-step training loss published with a checkpoint, and a note when there is none."""
    if not prefix:
        return [], "the base checkpoint was not trained here"
    try:
        text = store.get(f"{prefix}/{LOSS_LOG}").decode("utf-8", errors="replace")
    except ObjectNotFound:
        return [], f"{prefix}/{LOSS_LOG} is not in the store"
    return parse_loss_log(text), ""


def parse_loss_log(text: str) -> list[LossPoint]:
    """`loss_log.jsonl` lines (`{"step": 3, "train/loss": 0.41, ...}`) as points; lines that are
    not such records are skipped."""
    points = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
            points.append(LossPoint(int(record["step"]), float(record["train/loss"])))
        except (ValueError, KeyError, TypeError):
            continue
    return points
