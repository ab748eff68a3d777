"""The round controller: the one place where the loop's control flow lives.

Every decision is read from the database (counts and states of attempts, the workers'
heartbeats), never from Celery results: pick tasks → create attempts → dispatch, at most
`max_in_flight` batches per live worker → follow reflections and restarts → send again what is
lost (`loop.liveness`) → when all is terminal, compute metrics → maybe queue training → open the
next round, after the training jobs that its pipeline depth waits for. Running it again with the
same run name resumes where it stopped and repeats nothing that finished.
"""

import hashlib
import logging
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Protocol

from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from loop.checkpoints import latest_promoted
from loop.liveness import EDIT_QUEUE, JUDGE_QUEUE, SentAttempt, WorkerState, is_lost, live_workers
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
    TrainJobStatus,
    Worker,
    utcnow,
)
from store.taxonomy import Verdict

log = logging.getLogger(__name__)
TERMINAL = (AttemptStatus.JUDGED, AttemptStatus.FAILED)
IN_FLIGHT = (AttemptStatus.DISPATCHED, AttemptStatus.EDITED)
UNFINISHED_JOBS = (TrainJobStatus.QUEUED, TrainJobStatus.RUNNING)
UNSENT_JUDGE = "edited, judge message to send"
IN_FLIGHT_BATCHES = "batches in flight"
# How often (seconds) the controller reads the heartbeats and the stop flag at most: reading
# them on every pass would cost more than the passes themselves at a short poll interval.
LIVENESS_EVERY_S = 1.0
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
    # Pickup timeout: a sent batch that no worker took while a live one was free this long is
    # lost and sent again (in-process: counted from the send). See `loop.liveness`.
    dispatch_timeout_s: float = 120.0
    max_dispatches: int = 3  # sends per attempt before it ends Failed
    max_in_flight: int = 2  # batches queued or running per live worker (flow control)
    heartbeat_timeout_s: float = 30.0  # a worker silent this long is dead: its batch is resent
    # None: a round never waits for training; 0: round N+1 opens when every training job queued
    # before it ended (sequential); d: while at most d of them run, and batches not yet started
    # switch to each checkpoint promoted meanwhile (staleness <= d checkpoints).
    pipeline_depth: int | None = None
    poll_interval_s: float = 0.5  # how often the controller reads the state
    train_min_new_samples: int = 0  # queue a train_job when the pool grew by this (0: never)
    heldout_origin: str = "heldout"  # tasks of this origin are the gate's, never edited in rounds
    seed: int = 0
    task_order: str = "random"  # random | fresh | unsolved (see `draw_tasks`)

    def __post_init__(self) -> None:
        if self.task_order not in TASK_ORDERS:
            raise ValueError(f"task_order={self.task_order!r}: one of {', '.join(TASK_ORDERS)}")
        if self.pipeline_depth is not None and self.pipeline_depth < 0:
            raise ValueError(f"pipeline_depth={self.pipeline_depth}: 0 (sequential) or more")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight={self.max_in_flight}: at least 1 batch per worker")


class Dispatcher(Protocol):
    """Sends batches of attempt ids to the workers (Celery in every mode)."""

    # True when the work runs inside this process (Celery's eager mode): then nothing outside
    # the controller can be holding an attempt it finds dispatched.
    in_process: bool

    def send_edit(self, attempt_ids: Sequence[int], batch: str) -> None: ...

    def send_judge(self, attempt_ids: Sequence[int], batch: str) -> None: ...


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
        if stored.pipeline_depth is not None and number > 0:
            _wait_for_training(factory, run_id, number, stored, retries=retries)
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
    """Send again at once the run's attempts left in flight by an in-process controller that
    stopped (Ctrl-C, a crash): no worker outside this process can hold them, so waiting out their
    pickup timeout would only idle."""
    with factory() as session, session.begin():
        rounds = select(Round.id).where(Round.run_id == run_id)
        released = session.execute(
            update(Attempt)
            .where(Attempt.round_id.in_(rounds), Attempt.status == AttemptStatus.DISPATCHED)
            .values(status=AttemptStatus.PENDING, batch=None, started_at=None)
        ).rowcount
        released += session.execute(
            update(Attempt)
            .where(Attempt.round_id.in_(rounds), Attempt.status == AttemptStatus.EDITED)
            .values(batch=None, started_at=None)
        ).rowcount
    if released:
        log.info("sending again %d attempts left in flight by the last run", released)


