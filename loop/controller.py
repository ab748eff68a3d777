"""The round controller: the one place where the loop's control flow lives.

Every decision is read from the database (counts and states of attempts), never from Celery
results: pick tasks → create attempts → dispatch → follow reflections and restarts → re-dispatch
what lapsed → when all is terminal, compute metrics → maybe queue training. Running it again
with the same run name resumes where it stopped and repeats nothing that finished.
"""

import hashlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Protocol

from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from loop.checkpoints import latest_promoted
from loop.metrics import round_metrics, round_records
from store.db import insert_ignore, with_db_retry
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
    utcnow,
)
from store.taxonomy import Verdict

log = logging.getLogger(__name__)
TERMINAL = (AttemptStatus.JUDGED, AttemptStatus.FAILED)
TASK_ORDERS = ("random", "fresh", "unsolved")


@dataclass(frozen=True)
class RunConfig:
    """One run's settings; stored on the run row so that a resumed run keeps them."""

    name: str
    rounds: int = 2  # rounds to run
    samples_per_task: int = 1  # independent samples (seeds) per task and round
    tasks_per_round: int = 8  # tasks drawn (seeded) per round
    max_reflections: int = 2  # extra tries per sample after the first (ReasonEdit: 2)
    batch_size: int = 8  # attempt ids per edit task
    dispatch_timeout_s: float = 900.0  # an attempt not edited+judged by then is re-sent
    max_dispatches: int = 3  # sends per attempt before it ends Failed
    poll_interval_s: float = 0.5  # how often the controller reads the state
    train_min_new_samples: int = 0  # queue a train_job when the pool grew by this (0: never)
    heldout_origin: str = "heldout"  # tasks of this origin are the gate's, never edited in rounds
    seed: int = 0
    task_order: str = "random"  # random | fresh | unsolved (see `draw_tasks`)

    def __post_init__(self) -> None:
        if self.task_order not in TASK_ORDERS:
            raise ValueError(f"task_order={self.task_order!r}: one of {', '.join(TASK_ORDERS)}")


class Dispatcher(Protocol):
    """Sends batches of attempt ids to the workers (Celery in every mode)."""

    # True when the work runs inside this process (Celery's eager mode): then nothing outside
    # the controller can be holding an attempt it finds dispatched.
    in_process: bool

    def send_edit(self, attempt_ids: Sequence[int]) -> None: ...

    def send_judge(self, attempt_ids: Sequence[int]) -> None: ...


def attempt_seed(run_seed: int, round_number: int, task_id: int, sample: int, depth: int) -> int:
    """A stable 31-bit seed per attempt key, so that a re-run edits with the same noise."""
    key = f"{run_seed}:{round_number}:{task_id}:{sample}:{depth}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "big") & 0x7FFFFFFF


class RunStopped(Exception):
    """The run was stopped (by an admin) between two passes; resuming it goes on from there."""


def start_or_resume_run(factory: sessionmaker[Session], config: RunConfig) -> int:
    """The id of the run named `config.name`, created when new; marked running."""
    with factory() as session, session.begin():
        run = session.scalar(select(Run).where(Run.name == config.name))
        if run is None:
            run = Run(name=config.name, config=asdict(config))
            session.add(run)
        elif run.config != asdict(config):
            log.warning("run %s resumes with its stored config %s", config.name, run.config)
        run.status = RunStatus.RUNNING
        session.flush()
        return run.id


def run_loop(
    *,
    factory: sessionmaker[Session],
    dispatcher: Dispatcher,
    config: RunConfig,
    on_round: Callable[[int, dict[str, float]], None] = lambda number, metrics: None,
    retries: int = 5,
) -> int:
    """Drive every round of the run to the end; returns the run id. Raises `RunStopped` when the
    run is stopped meanwhile (its attempts stay as they are: resuming picks them up)."""
    with factory() as session:
        if not pick_tasks(session, config, 0):
            raise RuntimeError("no tasks to edit: ingest some with `editloop ingest PATH` first")
    run_id = start_or_resume_run(factory, config)
    with factory() as session:
        stored = RunConfig(**session.get_one(Run, run_id).config)
    if dispatcher.in_process:
        _release_in_process_attempts(factory, run_id)
    for number in range(stored.rounds):
        round_id, finished = _open_round(factory, run_id, number, stored)
        if finished:
            continue
        metrics = drive_round(factory, dispatcher, round_id, stored, retries=retries)
        on_round(number, metrics)
        _maybe_queue_training(factory, run_id, number, stored)
    with factory() as session, session.begin():
        session.get_one(Run, run_id).status = RunStatus.FINISHED
    return run_id


