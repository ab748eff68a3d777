"""count the claims of a train job

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 10:12:03.418205
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Batch mode: SQLite cannot drop the column again in place (the downgrade copies the table);
    # the server default gives the existing rows their count.
    with op.batch_alter_table("train_job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claims", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("train_job", schema=None) as batch_op:
        batch_op.drop_column("claims")
