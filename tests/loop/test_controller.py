"""The controller and the worker stages, eager (in-process), on SQLite + local folder.

The shapes world's exact judges and a scripted editor that does only the first operation of an
instruction make every outcome predictable: a single-operation task succeeds at depth 0; a
compound task is half done at depth 0 (Reflection: the rule reflector asks for the missing
operation), and the child, editing the parent's output, completes it (Success at depth 1).
"""

from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from loop.controller import RunConfig, RunStopped, draw_tasks, run_loop
from loop.gc import referenced_keys
from migrations import upgrade
from store.db import make_engine, make_session_factory
from store.models import (
    Attempt,
    AttemptStatus,
    Judgment,
    Round,
    RoundStatus,
    Run,
    RunStatus,
    Task,
    TrainJob,
)
from store.taxonomy import Verdict
from workers.dispatch import CeleryDispatcher
from workers.stages import edit_attempts, judge_attempts


def test_one_round_follows_reflections_to_success(loop_env) -> None:  # type: ignore[no-untyped-def]
    factory, store, editor = loop_env
    config = RunConfig(name="r", rounds=1, tasks_per_round=6, batch_size=4, poll_interval_s=0.01)
    seen: list[dict[str, float]] = []
    run_loop(
        factory=factory,
        dispatcher=CeleryDispatcher(),
        config=config,
        on_round=lambda n, m: seen.append(m),
    )
    with factory() as session:
        attempts = session.scalars(select(Attempt).order_by(Attempt.id)).all()
        assert all(a.status == AttemptStatus.JUDGED for a in attempts)
        by_depth = {(a.task_id, a.depth): a for a in attempts}
        compound = {t.id for t in session.scalars(select(Task).where(Task.edit_type == "hybrid"))}
        assert len(compound) == 4
        for (task_id, depth), attempt in by_depth.items():
            if task_id in compound:
                assert attempt.verdict == (Verdict.REFLECTION if depth == 0 else Verdict.SUCCESS)
            else:
                assert (depth, attempt.verdict) == (0, Verdict.SUCCESS)
        for attempt in attempts:
            if attempt.depth == 1:  # the child edits its parent's output with the new instruction
                parent = session.get_one(Attempt, attempt.parent_id)
                judgment = session.scalar(select(Judgment).where(Judgment.attempt_id == parent.id))
                assert attempt.input_key == parent.output_key
                assert attempt.instruction == judgment.revised_instruction != parent.instruction
        assert set(store.list()) == referenced_keys(session)
        metrics = session.scalar(select(Round.metrics))
    assert len(attempts) == 10 and seen == [metrics]
    assert metrics["verdict/Success/count"] == 6 and metrics["verdict/Reflection/count"] == 4
    assert metrics["chains/success_after_0"] == pytest.approx(2 / 6)
    assert metrics["chains/success_after_1"] == pytest.approx(4 / 6)
    assert metrics["by_type/hybrid/Reflection/rate"] == pytest.approx(4 / 8)
    assert max(editor.calls) == 4  # attempts went to the editor in batches


def test_resuming_a_finished_run_repeats_nothing(loop_env) -> None:  # type: ignore[no-untyped-def]
    factory, _, editor = loop_env
    config = RunConfig(name="again", rounds=1, tasks_per_round=6, poll_interval_s=0.01)
    run_loop(factory=factory, dispatcher=CeleryDispatcher(), config=config)
    calls = len(editor.calls)
    run_loop(factory=factory, dispatcher=CeleryDispatcher(), config=config)
    assert len(editor.calls) == calls
    with factory() as session:
        assert len(session.scalars(select(Attempt)).all()) == 10


class LossyDispatcher(CeleryDispatcher):
    """Drops the first `drop` sends, as a broker that lost messages would."""

    def __init__(self, drop: int) -> None:
        self.drop = drop

    def send_edit(self, attempt_ids: Sequence[int]) -> None:
        if self.drop > 0:
            self.drop -= 1
            return
        super().send_edit(attempt_ids)


def test_lost_messages_are_redispatched_after_the_deadline(loop_env) -> None:  # type: ignore[no-untyped-def]
    factory, store, _ = loop_env
    config = RunConfig(
        name="lossy",
        rounds=1,
        tasks_per_round=6,
        batch_size=2,
        dispatch_timeout_s=0.3,
        poll_interval_s=0.05,
    )
    run_loop(factory=factory, dispatcher=LossyDispatcher(drop=2), config=config)
    with factory() as session:
        attempts = session.scalars(select(Attempt)).all()
        assert len(attempts) == 10 and all(a.status == AttemptStatus.JUDGED for a in attempts)
        assert sorted(a.dispatch_count for a in attempts).count(2) == 4  # two lost batches of 2
        assert len(session.scalars(select(Judgment)).all()) == 10  # judged exactly once each
        assert set(store.list()) == referenced_keys(session)