def _wait_for_training(
    factory: sessionmaker[Session], run_id: int, number: int, config: RunConfig, *, retries: int
) -> None:
    """Before round `number` opens: wait until at most `pipeline_depth` of the run's training jobs
    are unfinished (0: all ended, so the round edits with what they promoted). Raises
    `RunStopped` when the run is stopped meanwhile."""

    def state() -> tuple[bool, int, RunStatus | None]:
        with factory() as session:
            opened = session.scalar(
                select(Round.id).where(Round.run_id == run_id, Round.number == number)
            )
            unfinished = session.scalar(
                select(func.count())
                .select_from(TrainJob)
                .where(TrainJob.run_id == run_id, TrainJob.status.in_(UNFINISHED_JOBS))
            )
            return opened is not None, unfinished or 0, session.get_one(Run, run_id).status

    depth = config.pipeline_depth or 0
    told = False
    while True:
        opened, unfinished, status = with_db_retry(
            state, retries=retries, what="reading the training jobs"
        )
        if opened or unfinished <= depth:
            return
        if status == RunStatus.STOPPED:
            raise RunStopped(config.name)
        if not told:
            log.info(
                "round %d waits for %d training job(s) of the run to end (pipeline depth %d): "
                "is `editloop trainer` running?", number, unfinished - depth, depth,
            )  # fmt: skip
            told = True
        time.sleep(config.poll_interval_s)


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
        samples = dict.fromkeys(task_ids, config.samples_per_task)
        insert_first_attempts(session, round_, samples, seed=config.seed)
        return round_.id, False


def insert_first_attempts(
    session: Session, round_: Round, samples: dict[int, int], *, seed: int
) -> None:
    """Write the round's depth-0 attempts: `samples[task_id]` of each task (idempotent), each
    with its own seed (`attempt_seed`)."""
    tasks = {t.id: t for t in session.scalars(select(Task).where(Task.id.in_(samples)))}
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
                "seed": attempt_seed(seed, round_.number, task_id, sample, 0),
                "checkpoint_id": round_.checkpoint_id,
                "created_at": utcnow(),
                "updated_at": utcnow(),
            }
            for task_id, count in samples.items()
            for sample in range(count)
        ],
        conflict_columns=["round_id", "task_id", "sample_index", "depth"],
    )


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


@dataclass
class RoundProgress:
    """What the passes over one round remember, so that a pass that finds nothing new costs one
    query: the judged count follow-ups were created for, the live workers (read at most once a
    second), and when liveness was last checked."""

    judged: int = -1
    checked_at: float = float("-inf")  # time.monotonic() of the last liveness check
    live: int = 0  # live workers at `live_at`
    live_at: float = float("-inf")
    warned_at: float = float("-inf")  # of the last "no live worker" warning

    def live_workers(self, factory: sessionmaker[Session], config: RunConfig) -> int:
        """How many workers are live (cached for `LIVENESS_EVERY_S`)."""
        if time.monotonic() - self.live_at >= LIVENESS_EVERY_S:
            with factory() as session:
                self.live = len(
                    live_workers(
                        _worker_states(session),
                        now=utcnow(),
                        heartbeat_timeout_s=config.heartbeat_timeout_s,
                    )
                )
            self.live_at = time.monotonic()
        return self.live


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
    progress = RoundProgress()
    stop_checked = float("-inf")
    while True:
        state = with_db_retry(
            lambda: advance_round(factory, dispatcher, round_id, config, progress),
            retries=retries,
            what="advancing the round",
        )
        if state == "finished":
            break
        # Read at most once a second, but always after a pass that changed something.
        if state == "progress" or time.monotonic() - stop_checked >= LIVENESS_EVERY_S:
            stop_checked = time.monotonic()
            if with_db_retry(
                lambda: _stopped(factory, round_id), retries=retries, what="a stop check"
            ):
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
    factory: sessionmaker[Session],
    dispatcher: Dispatcher,
    round_id: int,
    config: RunConfig,
    progress: RoundProgress | None = None,
) -> str:
    """One pass: follow-ups, what is lost sent again, dispatch within the flow-control bound.
    Returns `finished`, `progress` or `waiting`."""
    progress = progress if progress is not None else RoundProgress()
    counts = _status_counts(factory, round_id)
    created = recovered = 0
    if counts[AttemptStatus.JUDGED] != progress.judged:
        progress.judged = counts[AttemptStatus.JUDGED]
        created = _create_follow_ups(factory, round_id, config)
    in_flight = counts[AttemptStatus.DISPATCHED] + counts[AttemptStatus.EDITED]
    now = time.monotonic()
    if in_flight and (dispatcher.in_process or now - progress.checked_at >= LIVENESS_EVERY_S):
        progress.checked_at = now
        recovered = _recover_lost(factory, round_id, config, in_process=dispatcher.in_process)
    sent = 0
    if created or recovered or counts[AttemptStatus.PENDING] or counts[UNSENT_JUDGE]:
        if dispatcher.in_process:
            # No bound: a send runs its batch inline, whose verdicts may call for follow-ups.
            sent = _dispatch(factory, dispatcher, round_id, config, capacity=None)
            if sent:
                created += _create_follow_ups(factory, round_id, config)
        else:
            live = progress.live_workers(factory, config)
            free = config.max_in_flight * live - counts[IN_FLIGHT_BATCHES]
            if free > 0:
                sent = _dispatch(factory, dispatcher, round_id, config, capacity=free)
            elif not live:
                _warn_no_worker(round_id, config, progress)
    if not (in_flight or counts[AttemptStatus.PENDING] or created or recovered or sent):
        # Work that finished during this pass (inline, when eager) may call for follow-ups.
        if not _create_follow_ups(factory, round_id, config):
            return "finished"
        return "progress"
    return "progress" if created or sent or recovered else "waiting"


