"""indexes for the admin's samples pages

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 16:02:11.204318

The samples grid lists a run's or a round's attempts newest first, `LIMIT` one page: with an
index on (round_id, id) PostgreSQL reads one page of index entries instead of sorting every
attempt of the round (it replaces the index on round_id alone, its prefix). `/objects/{key}`
serves only images a row references: the output_key index turns that check into a lookup.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_attempt_round_id_id", "attempt", ["round_id", "id"], unique=False)
    op.drop_index("ix_attempt_round_id", table_name="attempt")
    op.create_index("ix_attempt_output_key", "attempt", ["output_key"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_attempt_output_key", table_name="attempt")
    op.create_index("ix_attempt_round_id", "attempt", ["round_id"], unique=False)
    op.drop_index("ix_attempt_round_id_id", table_name="attempt")
