"""the role of a checkpoint

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 18:50:00.000000

A checkpoint is a version of the editor, the judge or the reflector (`editloop train-judge`);
every existing row is an editor checkpoint, which the server default fills in.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Batch mode: SQLite cannot drop the column again in place (the downgrade copies the table).
    with op.batch_alter_table("checkpoint", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("role", sa.String(length=16), server_default="editor", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("checkpoint", schema=None) as batch_op:
        batch_op.drop_column("role")