def _status_counts(factory: sessionmaker[Session], round_id: int) -> dict[str, int]:
    """The round's attempts by status; `UNSENT_JUDGE`: edited ones with no judge message;
    `IN_FLIGHT_BATCHES`: the messages its attempts are queued or running in (flow control)."""
    counts: dict[str, int] = dict.fromkeys([*AttemptStatus, UNSENT_JUDGE, IN_FLIGHT_BATCHES], 0)
    with factory() as session:
        for status, n, batched, batches in session.execute(
            select(
                Attempt.status,
                func.count(),
                func.count(Attempt.batch),
                func.count(func.distinct(Attempt.batch)),
            )
            .where(Attempt.round_id == round_id)
            .group_by(Attempt.status)
        ):
            counts[status] = n
            if status == AttemptStatus.EDITED:
                counts[UNSENT_JUDGE] = n - batched
            if status in IN_FLIGHT:
                counts[IN_FLIGHT_BATCHES] += batches
    return counts


def _create_follow_ups(factory: sessionmaker[Session], round_id: int, config: RunConfig) -> int:
    """Children of judged, non-successful attempts with tries left (docs/design.md, "Judging and
    reflection": loop semantics).

    `Reflection` edits the parent's output with the revised instruction; `Failed` restarts from
    the source with the original instruction. Every child is still judged against the original.
    """
    if config.max_reflections <= 0:
        return 0  # no attempt has tries left
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


def _dispatch(
    factory: sessionmaker[Session],
    dispatcher: Dispatcher,
    round_id: int,
    config: RunConfig,
    *,
    capacity: int | None,
) -> int:
    """Send up to `capacity` batches (None: all): first edited attempts whose judge message was
    lost, then pending ones. Returns how many attempts were sent.

    The database is written first (a batch id per message): if a send fails, the batch is never
    picked up and `_recover_lost` sends it again.
    """
    now = utcnow()
    messages: list[tuple[str, str, list[int]]] = []  # (queue, batch, attempt ids)
    with factory() as session, session.begin():
        for status, queue in (
            (AttemptStatus.EDITED, JUDGE_QUEUE),
            (AttemptStatus.PENDING, EDIT_QUEUE),
        ):
            left = None if capacity is None else capacity - len(messages)
            if left == 0:
                break
            query = (
                select(Attempt.id)
                .where(Attempt.round_id == round_id, Attempt.status == status)
                .order_by(Attempt.id)
                .with_for_update(skip_locked=True)
            )
            if status == AttemptStatus.EDITED:
                query = query.where(Attempt.batch.is_(None))
            if left is not None:
                query = query.limit(left * config.batch_size)
            ids = list(session.scalars(query))
            if not ids:
                continue
            batches = {}
            for start in range(0, len(ids), config.batch_size):
                chunk, batch = ids[start : start + config.batch_size], uuid.uuid4().hex[:16]
                batches.update(dict.fromkeys(chunk, batch))
                messages.append((queue, batch, chunk))
            session.execute(  # one statement for every batch of this queue
                update(Attempt)
                .where(Attempt.id.in_(ids), Attempt.status == status)
                .values(
                    status=AttemptStatus.DISPATCHED if queue == EDIT_QUEUE else status,
                    batch=case(batches, value=Attempt.id) if len(ids) > config.batch_size
                    else next(iter(batches.values())),
                    dispatched_at=now,
                    dispatch_deadline=now + timedelta(seconds=config.dispatch_timeout_s),
                    dispatch_count=Attempt.dispatch_count + 1,
                    started_at=None,
                )
            )  # fmt: skip
    for queue, batch, chunk in messages:
        _send(dispatcher.send_edit if queue == EDIT_QUEUE else dispatcher.send_judge, chunk, batch)
    return sum(len(chunk) for _, _, chunk in messages)