def _release_in_process_attempts(factory: sessionmaker[Session], run_id: int) -> None:
    """Make the run's attempts left dispatched by an in-process controller that stopped (Ctrl-C,
    a crash) due at once: no worker outside this process can hold them, so waiting out their
    deadline would only idle."""
    with factory() as session, session.begin():
        rounds = select(Round.id).where(Round.run_id == run_id)
        released = session.execute(
            update(Attempt)
            .where(
                Attempt.round_id.in_(rounds),
                Attempt.status.in_((AttemptStatus.DISPATCHED, AttemptStatus.EDITED)),
            )
            .values(dispatch_deadline=utcnow())
        ).rowcount
    if released:
        log.info("re-dispatching %d attempts left in flight by the last run", released)


def _open_round(
    factory: sessionmaker[Session], run_id: int, number: int, config: RunConfig
) -> tuple[int, bool]:
    """Create the round (idempotently) and its first attempts; returns (id, already finished)."""
    with factory() as session, session.begin():
        round_ = session.scalar(select(Round).where(Round.run_id == run_id, Round.number == number))
        if round_ is None:
            current = latest_promoted(session)
            round_ = Round(
                run_id=run_id, number=number, checkpoint_id=current.id if current else None
            )
            session.add(round_)
            session.flush()
        else:
            # Its first attempts were written with it, in one transaction: a resumed round keeps
            # the tasks it drew (a new draw could differ: more tasks, more of them solved).
            return round_.id, round_.status == RoundStatus.FINISHED
        task_ids = pick_tasks(session, config, number, run_id=run_id)
        if not task_ids:
            raise RuntimeError("no tasks to edit: ingest some with `editloop ingest PATH` first")
        tasks = {t.id: t for t in session.scalars(select(Task).where(Task.id.in_(task_ids)))}
        insert_ignore(
            session,
            Attempt,
            [
                {
                    "round_id": round_.id,
                    "task_id": task_id,
                    "sample_index": sample,
                    "depth": 0,
                    "instruction": tasks[task_id].instruction,
                    "input_key": tasks[task_id].source_key,
                    "seed": attempt_seed(config.seed, number, task_id, sample, 0),
                    "checkpoint_id": round_.checkpoint_id,
                    "created_at": utcnow(),
                    "updated_at": utcnow(),
                }
                for task_id in task_ids
                for sample in range(config.samples_per_task)
            ],
            conflict_columns=["round_id", "task_id", "sample_index", "depth"],
        )
        return round_.id, False


def pick_tasks(
    session: Session, config: RunConfig, number: int, *, run_id: int | None = None
) -> list[int]:
    """The task ids round `number` edits, drawn in `config.task_order` (`draw_tasks`) from the
    tasks that are not held out; `unsolved` reads which the run `run_id` solved already."""
    ids = list(
        session.scalars(
            select(Task.id).where(Task.origin != config.heldout_origin).order_by(Task.id)
        )
    )
    solved: set[int] = set()
    if config.task_order == "unsolved" and run_id is not None:
        solved = set(
            session.scalars(
                select(Attempt.task_id)
                .join(Round, Round.id == Attempt.round_id)
                .where(Round.run_id == run_id, Attempt.verdict == Verdict.SUCCESS)
                .distinct()
            )
        )
    return draw_tasks(
        ids,
        order=config.task_order,
        seed=config.seed,
        number=number,
        count=config.tasks_per_round,
        solved=solved,
    )


def draw_tasks(
    ids: Sequence[int], *, order: str, seed: int, number: int, count: int, solved: set[int]
) -> list[int]:
    """`count` of `ids` for round `number`, sorted; seeded by `seed` alone (two runs with the same
    seed draw the same tasks, whatever their names).

    random: a fresh sample each round (tasks repeat across rounds); fresh: without replacement
    across rounds (one seeded permutation after another: no task twice before every task once);
    unsolved: tasks not in `solved` first, then solved ones, each group in seeded order.
    """
    if order not in TASK_ORDERS:
        raise ValueError(f"task_order={order!r}: one of {', '.join(TASK_ORDERS)}")
    ids = sorted(ids)
    count = min(count, len(ids))
    if order == "random":
        return sorted(random.Random(f"{seed}:random:{number}").sample(ids, count))
    if order == "unsolved":
        rng = random.Random(f"{seed}:unsolved:{number}")
        first = [i for i in ids if i not in solved]
        rest = [i for i in ids if i in solved]
        rng.shuffle(first)
        rng.shuffle(rest)
        return sorted((first + rest)[:count])
    # fresh: round n takes places [n * count, (n + 1) * count) of the stream of permutations.
    start, chosen = number * count, []
    while len(chosen) < count:
        epoch, place = divmod(start + len(chosen), len(ids))
        permutation = list(ids)
        random.Random(f"{seed}:fresh:{epoch}").shuffle(permutation)
        chosen += permutation[place : place + count - len(chosen)]
    return sorted(chosen)