def test_attempts_end_failed_after_the_dispatch_cap(loop_env) -> None:  # type: ignore[no-untyped-def]
    factory, _, _ = loop_env
    config = RunConfig(
        name="black-hole",
        rounds=1,
        tasks_per_round=2,
        dispatch_timeout_s=0.1,
        max_dispatches=2,
        poll_interval_s=0.02,
    )
    run_loop(factory=factory, dispatcher=LossyDispatcher(drop=10**6), config=config)
    with factory() as session:
        attempts = session.scalars(select(Attempt)).all()
    assert [a.status for a in attempts] == [AttemptStatus.FAILED] * 2
    assert all("no result after 2 dispatches" in (a.error or "") for a in attempts)


def test_stages_are_idempotent(loop_env) -> None:  # type: ignore[no-untyped-def]
    """A redelivered edit or judge batch (same ids again) changes nothing."""
    factory, store, editor = loop_env
    config = RunConfig(name="idem", rounds=1, tasks_per_round=6, poll_interval_s=0.01)
    run_loop(factory=factory, dispatcher=CeleryDispatcher(), config=config)
    with factory() as session:
        ids = list(session.scalars(select(Attempt.id)))
        before = [(a.status, a.output_key, a.verdict) for a in session.scalars(select(Attempt))]
    context_calls = len(editor.calls)
    from workers.context import get_worker_context

    assert edit_attempts(get_worker_context(), ids) == []
    assert judge_attempts(get_worker_context(), ids) == []
    assert len(editor.calls) == context_calls
    with factory() as session:
        after = [(a.status, a.output_key, a.verdict) for a in session.scalars(select(Attempt))]
        assert len(session.scalars(select(Judgment)).all()) == 10
    assert before == after
    assert len(list(store.list("edits/"))) == len({key for _, key, _ in after if key})


def test_training_is_queued_when_the_pool_grew_enough(loop_env) -> None:  # type: ignore[no-untyped-def]
    factory, _, _ = loop_env
    config = RunConfig(
        name="train", rounds=2, tasks_per_round=6, train_min_new_samples=6, poll_interval_s=0.01
    )
    run_loop(factory=factory, dispatcher=CeleryDispatcher(), config=config)
    with factory() as session:
        jobs = session.scalars(select(TrainJob).order_by(TrainJob.id)).all()
    # Each round accepts 6 samples: a job after round 0 (pool 6) and after round 1 (pool 12).
    assert [job.data_filter["pool_size"] for job in jobs] == [6, 12]


class StoppingDispatcher(CeleryDispatcher):
    """Stops the run (as an admin would) when it first sends edits, then sends as usual."""

    def __init__(self, factory: sessionmaker[Session], name: str) -> None:
        self.factory, self.name, self.stopped = factory, name, False

    def send_edit(self, attempt_ids: Sequence[int]) -> None:
        if not self.stopped:
            self.stopped = True
            with self.factory() as session, session.begin():
                session.scalar(select(Run).where(Run.name == self.name)).status = RunStatus.STOPPED
        super().send_edit(attempt_ids)


def test_a_stopped_run_ends_between_passes_and_resumes(loop_env) -> None:  # type: ignore[no-untyped-def]
    factory, _, _ = loop_env
    config = RunConfig(name="halt", rounds=1, tasks_per_round=6, poll_interval_s=0.01)
    with pytest.raises(RunStopped):
        run_loop(factory=factory, dispatcher=StoppingDispatcher(factory, "halt"), config=config)
    with factory() as session:
        assert session.scalar(select(Run.status)) == RunStatus.STOPPED
        assert session.scalar(select(Round.status)) == RoundStatus.EDITING
        statuses = [a.status for a in session.scalars(select(Attempt))]
    # Stopped after the first pass: the reflections it created were never dispatched.
    assert statuses.count(AttemptStatus.PENDING) == 4
    run_loop(factory=factory, dispatcher=CeleryDispatcher(), config=config)
    with factory() as session:
        attempts = session.scalars(select(Attempt)).all()
        assert session.scalar(select(Run.status)) == RunStatus.FINISHED
        assert len(attempts) == 10 and all(a.status == AttemptStatus.JUDGED for a in attempts)
        assert len(session.scalars(select(Judgment)).all()) == 10


