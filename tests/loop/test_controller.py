"""The controller and the worker stages, eager (in-process), on SQLite + local folder.

The shapes world's exact judges and a scripted editor that does only the first operation of an
instruction make every outcome predictable: a single-operation task succeeds at depth 0; a
compound task is half done at depth 0 (Reflection: the rule reflector asks for the missing
operation), and the child, editing the parent's output, completes it (Success at depth 1).
"""

import threading
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from loop.controller import (
    UNFINISHED_JOBS,
    RoundProgress,
    RunConfig,
    RunStopped,
    _open_round,
    advance_round,
    draw_tasks,
    run_loop,
    start_or_resume_run,
)
from loop.gc import referenced_keys
from loop.training.lease import claim_job
from migrations import upgrade
from policies.types import EditRequest, EditResult
from store.db import make_engine, make_session_factory
from store.models import (
    Attempt,
    AttemptStatus,
    Checkpoint,
    CheckpointStatus,
    Judgment,
    Round,
    RoundStatus,
    Run,
    RunStatus,
    Task,
    TrainJob,
    TrainJobStatus,
    Worker,
    utcnow,
)
from store.taxonomy import Verdict
from tests.fixtures.loop import FirstOperationEditor, shapes_judges
from workers.context import ModelCache, WorkerContext, set_worker_context
from workers.dispatch import CeleryDispatcher
from workers.heartbeat import Presence
from workers.stages import edit_attempts, judge_attempts
from worlds.shapes.language import parse_instruction
from worlds.shapes.operations import apply_operation
from worlds.shapes.pixels import recover_scene, render_scene


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

    def send_edit(self, attempt_ids: Sequence[int], batch: str) -> None:
        if self.drop > 0:
            self.drop -= 1
            return
        super().send_edit(attempt_ids, batch)


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

    def send_edit(self, attempt_ids: Sequence[int], batch: str) -> None:
        if not self.stopped:
            self.stopped = True
            with self.factory() as session, session.begin():
                session.scalar(select(Run).where(Run.name == self.name)).status = RunStatus.STOPPED
        super().send_edit(attempt_ids, batch)


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

    def send_edit(self, attempt_ids: Sequence[int], batch: str) -> None:
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


# ---- flow control and liveness (a broker that only queues; worker rows written as workers do)


class QueueDispatcher:
    """A broker that only queues: it records each message; nothing runs until the test runs it."""

    in_process = False

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[int], str]] = []  # (queue, attempt ids, batch)

    def send_edit(self, attempt_ids: Sequence[int], batch: str) -> None:
        self.sent.append(("edit", list(attempt_ids), batch))

    def send_judge(self, attempt_ids: Sequence[int], batch: str) -> None:
        self.sent.append(("judge", list(attempt_ids), batch))


def _live_worker(factory: sessionmaker[Session], name: str) -> Presence:
    presence = Presence(factory, name=name, queues="edit,judge", interval_s=3600)
    presence.start()
    presence.idle(first=True)
    return presence


def _worker_context(loop_env, name: str) -> WorkerContext:  # type: ignore[no-untyped-def]
    """What the worker named `name` runs the stages with (loop_env's editor and judges)."""
    factory, store, editor = loop_env
    models = ModelCache(load_editor=lambda old, checkpoint: editor, load_judges=shapes_judges)
    return WorkerContext(session_factory=factory, store=store, models=models, worker_name=name)


def test_flow_control_keeps_at_most_max_in_flight_batches_per_live_worker(loop_env) -> None:  # type: ignore[no-untyped-def]
    factory, _, _ = loop_env
    config = RunConfig(name="flow", rounds=1, tasks_per_round=6, batch_size=2, max_in_flight=1)
    run_id = start_or_resume_run(factory, config)
    round_id, _ = _open_round(factory, run_id, 0, config)
    broker = QueueDispatcher()
    progress = RoundProgress()
    assert advance_round(factory, broker, round_id, config, progress) == "waiting"
    assert broker.sent == []  # no live worker: nothing goes to the broker
    first = _live_worker(factory, "w1@h")
    progress.live_at = float("-inf")
    advance_round(factory, broker, round_id, config, progress)
    assert [len(ids) for _, ids, _ in broker.sent] == [2]  # 1 live worker x 1 batch
    advance_round(factory, broker, round_id, config, progress)
    assert len(broker.sent) == 1  # still in flight: nothing more
    _live_worker(factory, "w2@h")
    progress.live_at = float("-inf")  # (live workers are read once a second)
    advance_round(factory, broker, round_id, config, progress)
    assert len(broker.sent) == 2  # a second worker: one more batch
    # The first batch is edited and judged: its slot frees up and the last batch goes out.
    context = _worker_context(loop_env, "w1@h")
    _, ids, batch = broker.sent[0]
    assert edit_attempts(context, ids, batch) == ids
    assert judge_attempts(context, ids, batch) == ids
    advance_round(factory, broker, round_id, config, progress)
    assert len(broker.sent) == 3
    with factory() as session:  # only the follow-ups of the judged batch wait for a slot
        waiting = session.scalars(select(Attempt).where(Attempt.status == AttemptStatus.PENDING))
        assert {(a.depth, a.parent_id in ids) for a in waiting} == {(1, True)}
    with factory() as session:
        sent = session.scalars(select(Attempt).where(Attempt.status != AttemptStatus.PENDING))
        assert {a.dispatch_count for a in sent} == {1}
    first.stop()  # a stopped worker counts no more: 2 batches in flight, 1 allowed
    progress.live_at = float("-inf")
    assert advance_round(factory, broker, round_id, config, progress) == "waiting"
    assert len(broker.sent) == 3 and progress.live == 1


