"""SQLAlchemy 2 models of editloop's metadata (docs/design.md, "Data model").

Enumerated columns are plain strings checked by the application (`native_enum=False`), so the
same schema and migrations serve PostgreSQL and SQLite.
"""

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from store.taxonomy import Verdict

# Deterministic constraint names keep Alembic autogenerate and batch mode (SQLite) stable.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Timezone-aware now, the only clock the metadata uses."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite drops the zone on the way back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: use an aware UTC datetime")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, datetime: UTCDateTime()}


def _enum(cls: type[StrEnum]) -> Enum:
    return Enum(
        cls,
        native_enum=False,
        create_constraint=False,
        length=24,
        values_callable=lambda members: [m.value for m in members],
    )


class RunStatus(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    FINISHED = "finished"


class RoundStatus(StrEnum):
    EDITING = "editing"
    FINISHED = "finished"


class AttemptStatus(StrEnum):
    """Life of an attempt: pending → dispatched → edited → judged, or failed (both terminal)."""

    PENDING = "pending"
    DISPATCHED = "dispatched"
    EDITED = "edited"
    JUDGING = "judging"
    JUDGED = "judged"
    FAILED = "failed"


class CheckpointStatus(StrEnum):
    TRAINING = "training"
    READY = "ready"
    PROMOTED = "promoted"
    REJECTED = "rejected"


class CheckpointRole(StrEnum):
    """Which model a checkpoint is a version of: only an editor checkpoint is ever edited with."""

    EDITOR = "editor"
    JUDGE = "judge"
    REFLECTOR = "reflector"


JUDGE_ROLES = (CheckpointRole.JUDGE, CheckpointRole.REFLECTOR)


def parse_judge_role(role: str) -> CheckpointRole:
    """`judge` or `reflector`; ValueError for anything else (the editor trains elsewhere)."""
    if role not in {r.value for r in JUDGE_ROLES}:
        allowed = " or ".join(r.value for r in JUDGE_ROLES)
        raise ValueError(f"--role {role!r}: expected {allowed} (the editor trains with `trainer`)")
    return CheckpointRole(role)


class TrainJobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"


class Task(Base):
    """A source image and an instruction to apply to it."""

    __tablename__ = "task"
    # The instruction enters the key as a hash: PostgreSQL refuses index rows over ~2.7 kB.
    __table_args__ = (UniqueConstraint("source_key", "instruction_sha256"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    source_key: Mapped[str] = mapped_column(String(256))
    instruction: Mapped[str] = mapped_column(String(2000))
    instruction_sha256: Mapped[str] = mapped_column(String(64))
    edit_type: Mapped[str] = mapped_column(String(24))
    origin: Mapped[str] = mapped_column(String(256), default="")
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Run(Base):
    """A sequence of rounds sharing one configuration."""

    __tablename__ = "run"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    status: Mapped[RunStatus] = mapped_column(_enum(RunStatus), default=RunStatus.RUNNING)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Round(Base):
    """One round of a run: the checkpoint it edited with, its status and metrics."""

    __tablename__ = "round"
    __table_args__ = (UniqueConstraint("run_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    checkpoint_id: Mapped[int | None] = mapped_column(ForeignKey("checkpoint.id"))
    status: Mapped[RoundStatus] = mapped_column(_enum(RoundStatus), default=RoundStatus.EDITING)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class Attempt(Base):
    """One edit of one task in one round; reflections and restarts are deeper attempts."""

    __tablename__ = "attempt"
    __table_args__ = (
        UniqueConstraint("round_id", "task_id", "sample_index", "depth"),
        # The admin's samples pages: a round's (or run's) attempts newest first, and "does a row
        # reference this image" (migration 0004).
        Index("ix_attempt_round_id_id", "round_id", "id"),
        Index("ix_attempt_output_key", "output_key"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("round.id", ondelete="CASCADE"))
    task_id: Mapped[int] = mapped_column(ForeignKey("task.id"), index=True)
    sample_index: Mapped[int] = mapped_column(Integer)
    depth: Mapped[int] = mapped_column(Integer, default=0)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("attempt.id"))
    instruction: Mapped[str] = mapped_column(String(2000))
    input_key: Mapped[str] = mapped_column(String(256))
    seed: Mapped[int] = mapped_column(BigInteger)
    checkpoint_id: Mapped[int | None] = mapped_column(ForeignKey("checkpoint.id"))
    output_key: Mapped[str | None] = mapped_column(String(256))
    status: Mapped[AttemptStatus] = mapped_column(
        _enum(AttemptStatus), default=AttemptStatus.PENDING, index=True
    )
    verdict: Mapped[Verdict | None] = mapped_column(_enum(Verdict))
    error: Mapped[str | None] = mapped_column(Text)
    dispatch_count: Mapped[int] = mapped_column(Integer, default=0)
    dispatch_deadline: Mapped[datetime | None]
    edit_seconds: Mapped[float | None] = mapped_column(Float)
    # The worker that last started a stage of it (edit, then judge), and when; `started_at` is
    # cleared when it is sent to the next stage (a killed worker's attempts still name it).
    worker: Mapped[str | None] = mapped_column(String(128))
    started_at: Mapped[datetime | None]
    # The message it was last sent in (a stage acts only on attempts of the batch it was sent),
    # and when (migration 0006): what flow control counts and liveness times.
    batch: Mapped[str | None] = mapped_column(String(32))
    dispatched_at: Mapped[datetime | None]
    # Training jobs of its run, queued before its round opened, whose checkpoint it did not edit
    # with (unfinished, or promoted after the one it used); set when a worker starts its edit.
    staleness: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Judgment(Base):
    """Scores, verdict and reflection of one attempt, with the raw model outputs."""

    __tablename__ = "judgment"

    id: Mapped[int] = mapped_column(primary_key=True)
    attempt_id: Mapped[int] = mapped_column(
        ForeignKey("attempt.id", ondelete="CASCADE"), unique=True
    )
    score_following: Mapped[float | None] = mapped_column(Float)
    score_quality: Mapped[float | None] = mapped_column(Float)
    score_preservation: Mapped[float | None] = mapped_column(Float)
    overall: Mapped[float | None] = mapped_column(Float)
    dimension_names: Mapped[dict[str, Any]] = mapped_column(default=dict)
    parse_status: Mapped[str] = mapped_column(String(24))
    verdict: Mapped[Verdict] = mapped_column(_enum(Verdict))
    reason: Mapped[str | None] = mapped_column(Text)
    revised_instruction: Mapped[str | None] = mapped_column(String(2000))
    # The reflector's own answer, kept whatever the verdict (its tag, and the instruction it
    # proposed even when no retry was left): what reflection datasets are made of.
    reflector_tag: Mapped[str | None] = mapped_column(String(24))
    proposed_instruction: Mapped[str | None] = mapped_column(String(2000))
    target_description: Mapped[str | None] = mapped_column(Text)
    think: Mapped[str | None] = mapped_column(Text)
    judge_model: Mapped[str] = mapped_column(String(256))
    reflector_model: Mapped[str | None] = mapped_column(String(256))
    raw_judge_output: Mapped[str | None] = mapped_column(Text)
    raw_reflector_output: Mapped[str | None] = mapped_column(Text)
    latency_s: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # A reviewer's verdict, stored beside the judge's (never over it); when set it wins for
    # training pools and exports, and counts as a disagreement with the judge.
    override_verdict: Mapped[Verdict | None] = mapped_column(_enum(Verdict))
    override_reviewer: Mapped[str | None] = mapped_column(String(128))
    override_reason: Mapped[str | None] = mapped_column(Text)
    override_at: Mapped[datetime | None]


class Checkpoint(Base):
    """A version of the editor, judge or reflector (`role`): base weights or a fine-tune."""

    __tablename__ = "checkpoint"

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("checkpoint.id"))
    kind: Mapped[str] = mapped_column(String(16), default="base")
    # A plain string (migration 0007 filled existing rows with "editor"): `CheckpointRole`.
    role: Mapped[str] = mapped_column(
        String(16), default=CheckpointRole.EDITOR.value, server_default=CheckpointRole.EDITOR.value
    )
    object_prefix: Mapped[str | None] = mapped_column(String(256))
    status: Mapped[CheckpointStatus] = mapped_column(
        _enum(CheckpointStatus), default=CheckpointStatus.TRAINING
    )
    data_filter: Mapped[dict[str, Any]] = mapped_column(default=dict)
    sample_count: Mapped[int] = mapped_column(Integer, default=0)
    train_metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    eval_metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Who moved it to promoted or rejected ("gate", or a reviewer's name), why and when.
    decided_by: Mapped[str | None] = mapped_column(String(128))
    decision_reason: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime | None]


class TrainJob(Base):
    """A fine-tuning job claimed by one trainer at a time under a renewable lease."""

    __tablename__ = "train_job"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("run.id"))
    data_filter: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[TrainJobStatus] = mapped_column(
        _enum(TrainJobStatus), default=TrainJobStatus.QUEUED, index=True
    )
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None]
    progress_step: Mapped[int] = mapped_column(Integer, default=0)
    # Claims not given back by a release: each lapsed lease (a trainer that died) keeps its claim,
    # so the claimer can fail a job whose trainer keeps dying instead of re-claiming it forever.
    # The server default fills the rows that existed before the column (migration 0002).
    claims: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    checkpoint_id: Mapped[int | None] = mapped_column(ForeignKey("checkpoint.id"))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Worker(Base):
    """An `editloop worker` process as its heartbeat reports it (migration 0006): what it
    consumes, where it runs, the editor checkpoint it holds, whether it is busy, its last beat."""

    __tablename__ = "worker"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)  # the Celery node name
    queues: Mapped[str] = mapped_column(String(128))  # comma-separated
    device: Mapped[str] = mapped_column(String(64), default="")
    pid: Mapped[int] = mapped_column(Integer, default=0)
    checkpoint: Mapped[str | None] = mapped_column(String(64))  # loaded editor version; None: none
    started_at: Mapped[datetime] = mapped_column(default=utcnow)  # this process started
    beat_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Since when it runs its current task, or has been free to take one (neither: starting up,
    # or stopped).
    busy_since: Mapped[datetime | None]
    idle_since: Mapped[datetime | None]
    task: Mapped[str | None] = mapped_column(String(64))  # the task it runs now
    tasks_done: Mapped[int] = mapped_column(Integer, default=0)
    stopped_at: Mapped[datetime | None]  # it exited (cleanly, or by its watchdog)


class TaskSource(Base):
    """A dataset a task came from, with its licence as the user gave it (an SPDX id, or "")."""

    __tablename__ = "task_source"
    __table_args__ = (UniqueConstraint("task_id", "dataset"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("task.id", ondelete="CASCADE"), index=True)
    dataset: Mapped[str] = mapped_column(String(256))
    licence: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Export(Base):
    """A curated dataset written to the object store or a folder."""

    __tablename__ = "export"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(24), default="edits", server_default="edits")
    # staging while it is written; finished once its manifest is written and verified.
    status: Mapped[str] = mapped_column(String(24), default="staging", server_default="finished")
    data_filter: Mapped[dict[str, Any]] = mapped_column(default=dict)
    format: Mapped[str] = mapped_column(String(32))
    object_key: Mapped[str] = mapped_column(String(256))
    row_count: Mapped[int] = mapped_column(Integer)
    checksum: Mapped[str] = mapped_column(String(64))  # SHA-256 of the manifest
    counts: Mapped[dict[str, Any] | None] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
