"""The invariant checker: all hold after a real round, and each one catches its violation."""

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from loop.controller import RunConfig, run_loop
from loop.invariants import check_invariants
from store.models import Attempt, AttemptStatus, Judgment, Round, TrainJob
from store.objects import LocalStore
from workers.dispatch import CeleryDispatcher

Factory = sessionmaker[Session]


def failing(factory: Factory, store: LocalStore) -> dict[str, tuple[str, ...]]:
    checks = check_invariants(factory, store, grace=timedelta(0))
    return {c.name: c.violations for c in checks if not c.ok}


def leave_an_attempt_in_flight(factory: Factory, store: LocalStore) -> None:
    with factory() as session, session.begin():
        done = session.scalars(select(Attempt)).first()
        session.add(
            Attempt(
                round_id=done.round_id, task_id=done.task_id, sample_index=0, depth=5,
                instruction="x", input_key=done.input_key, seed=0,
                status=AttemptStatus.DISPATCHED,
            )
        )  # fmt: skip


def drop_a_judgment(factory: Factory, store: LocalStore) -> None:
    with factory() as session, session.begin():
        session.execute(delete(Judgment).where(Judgment.id == session.scalar(select(Judgment.id))))


def lose_an_edited_image(factory: Factory, store: LocalStore) -> None:
    with factory() as session:
        store.delete(session.scalar(select(Attempt.output_key).where(Attempt.depth == 1)))


def corrupt_an_edited_image(factory: Factory, store: LocalStore) -> None:
    with factory() as session:
        store.put(session.scalar(select(Attempt.output_key).where(Attempt.depth == 1)), b"x")


def leave_garbage(factory: Factory, store: LocalStore) -> None:
    store.put("edits/00/orphan.png", b"nobody points here")


def leave_a_job_running(factory: Factory, store: LocalStore) -> None:
    with factory() as session, session.begin():
        session.add(TrainJob(data_filter={}))


def doctor_the_metrics(factory: Factory, store: LocalStore) -> None:
    with factory() as session, session.begin():
        round_ = session.scalars(select(Round)).one()
        round_.metrics = {**round_.metrics, "verdict/Success/count": 99.0}


@pytest.mark.parametrize(
    ("harm", "check"),
    [
        (leave_an_attempt_in_flight, "every attempt terminal, once"),
        (drop_a_judgment, "one judgment per judged attempt"),
        (lose_an_edited_image, "referenced images exist, checksums match"),
        (corrupt_an_edited_image, "referenced images exist, checksums match"),
        (leave_garbage, "no unreferenced object older than the gc grace"),
        (leave_a_job_running, "every train job finished or failed with a reason"),
        (doctor_the_metrics, "round metrics equal their rows"),
    ],
)
def test_each_invariant_catches_its_violation(
    loop_env,
    harm: Callable[[Factory, LocalStore], None],
    check: str,  # type: ignore[no-untyped-def]
) -> None:
    factory, store, _ = loop_env
    run_loop(
        factory=factory,
        dispatcher=CeleryDispatcher(),
        config=RunConfig(name="checked", rounds=1, tasks_per_round=6, poll_interval_s=0.01),
    )
    assert failing(factory, store) == {}
    harm(factory, store)
    violated = failing(factory, store)
    # (Harm to a row can break the round's metrics as well: they are recomputed from rows.)
    assert len(violated.get(check, ())) == 1
    assert set(violated) <= {check, "round metrics equal their rows"}
