"""create the metadata tables

Revision ID: 0001
Revises:
Create Date: 2026-11-25 15:59:24.197679
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "checkpoint",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("object_prefix", sa.String(length=256), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "training",
                "ready",
                "promoted",
                "rejected",
                name="checkpointstatus",
                native_enum=False,
                length=24,
            ),
            nullable=False,
        ),
        sa.Column("data_filter", sa.JSON(), nullable=False),
        sa.Column("sample_count", sa.Integer(), nullable=False),
        sa.Column("train_metrics", sa.JSON(), nullable=False),
        sa.Column("eval_metrics", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["checkpoint.id"], name=op.f("fk_checkpoint_parent_id_checkpoint")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_checkpoint")),
        sa.UniqueConstraint("version", name=op.f("uq_checkpoint_version")),
    )
    op.create_table(
        "export",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("data_filter", sa.JSON(), nullable=False),
        sa.Column("format", sa.String(length=32), nullable=False),
        sa.Column("object_key", sa.String(length=256), nullable=False),
        sa.Column("row_count", sa.Integer(), nullable=False),
        sa.Column("checksum", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_export")),
    )
    op.create_table(
        "run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "running", "stopped", "finished", name="runstatus", native_enum=False, length=24
            ),
            nullable=False,
        ),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run")),
        sa.UniqueConstraint("name", name=op.f("uq_run_name")),
    )
    op.create_table(
        "task",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source_key", sa.String(length=256), nullable=False),
        sa.Column("instruction", sa.String(length=2000), nullable=False),
        sa.Column("instruction_sha256", sa.String(length=64), nullable=False),
        sa.Column("edit_type", sa.String(length=24), nullable=False),
        sa.Column("origin", sa.String(length=256), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task")),
        sa.UniqueConstraint(
            "source_key", "instruction_sha256", name=op.f("uq_task_source_key_instruction_sha256")
        ),
    )
    op.create_table(
        "round",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("checkpoint_id", sa.Integer(), nullable=True),
        sa.Column(
            "status",
            sa.Enum("editing", "finished", name="roundstatus", native_enum=False, length=24),
            nullable=False,
        ),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["checkpoint_id"], ["checkpoint.id"], name=op.f("fk_round_checkpoint_id_checkpoint")
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["run.id"], name=op.f("fk_round_run_id_run"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_round")),
        sa.UniqueConstraint("run_id", "number", name=op.f("uq_round_run_id_number")),
    )
    with op.batch_alter_table("round", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_round_run_id"), ["run_id"], unique=False)

    op.create_table(
        "train_job",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("data_filter", sa.JSON(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "queued",
                "running",
                "finished",
                "failed",
                name="trainjobstatus",
                native_enum=False,
                length=24,
            ),
            nullable=False,
        ),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("progress_step", sa.Integer(), nullable=False),
        sa.Column("checkpoint_id", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["checkpoint_id"], ["checkpoint.id"], name=op.f("fk_train_job_checkpoint_id_checkpoint")
        ),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"], name=op.f("fk_train_job_run_id_run")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_train_job")),
    )
    with op.batch_alter_table("train_job", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_train_job_status"), ["status"], unique=False)

    op.create_table(
        "attempt",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("round_id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("sample_index", sa.Integer(), nullable=False),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("instruction", sa.String(length=2000), nullable=False),
        sa.Column("input_key", sa.String(length=256), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("checkpoint_id", sa.Integer(), nullable=True),
        sa.Column("output_key", sa.String(length=256), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "dispatched",
                "edited",
                "judging",
                "judged",
                "failed",
                name="attemptstatus",
                native_enum=False,
                length=24,
            ),
            nullable=False,
        ),
        sa.Column(
            "verdict",
            sa.Enum(
                "Success", "Reflection", "Failed", name="verdict", native_enum=False, length=24
            ),
            nullable=True,
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("dispatch_count", sa.Integer(), nullable=False),
        sa.Column("dispatch_deadline", sa.DateTime(timezone=True), nullable=True),
        sa.Column("edit_seconds", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["checkpoint_id"], ["checkpoint.id"], name=op.f("fk_attempt_checkpoint_id_checkpoint")
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["attempt.id"], name=op.f("fk_attempt_parent_id_attempt")
        ),
        sa.ForeignKeyConstraint(
            ["round_id"], ["round.id"], name=op.f("fk_attempt_round_id_round"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["task_id"], ["task.id"], name=op.f("fk_attempt_task_id_task")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_attempt")),
        sa.UniqueConstraint(
            "round_id",
            "task_id",
            "sample_index",
            "depth",
            name=op.f("uq_attempt_round_id_task_id_sample_index_depth"),
        ),
    )
    with op.batch_alter_table("attempt", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_attempt_round_id"), ["round_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_attempt_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_attempt_task_id"), ["task_id"], unique=False)

    op.create_table(
        "judgment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("attempt_id", sa.Integer(), nullable=False),
        sa.Column("score_following", sa.Float(), nullable=True),
        sa.Column("score_quality", sa.Float(), nullable=True),
        sa.Column("score_preservation", sa.Float(), nullable=True),
        sa.Column("overall", sa.Float(), nullable=True),
        sa.Column("dimension_names", sa.JSON(), nullable=False),
        sa.Column("parse_status", sa.String(length=24), nullable=False),
        sa.Column(
            "verdict",
            sa.Enum(
                "Success", "Reflection", "Failed", name="verdict", native_enum=False, length=24
            ),
            nullable=False,
        ),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("revised_instruction", sa.String(length=2000), nullable=True),
        sa.Column("target_description", sa.Text(), nullable=True),
        sa.Column("think", sa.Text(), nullable=True),
        sa.Column("judge_model", sa.String(length=256), nullable=False),
        sa.Column("reflector_model", sa.String(length=256), nullable=True),
        sa.Column("raw_judge_output", sa.Text(), nullable=True),
        sa.Column("raw_reflector_output", sa.Text(), nullable=True),
        sa.Column("latency_s", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["attempt_id"],
            ["attempt.id"],
            name=op.f("fk_judgment_attempt_id_attempt"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_judgment")),
        sa.UniqueConstraint("attempt_id", name=op.f("uq_judgment_attempt_id")),
    )


def downgrade() -> None:

    op.drop_table("judgment")
    with op.batch_alter_table("attempt", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_attempt_task_id"))
        batch_op.drop_index(batch_op.f("ix_attempt_status"))
        batch_op.drop_index(batch_op.f("ix_attempt_round_id"))

    op.drop_table("attempt")
    with op.batch_alter_table("train_job", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_train_job_status"))

    op.drop_table("train_job")
    with op.batch_alter_table("round", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_round_run_id"))

    op.drop_table("round")
    op.drop_table("task")
    op.drop_table("run")
    op.drop_table("export")
    op.drop_table("checkpoint")
