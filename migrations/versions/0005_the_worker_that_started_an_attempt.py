"""the worker that started an attempt

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 16:20:41.118203

An edit worker marks the attempts of a batch it starts with its name and the time, so that what
happened to an attempt (who held it when a worker died) can be read from the database.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("attempt", schema=None) as batch_op:
        batch_op.add_column(sa.Column("worker", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("started_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("attempt", schema=None) as batch_op:
        batch_op.drop_column("started_at")
        batch_op.drop_column("worker")