def drive_round(
    factory: sessionmaker[Session],
    dispatcher: Dispatcher,
    round_id: int,
    config: RunConfig,
    *,
    retries: int = 5,
) -> dict[str, float]:
    """Advance the round until every attempt is terminal; store and return its metrics. Raises
    `RunStopped` when the run was stopped meanwhile."""
    while True:
        state = with_db_retry(
            lambda: advance_round(factory, dispatcher, round_id, config),
            retries=retries,
            what="advancing the round",
        )
        if state == "finished":
            break
        if with_db_retry(lambda: _stopped(factory, round_id), retries=retries, what="a stop check"):
            raise RunStopped(config.name)
        if state == "waiting":
            time.sleep(config.poll_interval_s)
    return finish_round(factory, round_id)


def _stopped(factory: sessionmaker[Session], round_id: int) -> bool:
    with factory() as session:
        status = session.scalar(
            select(Run.status).join(Round, Round.run_id == Run.id).where(Round.id == round_id)
        )
    return status == RunStatus.STOPPED


def advance_round(
    factory: sessionmaker[Session], dispatcher: Dispatcher, round_id: int, config: RunConfig
) -> str:
    """One pass: follow-ups, dispatch, re-dispatch. Returns `finished`, `progress` or `waiting`."""
    created = _create_follow_ups(factory, round_id, config)
    sent = _dispatch_pending(factory, dispatcher, round_id, config)
    resent = _redispatch_lapsed(factory, dispatcher, round_id, config)
    with factory() as session:
        open_attempts = session.scalar(
            select(func.count())
            .select_from(Attempt)
            .where(Attempt.round_id == round_id, Attempt.status.not_in(TERMINAL))
        )
    if not open_attempts:
        # Work that finished during this pass (inline, when eager) may call for follow-ups.
        if not _create_follow_ups(factory, round_id, config):
            return "finished"
        return "progress"
    return "progress" if created or sent or resent else "waiting"


def _create_follow_ups(factory: sessionmaker[Session], round_id: int, config: RunConfig) -> int:
    """Children of judged, non-successful attempts with tries left (docs/design.md, "Judging and
    reflection": loop semantics).

    `Reflection` edits the parent's output with the revised instruction; `Failed` restarts from
    the source with the original instruction. Every child is still judged against the original.
    """
    child = aliased(Attempt)
    with factory() as session, session.begin():
        rows = session.execute(
            select(Attempt, Judgment, Task, Round.number)
            .join(Judgment, Judgment.attempt_id == Attempt.id)
            .join(Task, Task.id == Attempt.task_id)
            .join(Round, Round.id == Attempt.round_id)
            .outerjoin(child, child.parent_id == Attempt.id)
            .where(
                Attempt.round_id == round_id,
                Attempt.status == AttemptStatus.JUDGED,
                Attempt.verdict != Verdict.SUCCESS,
                Attempt.depth < config.max_reflections,
                child.id.is_(None),
            )
        ).all()
        children = []
        for parent, judgment, task, number in rows:
            reflect = judgment.verdict == Verdict.REFLECTION and judgment.revised_instruction
            depth = parent.depth + 1
            children.append(
                {
                    "round_id": round_id,
                    "task_id": parent.task_id,
                    "sample_index": parent.sample_index,
                    "depth": depth,
                    "parent_id": parent.id,
                    "instruction": judgment.revised_instruction if reflect else task.instruction,
                    "input_key": parent.output_key if reflect else task.source_key,
                    "seed": attempt_seed(
                        config.seed, number, parent.task_id, parent.sample_index, depth
                    ),
                    "checkpoint_id": parent.checkpoint_id,
                    "created_at": utcnow(),
                    "updated_at": utcnow(),
                }
            )
        return insert_ignore(
            session,
            Attempt,
            children,
            conflict_columns=["round_id", "task_id", "sample_index", "depth"],
        )


def _dispatch_pending(
    factory: sessionmaker[Session], dispatcher: Dispatcher, round_id: int, config: RunConfig
) -> int:
    """Mark pending attempts dispatched (with a deadline) and send them in batches.

    The database is written first: if sending fails, the deadline lapses and they are re-sent.
    """
    with factory() as session, session.begin():
        ids = list(
            session.scalars(
                select(Attempt.id)
                .where(Attempt.round_id == round_id, Attempt.status == AttemptStatus.PENDING)
                .order_by(Attempt.id)
                .with_for_update(skip_locked=True)
            )
        )
        if ids:
            session.execute(
                update(Attempt)
                .where(Attempt.id.in_(ids))
                .values(
                    status=AttemptStatus.DISPATCHED,
                    dispatch_count=Attempt.dispatch_count + 1,
                    dispatch_deadline=utcnow() + timedelta(seconds=config.dispatch_timeout_s),
                )
            )
    _send(dispatcher.send_edit, ids, config.batch_size)
    return len(ids)


