"""The Alembic history against real PostgreSQL and SQLite: up, down, up, and no model drift."""

import pytest
from alembic import command
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError

from migrations import alembic_config, downgrade, upgrade
from store.db import make_engine, make_session_factory
from store.models import Attempt, Base, Checkpoint, Round, Run, Task

TABLES = {
    "task", "task_source", "run", "round", "attempt", "judgment", "checkpoint", "train_job",
    "export", "worker",
}  # fmt: skip


def table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_and_check(db_url: str) -> None:
    upgrade(db_url)
    assert table_names(db_url) == TABLES == set(Base.metadata.tables)
    command.check(alembic_config(db_url))  # raises when autogenerate finds a difference
    downgrade(db_url, "base")
    assert table_names(db_url) == set()
    upgrade(db_url)
    assert table_names(db_url) == TABLES


def test_idempotency_keys_are_unique_constraints(db_url: str) -> None:
    upgrade(db_url)
    factory = make_session_factory(make_engine(db_url))
    with factory() as session, session.begin():
        task = Task(
            source_key="sources/aa/a.png",
            instruction="make it blue",
            instruction_sha256="0" * 64,
            edit_type="alter",
            width=8,
            height=8,
        )
        run = Run(name="r")
        session.add_all([task, run])
        session.flush()
        round_ = Round(run_id=run.id, number=0)
        session.add(round_)
        session.flush()
        ids = {"round_id": round_.id, "task_id": task.id}
    key = {"sample_index": 0, "depth": 0, "instruction": "x", "input_key": "k", "seed": 1}
    with factory() as session, session.begin():
        session.add(Attempt(**ids, **key))
    with pytest.raises(IntegrityError), factory() as session, session.begin():
        session.add(Attempt(**ids, **key))
    with pytest.raises(IntegrityError), factory() as session, session.begin():
        session.add(
            Task(
                **{
                    c: getattr(task, c)
                    for c in (
                        "source_key",
                        "instruction",
                        "instruction_sha256",
                        "edit_type",
                        "width",
                        "height",
                    )
                }
            )
        )


def test_0006_gives_finished_rounds_the_staleness_their_rows_give(db_url: str) -> None:
    from loop.metrics import AttemptRecord, staleness_figures

    upgrade(db_url, "0005")
    factory = make_session_factory(make_engine(db_url))
    with factory() as session, session.begin():
        run = Run(name="before")
        session.add(run)
        session.flush()
        session.add(
            Round(run_id=run.id, number=0, status="finished", metrics={"attempts/total": 1})
        )
    upgrade(db_url)
    with factory() as session:
        metrics = session.scalars(select(Round.metrics)).one()
    # What the metrics give for attempts edited before 0006 (no staleness recorded).
    before = AttemptRecord(task_id=1, sample_index=0, depth=0, edit_type="alter",
                           status="judged", verdict="Success")  # fmt: skip
    assert metrics == {"attempts/total": 1} | staleness_figures([before])
    downgrade(db_url, "0005")
    with factory() as session:
        assert session.scalars(select(Round.metrics)).one() == {"attempts/total": 1}


def test_0007_makes_every_existing_checkpoint_an_editor(db_url: str) -> None:
    upgrade(db_url, "0006")
    engine = make_engine(db_url)
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO checkpoint (version, kind, status, data_filter, sample_count, "
                 "train_metrics, eval_metrics, created_at) VALUES ('old', 'full', 'promoted', "
                 "'{}', 0, '{}', '{}', CURRENT_TIMESTAMP)")
        )  # fmt: skip
    upgrade(db_url)
    factory = make_session_factory(engine)
    with factory() as session:
        assert session.scalars(select(Checkpoint.role)).all() == ["editor"]
    downgrade(db_url, "0006")
    assert "role" not in {c["name"] for c in inspect(make_engine(db_url)).get_columns("checkpoint")}
