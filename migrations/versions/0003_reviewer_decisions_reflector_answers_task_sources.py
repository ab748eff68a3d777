"""reviewer decisions, reflector answers, task sources, export status

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 15:12:23.534229
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def upgrade() -> None:
    op.create_table(
        "task_source",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("dataset", sa.String(length=256), nullable=False),
        sa.Column("licence", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"], ["task.id"], name=op.f("fk_task_source_task_id_task"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_source")),
        sa.UniqueConstraint("task_id", "dataset", name=op.f("uq_task_source_task_id_dataset")),
    )
    op.create_index(op.f("ix_task_source_task_id"), "task_source", ["task_id"], unique=False)
    # Every existing task came from its origin; its licence was never given.
    op.execute(
        "INSERT INTO task_source (task_id, dataset, licence, created_at) "
        "SELECT id, origin, '', created_at FROM task"
    )
    # Batch mode: SQLite cannot drop these columns again in place (the downgrade copies tables).
    with op.batch_alter_table("checkpoint", schema=None) as batch_op:
        batch_op.add_column(sa.Column("decided_by", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("decision_reason", sa.Text(), nullable=True))
        batch_op.add_column(_timestamp("decided_at"))
    with op.batch_alter_table("export", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=24), server_default="edits", nullable=False)
        )
        batch_op.add_column(
            sa.Column("status", sa.String(length=24), server_default="finished", nullable=False)
        )
        batch_op.add_column(sa.Column("counts", sa.JSON(), nullable=True))
        batch_op.add_column(_timestamp("finished_at"))
    verdict = sa.Enum(
        "Success", "Reflection", "Failed", name="verdict", native_enum=False, length=24
    )
    with op.batch_alter_table("judgment", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reflector_tag", sa.String(length=24), nullable=True))
        batch_op.add_column(
            sa.Column("proposed_instruction", sa.String(length=2000), nullable=True)
        )
        batch_op.add_column(sa.Column("override_verdict", verdict, nullable=True))
        batch_op.add_column(sa.Column("override_reviewer", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("override_reason", sa.Text(), nullable=True))
        batch_op.add_column(_timestamp("override_at"))


def downgrade() -> None:
    with op.batch_alter_table("judgment", schema=None) as batch_op:
        for column in (
            "override_at", "override_reason", "override_reviewer", "override_verdict",
            "proposed_instruction", "reflector_tag",
        ):  # fmt: skip
            batch_op.drop_column(column)
    with op.batch_alter_table("export", schema=None) as batch_op:
        for column in ("finished_at", "counts", "status", "kind"):
            batch_op.drop_column(column)
    with op.batch_alter_table("checkpoint", schema=None) as batch_op:
        for column in ("decided_at", "decision_reason", "decided_by"):
            batch_op.drop_column(column)
    op.drop_index(op.f("ix_task_source_task_id"), table_name="task_source")
    op.drop_table("task_source")