def test_a_dead_workers_batch_is_sent_again_and_its_stale_message_changes_nothing(
    loop_env,
) -> None:  # type: ignore[no-untyped-def]
    factory = loop_env[0]
    config = RunConfig(name="dead", rounds=1, tasks_per_round=2, batch_size=2,
                       heartbeat_timeout_s=30, max_reflections=0)  # fmt: skip
    run_id = start_or_resume_run(factory, config)
    round_id, _ = _open_round(factory, run_id, 0, config)
    broker, progress = QueueDispatcher(), RoundProgress()
    _live_worker(factory, "doomed@h").busy("editloop.edit_batch")
    advance_round(factory, broker, round_id, config, progress)
    (_, ids, old_batch), = broker.sent  # fmt: skip
    with factory() as session, session.begin():  # the worker marks the batch started, then dies
        for attempt in session.scalars(select(Attempt)):
            attempt.worker, attempt.started_at = "doomed@h", utcnow()
    progress.checked_at = float("-inf")
    advance_round(factory, broker, round_id, config, progress)
    assert len(broker.sent) == 1  # alive and busy with it: left alone
    with factory() as session, session.begin():  # its heartbeat lapses
        session.scalars(select(Worker)).one().beat_at = utcnow() - timedelta(seconds=31)
    _live_worker(factory, "survivor@h")
    progress.checked_at = progress.live_at = float("-inf")
    advance_round(factory, broker, round_id, config, progress)
    (_, again, new_batch) = broker.sent[1]
    assert again == ids and new_batch != old_batch
    with factory() as session:
        assert {a.dispatch_count for a in session.scalars(select(Attempt))} == {2}
    context = _worker_context(loop_env, "late@h")
    # The dead worker's message, redelivered late, acts on nothing; the new one does the work.
    assert edit_attempts(context, ids, old_batch) == []
    assert edit_attempts(context, ids, new_batch) == ids


# ---- pipelined rounds (the shapes world; a scripted trainer in a thread, real job rows)


class EveryOperationEditor(FirstOperationEditor):
    """What training teaches in this test: every operation of an instruction, not the first."""

    version = "scripted-every-op"

    def edit(self, requests: Sequence[EditRequest]) -> list[EditResult]:
        results = []
        for request in requests:
            scene = recover_scene(request.image)
            for operation in parse_instruction(request.instruction, scene):
                scene = apply_operation(scene, operation)
            image = render_scene(scene, request.image.width)
            results.append(EditResult(image, None, request.seed, self.version, 0.0))
        return results