def _redispatch_lapsed(
    factory: sessionmaker[Session], dispatcher: Dispatcher, round_id: int, config: RunConfig
) -> int:
    """Re-send attempts whose deadline passed without a result; past the cap they end Failed."""
    now = utcnow()
    with factory() as session, session.begin():
        lapsed = session.scalars(
            select(Attempt)
            .where(
                Attempt.round_id == round_id,
                Attempt.status.in_((AttemptStatus.DISPATCHED, AttemptStatus.EDITED)),
                Attempt.dispatch_deadline < now,
            )
            .with_for_update(skip_locked=True)
        ).all()
        to_edit, to_judge = [], []
        for attempt in lapsed:
            if attempt.dispatch_count >= config.max_dispatches:
                attempt.status = AttemptStatus.FAILED
                attempt.verdict = Verdict.FAILED
                attempt.error = (
                    f"no result after {attempt.dispatch_count} dispatches of "
                    f"{config.dispatch_timeout_s:g} s (message lost or worker died)"
                )
                continue
            attempt.dispatch_count += 1
            attempt.dispatch_deadline = now + timedelta(seconds=config.dispatch_timeout_s)
            (to_edit if attempt.status == AttemptStatus.DISPATCHED else to_judge).append(attempt.id)
    if to_edit or to_judge:
        log.warning("re-dispatching %d edits and %d judgments", len(to_edit), len(to_judge))
    _send(dispatcher.send_edit, to_edit, config.batch_size)
    _send(dispatcher.send_judge, to_judge, config.batch_size)
    return len(lapsed)


def _send(send: Callable[[Sequence[int]], None], ids: list[int], batch_size: int) -> None:
    for start in range(0, len(ids), batch_size):
        batch = ids[start : start + batch_size]
        try:
            send(batch)
        except (KombuOperationalError, OSError) as exc:
            # A broker that is down must not stop the controller: the attempts keep their
            # deadline and are re-sent when it lapses. (Other errors, e.g. a model that fails to
            # load in eager mode, are the user's to see at once.)
            log.warning(
                "the broker did not take %d attempts (%s); they are re-sent when their deadline "
                "lapses: is the broker at EDITLOOP_WORKER__BROKER_URL running?",
                len(batch), exc,
            )  # fmt: skip


def finish_round(factory: sessionmaker[Session], round_id: int) -> dict[str, float]:
    """Compute the round's metrics from its rows, store them and mark the round finished."""
    with factory() as session, session.begin():
        round_ = session.get_one(Round, round_id)
        if round_.status == RoundStatus.FINISHED:
            return dict(round_.metrics)
        records = round_records(session, round_id=round_id)
        now = utcnow()
        metrics = round_metrics(records, wall_seconds=(now - round_.started_at).total_seconds())
        round_.metrics = metrics
        round_.status = RoundStatus.FINISHED
        round_.finished_at = now
        return metrics


def _maybe_queue_training(
    factory: sessionmaker[Session], run_id: int, number: int, config: RunConfig
) -> None:
    """Queue a train_job when the accepted pool grew by `train_min_new_samples` since the last."""
    if config.train_min_new_samples <= 0:
        return
    with factory() as session, session.begin():
        pool = accepted_pool_size(session, run_id)
        last = session.scalar(
            select(TrainJob).where(TrainJob.run_id == run_id).order_by(TrainJob.id.desc()).limit(1)
        )
        last_pool = int(last.data_filter.get("pool_size", 0)) if last else 0
        if pool - last_pool >= config.train_min_new_samples:
            _add_train_job(session, run_id, number, pool)


def accepted_pool_size(session: Session, run_id: int) -> int:
    """How many of the run's judged attempts were accepted (`Success`)."""
    return (
        session.scalar(
            select(func.count())
            .select_from(Judgment)
            .join(Attempt, Attempt.id == Judgment.attempt_id)
            .join(Round, Round.id == Attempt.round_id)
            .where(Round.run_id == run_id, Judgment.verdict == Verdict.SUCCESS)
        )
        or 0
    )


def queue_train_job(factory: sessionmaker[Session], run_id: int, *, up_to_round: int) -> int:
    """Queue a training job on the run's pool up to round `up_to_round`; returns its id."""
    with factory() as session, session.begin():
        return _add_train_job(session, run_id, up_to_round, accepted_pool_size(session, run_id))


def _add_train_job(session: Session, run_id: int, up_to_round: int, pool: int) -> int:
    job = TrainJob(
        run_id=run_id,
        data_filter={"run_id": run_id, "up_to_round": up_to_round, "pool_size": pool},
    )
    session.add(job)
    session.flush()
    return job.id