class InterruptedDispatcher(CeleryDispatcher):
    """Ctrl-C right after the controller marked the first batches dispatched, before any send."""

    def send_edit(self, attempt_ids: Sequence[int]) -> None:
        raise KeyboardInterrupt


@pytest.mark.timeout(60)
def test_an_interrupted_in_process_run_resumes_without_waiting_out_the_deadline(loop_env) -> None:  # type: ignore[no-untyped-def]
    factory, _, _ = loop_env
    # A 900 s deadline, as by default: only re-dispatching at once lets this finish in time.
    config = RunConfig(name="ctrl-c", rounds=1, tasks_per_round=6, poll_interval_s=0.01)
    with pytest.raises(KeyboardInterrupt):
        run_loop(factory=factory, dispatcher=InterruptedDispatcher(), config=config)
    with factory() as session:
        statuses = {a.status for a in session.scalars(select(Attempt))}
    assert statuses == {AttemptStatus.DISPATCHED}
    run_loop(factory=factory, dispatcher=CeleryDispatcher(), config=config)
    with factory() as session:
        attempts = session.scalars(select(Attempt)).all()
    assert len(attempts) == 10 and all(a.status == AttemptStatus.JUDGED for a in attempts)
    assert {a.dispatch_count for a in attempts if a.depth == 0} == {2}


def test_a_run_with_no_tasks_is_refused_before_its_row_is_written(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    upgrade(url)
    factory = make_session_factory(make_engine(url))
    with pytest.raises(RuntimeError, match="no tasks to edit"):
        run_loop(factory=factory, dispatcher=CeleryDispatcher(), config=RunConfig(name="none"))
    with factory() as session:
        assert session.scalars(select(Run)).all() == []


IDS = list(range(1, 21))


@pytest.mark.parametrize("order", ["random", "fresh", "unsolved"])
def test_draws_depend_on_the_seed_alone(order: str) -> None:
    draw = [draw_tasks(IDS, order=order, seed=3, number=n, count=8, solved=set()) for n in range(3)]
    again = [
        draw_tasks(IDS, order=order, seed=3, number=n, count=8, solved=set()) for n in range(3)
    ]
    other = [
        draw_tasks(IDS, order=order, seed=4, number=n, count=8, solved=set()) for n in range(3)
    ]
    assert draw == again != other
    assert all(len(d) == len(set(d)) == 8 and set(d) <= set(IDS) for d in draw)


def test_fresh_draws_without_replacement_until_every_task_was_drawn() -> None:
    rounds = [
        draw_tasks(IDS, order="fresh", seed=0, number=n, count=6, solved=set()) for n in range(3)
    ]
    drawn = [task for r in rounds for task in r]
    assert len(drawn) == len(set(drawn)) == 18  # 3 rounds of 6 from 20: none twice
    fourth = draw_tasks(IDS, order="fresh", seed=0, number=3, count=6, solved=set())
    assert set(IDS) - set(drawn) <= set(fourth)  # the 2 left come before any task again


def test_unsolved_prefers_tasks_without_an_accepted_sample() -> None:
    solved = set(range(1, 15))
    drawn = draw_tasks(IDS, order="unsolved", seed=0, number=1, count=8, solved=solved)
    assert set(range(15, 21)) <= set(drawn)  # all 6 unsolved, then 2 solved ones
    assert len(set(drawn) & solved) == 2
    with pytest.raises(ValueError, match="task_order='best'"):
        RunConfig(name="x", task_order="best")


def test_runs_with_the_same_seed_edit_the_same_tasks(loop_env) -> None:  # type: ignore[no-untyped-def]
    factory, _, _ = loop_env
    for name in ("arm-a", "arm-b"):
        config = RunConfig(name=name, rounds=2, tasks_per_round=3, task_order="fresh", seed=5,
                           max_reflections=0, poll_interval_s=0.01)  # fmt: skip
        run_loop(factory=factory, dispatcher=CeleryDispatcher(), config=config)
    with factory() as session:
        rows = session.execute(
            select(Run.name, Round.number, Attempt.task_id)
            .join(Round, Round.run_id == Run.id)
            .join(Attempt, Attempt.round_id == Round.id)
        ).all()
    draws = {(name, number): set() for name, number, _ in rows}
    for name, number, task in rows:
        draws[(name, number)].add(task)
    assert draws[("arm-a", 0)] == draws[("arm-b", 0)] and draws[("arm-a", 1)] == draws[("arm-b", 1)]
    assert not draws[("arm-a", 0)] & draws[("arm-a", 1)]  # fresh: 6 tasks, 2 rounds of 3