class ScriptedTrainer:
    """Claims the run's training jobs (the lease protocol) and ends each with a promoted
    checkpoint: at once, or (`hold`) only when `release(job)` says so, as a long job would."""

    def __init__(self, factory: sessionmaker[Session], *, hold: bool) -> None:
        self.factory, self.hold = factory, hold
        self.claimed: set[int] = set()
        self.released: set[int] = set()
        self.promoted: dict[int, int] = {}  # job -> checkpoint
        self.changed = threading.Condition()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "ScriptedTrainer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        with self.changed:
            self.changed.notify_all()
        self.thread.join(10)

    def wait_for(self, condition, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
        with self.changed:
            assert self.changed.wait_for(condition, timeout), "the trainer did not get there"

    def release(self, job_id: int) -> None:
        """Let a held job end (its checkpoint promoted); return once it has."""
        self.wait_for(lambda: job_id in self.claimed)
        with self.changed:
            self.released.add(job_id)
            self.changed.notify_all()
        self.wait_for(lambda: job_id in self.promoted)

    def _run(self) -> None:
        while not self.stop.is_set():
            job_id = claim_job(self.factory, owner="scripted", lease_s=600, max_claims=3)
            if job_id is None:
                self.stop.wait(0.02)
                continue
            with self.changed:
                self.claimed.add(job_id)
                self.changed.notify_all()
                if self.hold:
                    self.changed.wait_for(
                        lambda: job_id in self.released or self.stop.is_set()  # noqa: B023
                    )
            if self.stop.is_set():
                return
            with self.factory() as session, session.begin():
                checkpoint = Checkpoint(version=f"trained-{job_id}", kind="full",
                                        status=CheckpointStatus.PROMOTED)  # fmt: skip
                session.add(checkpoint)
                session.flush()
                job = session.get_one(TrainJob, job_id)
                job.status, job.checkpoint_id = TrainJobStatus.FINISHED, checkpoint.id
            with self.changed:
                self.promoted[job_id] = checkpoint.id
                self.changed.notify_all()


def _pipelined_run(loop_env, depth: int) -> tuple[ScriptedTrainer, list[tuple[int, int]]]:  # type: ignore[no-untyped-def]
    """Three rounds with a job after each; returns the trainer and (job, round) pairs of every
    edit made while a job queued by an earlier round was still training."""
    factory, store, first = loop_env
    trained = EveryOperationEditor()
    overlaps: list[tuple[int, int]] = []
    trainer = ScriptedTrainer(factory, hold=depth > 0)

    def before_edit() -> None:
        with factory() as session:
            editing = session.scalar(
                select(Round.number)
                .join(Attempt, Attempt.round_id == Round.id)
                .where(Attempt.status == AttemptStatus.DISPATCHED, Attempt.started_at.is_not(None))
                .limit(1)
            )
            training = session.scalars(
                select(TrainJob).where(TrainJob.status.in_(UNFINISHED_JOBS))
            ).all()
        for job in training:
            if job.data_filter["up_to_round"] < editing and job.id not in trainer.released:
                overlaps.append((job.id, editing))
                trainer.release(job.id)  # it ends while this batch edits: a mid-round promotion

    class Hooked:
        def __init__(self, editor: FirstOperationEditor) -> None:
            self.editor = editor

        def edit(self, requests: Sequence[EditRequest]) -> list[EditResult]:
            before_edit()
            return self.editor.edit(requests)

    models = ModelCache(
        load_editor=lambda old, checkpoint: Hooked(trained if checkpoint else first),
        load_judges=shapes_judges,
    )
    set_worker_context(WorkerContext(session_factory=factory, store=store, models=models))
    config = RunConfig(name=f"pipeline-{depth}", rounds=3, tasks_per_round=6, batch_size=2,
                       max_reflections=1, train_min_new_samples=1, pipeline_depth=depth,
                       poll_interval_s=0.01)  # fmt: skip
    with trainer:
        run_loop(factory=factory, dispatcher=CeleryDispatcher(), config=config)
    return trainer, overlaps


def _rounds(factory: sessionmaker[Session]) -> list[tuple[Round, list[Attempt]]]:
    with factory() as session:
        rounds = session.scalars(select(Round).order_by(Round.number)).all()
        return [
            (r, session.scalars(select(Attempt).where(Attempt.round_id == r.id)
                                .order_by(Attempt.id)).all())
            for r in rounds
        ]  # fmt: skip


def test_pipelined_rounds_edit_while_the_previous_round_trains(loop_env) -> None:  # type: ignore[no-untyped-def]
    trainer, overlaps = _pipelined_run(loop_env, depth=1)
    c1, c2 = trainer.promoted[1], trainer.promoted[2]
    # Round N+1 edited while round N's job trained (the job ended during round N+1's first batch).
    assert overlaps == [(1, 1), (2, 2)]
    (zero, r0), (one, r1), (two, r2) = _rounds(loop_env[0])
    assert (zero.checkpoint_id, one.checkpoint_id, two.checkpoint_id) == (None, None, c1)
    # Every attempt records the checkpoint it edited with; the promotion switched later batches.
    assert all(a.staleness is not None for a in r0 + r1 + r2)
    assert [(a.checkpoint_id, a.staleness) for a in r1[:2]] == [(None, 1), (None, 1)]
    assert {(a.checkpoint_id, a.staleness) for a in r1[2:]} == {(c1, 0)}
    assert [(a.checkpoint_id, a.staleness) for a in r2[:2]] == [(c1, 1), (c1, 1)]
    assert {(a.checkpoint_id, a.staleness) for a in r2[2:]} == {(c2, 0)}
    # Staleness stays within the bound, and the metrics say so.
    assert max(a.staleness for a in r0 + r1 + r2) == 1
    assert [r.metrics["staleness/max"] for r in (zero, one, two)] == [0, 1, 1]
    assert [r.metrics["checkpoints/used"] for r in (zero, one, two)] == [1, 2, 2]
    # Results still improve: the trained editor does compound edits in one step.
    success_at_once = [r.metrics["chains/success_after_0"] for r in (zero, one, two)]
    assert success_at_once[0] == pytest.approx(2 / 6) and success_at_once[2] == 1.0


def test_sequential_rounds_wait_for_training_and_edit_with_its_checkpoint(loop_env) -> None:  # type: ignore[no-untyped-def]
    trainer, overlaps = _pipelined_run(loop_env, depth=0)
    c1, c2 = trainer.promoted[1], trainer.promoted[2]
    assert overlaps == []  # nothing edited while a job trained
    (zero, r0), (one, r1), (two, r2) = _rounds(loop_env[0])
    assert (one.checkpoint_id, two.checkpoint_id) == (c1, c2)
    assert {a.checkpoint_id for a in r1} == {c1} and {a.checkpoint_id for a in r2} == {c2}
    assert {a.staleness for a in r0 + r1 + r2} == {0}
    with loop_env[0]() as session:
        ended = {j.id: j.updated_at for j in session.scalars(select(TrainJob))}
    assert one.started_at >= ended[1] and two.started_at >= ended[2]
    assert two.metrics["chains/success_after_0"] == 1.0