def _worker_states(session: Session) -> list[WorkerState]:
    return [
        WorkerState(
            name=w.name,
            queues=tuple(q.strip() for q in w.queues.split(",")),
            beat_at=w.beat_at,
            busy_since=w.busy_since,
            idle_since=w.idle_since,
            stopped_at=w.stopped_at,
            started_at=w.started_at,
        )
        for w in session.execute(
            select(
                Worker.name,
                Worker.queues,
                Worker.beat_at,
                Worker.busy_since,
                Worker.idle_since,
                Worker.stopped_at,
                Worker.started_at,
            )
        )
    ]


def _warn_no_worker(round_id: int, config: RunConfig, progress: RoundProgress) -> None:
    """Say (once a minute) that attempts wait because no worker is live."""
    if time.monotonic() - progress.warned_at < 60:
        return
    progress.warned_at = time.monotonic()
    log.warning(
        "round %d: no live worker (none beat within %g s); attempts wait: start one with "
        "`editloop worker` (`editloop workers` lists them)",
        round_id, config.heartbeat_timeout_s,
    )  # fmt: skip


def _recover_lost(
    factory: sessionmaker[Session], round_id: int, config: RunConfig, *, in_process: bool
) -> int:
    """Make the round's lost attempts (`loop.liveness.is_lost`) due again: an edit goes back to
    pending, an edited attempt waits for a new judge message; past `max_dispatches` sends it ends
    Failed. Each update is guarded by what was read (status, batch, start), so a worker that
    finished meanwhile keeps its result. Returns how many were recovered or failed."""
    now = utcnow()
    with factory() as session, session.begin():
        rows = session.execute(
            select(
                Attempt.id, Attempt.status, Attempt.batch, Attempt.dispatched_at, Attempt.worker,
                Attempt.started_at, Attempt.dispatch_count,
            ).where(
                Attempt.round_id == round_id,
                Attempt.status.in_(IN_FLIGHT),
                (Attempt.status == AttemptStatus.DISPATCHED) | Attempt.batch.is_not(None),
            )
        ).all()  # fmt: skip
        workers = {} if in_process else {w.name: w for w in _worker_states(session)}
        lost = [
            row
            for row in rows
            if is_lost(
                SentAttempt(
                    queue=EDIT_QUEUE if row.status == AttemptStatus.DISPATCHED else JUDGE_QUEUE,
                    batch=row.batch,
                    dispatched_at=row.dispatched_at,
                    worker=row.worker,
                    started_at=row.started_at,
                ),
                workers,
                now=now,
                heartbeat_timeout_s=config.heartbeat_timeout_s,
                pickup_timeout_s=config.dispatch_timeout_s,
                in_process=in_process,
            )
        ]
        groups: dict[tuple[object, ...], list[int]] = defaultdict(list)
        for row in lost:
            spent = row.dispatch_count >= config.max_dispatches
            groups[(row.status, row.batch, row.started_at, spent)].append(row.id)
        changed = 0
        for (status, batch, started_at, spent), ids in groups.items():
            values: dict[str, object] = {"batch": None, "started_at": None}
            if spent:
                values |= {
                    "status": AttemptStatus.FAILED,
                    "verdict": Verdict.FAILED,
                    "error": f"no result after {config.max_dispatches} dispatches (message lost "
                    "or worker died each time; `editloop workers` shows their heartbeats)",
                }
            elif status == AttemptStatus.DISPATCHED:
                values["status"] = AttemptStatus.PENDING
            changed += session.execute(
                update(Attempt)
                .where(
                    Attempt.id.in_(ids),
                    Attempt.status == status,
                    Attempt.batch.is_(None) if batch is None else Attempt.batch == batch,
                    Attempt.started_at.is_(None)
                    if started_at is None
                    else Attempt.started_at == started_at,
                )
                .values(**values)
            ).rowcount
    if changed:
        log.warning("%d attempts of round %d were lost (a worker died, or a message was): "
                    "sending them again", changed, round_id)  # fmt: skip
    return changed


def _send(send: Callable[[Sequence[int], str], None], ids: list[int], batch: str) -> None:
    try:
        send(ids, batch)
    except (KombuOperationalError, OSError) as exc:
        # A broker that is down must not stop the controller: the batch is never picked up, and
        # is sent again once a free worker did not receive it for the pickup timeout. (Other
        # errors, e.g. a model that fails to load in eager mode, are the user's to see at once.)
        log.warning(
            "the broker did not take a batch of %d attempts (%s); it is sent again later: is the "
            "broker at EDITLOOP_WORKER__BROKER_URL running?", len(ids), exc,
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
