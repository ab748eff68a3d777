"""worker heartbeats, dispatch batches and staleness

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 10:05:12.402118

The controller's flow control and liveness: a `worker` row per worker process, renewed by its
heartbeat; each attempt records the message (`batch`) it was last sent in and when, and the
staleness of the checkpoint it was edited with (pipelined rounds). Finished rounds get the
staleness figures their rows give (none of their attempts has one: all 0), so that their stored
metrics still equal a recomputation (`editloop check`).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp(name: str, *, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


# What `loop.metrics.staleness_figures` gives for attempts without staleness (all before 0006).
STALENESS_BEFORE = {
    "staleness/edits": 0,
    "staleness/max": 0,
    "staleness/mean": 0.0,
    "staleness/stale_rate": 0.0,
    "checkpoints/used": 0,
}
round_table = sa.table(
    "round",
    sa.column("id", sa.Integer),
    sa.column("status", sa.String),
    sa.column("metrics", sa.JSON),
)


def _finished_rounds() -> list[tuple[int, dict]]:  # type: ignore[type-arg]
    rows = op.get_bind().execute(
        sa.select(round_table.c.id, round_table.c.metrics).where(round_table.c.status == "finished")
    )
    return [(id_, dict(metrics)) for id_, metrics in rows if metrics]


def _set_metrics(round_id: int, metrics: dict) -> None:  # type: ignore[type-arg]
    op.get_bind().execute(
        round_table.update().where(round_table.c.id == round_id).values(metrics=metrics)
    )


def upgrade() -> None:
    op.create_table(
        "worker",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("queues", sa.String(length=128), nullable=False),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("checkpoint", sa.String(length=64), nullable=True),
        _timestamp("started_at", nullable=False),
        _timestamp("beat_at", nullable=False),
        _timestamp("busy_since"),
        _timestamp("idle_since"),
        sa.Column("task", sa.String(length=64), nullable=True),
        sa.Column("tasks_done", sa.Integer(), nullable=False),
        _timestamp("stopped_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_worker")),
        sa.UniqueConstraint("name", name=op.f("uq_worker_name")),
    )
    with op.batch_alter_table("attempt", schema=None) as batch_op:
        batch_op.add_column(sa.Column("batch", sa.String(length=32), nullable=True))
        batch_op.add_column(_timestamp("dispatched_at"))
        batch_op.add_column(sa.Column("staleness", sa.Integer(), nullable=True))
    for round_id, metrics in _finished_rounds():
        _set_metrics(round_id, STALENESS_BEFORE | metrics)


def downgrade() -> None:
    for round_id, metrics in _finished_rounds():
        _set_metrics(round_id, {k: v for k, v in metrics.items() if k not in STALENESS_BEFORE})
    with op.batch_alter_table("attempt", schema=None) as batch_op:
        batch_op.drop_column("staleness")
        batch_op.drop_column("dispatched_at")
        batch_op.drop_column("batch")
    op.drop_table("worker")
