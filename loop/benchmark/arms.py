"""What some arms do beyond their settings: the oracle's editor, the fallible judge, and best-of-k's
editing budget matched, round by round, to the hindsight arm's editor calls.

best-of-k edits every task of a round with k independent one-step samples, where k is the mean
number of editor calls per task the hindsight arm made in the same round (same tasks, same seed).
k is rarely whole: the budget B is spread over the T tasks as evenly as it goes (B // T samples
each, one more for B % T of them, chosen by a seeded draw), so that best-of-k makes exactly B
editor calls. The controller takes a round's first attempts as they are when the round already
exists (a resumed round keeps its draw), so the benchmark opens these rounds itself, with the
controller's own draw and attempt seeds, and the controller drives them.
"""

import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from loop.checkpoints import latest_promoted
from loop.controller import RunConfig, insert_first_attempts, pick_tasks
from policies.types import EditRequest, EditResult
from rewards.shapes_judge import JudgeNoise, ShapesReflector, ShapesScorer
from rewards.types import Reflector, Scorer
from store.db import make_engine, make_session_factory, sqlite_url
from store.models import Attempt, Round, RoundStatus, Run
from worlds.shapes.language import parse_instruction
from worlds.shapes.operations import apply_operations
from worlds.shapes.pixels import recover_scene, render_scene

ENDED_MARKER = ".ended"  # written into an arm's folder when its process is done with it


class OracleEditor:
    """An `Editor` whose edit is the exact target (the source scene with the instruction's
    operations applied): the oracle arm trains on the ground truth of the tasks it is given."""

    version = "oracle"

    def edit(self, requests: Sequence[EditRequest]) -> list[EditResult]:
        """The target of each request; a request outside the shapes world fails alone."""
        results = []
        for request in requests:
            started = time.perf_counter()
            try:
                scene = recover_scene(request.image)
                target = apply_operations(scene, parse_instruction(request.instruction, scene))
            except ValueError as exc:
                results.append(EditResult(None, str(exc), request.seed, self.version, 0.0))
                continue
            image = render_scene(target, request.image.width)
            seconds = time.perf_counter() - started
            results.append(EditResult(image, None, request.seed, self.version, seconds))
        return results


def noisy_judges(noise: JudgeNoise) -> Callable[[], tuple[Scorer, Reflector | None]]:
    """A judge loader for the worker context: the shapes judges, fallible as `noise` says."""
    return lambda: (ShapesScorer(noise=noise), ShapesReflector(noise=noise))


# ---- best-of-k: the hindsight arm's budget ---------------------------------------------------


def spread_budget(
    task_ids: Sequence[int], budget: int, *, seed: int, number: int
) -> dict[int, int]:
    """Samples per task adding up to `budget`: `budget // T` each, one more for `budget % T` tasks
    drawn with a seeded shuffle (the same for the same seed and round)."""
    ids = sorted(task_ids)
    if not ids or budget < len(ids):
        raise ValueError(f"budget={budget} for {len(ids)} tasks: at least one sample per task")
    base, extra = divmod(budget, len(ids))
    order = list(ids)
    random.Random(f"{seed}:budget:{number}").shuffle(order)
    more = set(order[:extra])
    return {task_id: base + (task_id in more) for task_id in ids}


def round_calls(
    factory: sessionmaker[Session], run_name: str, number: int
) -> tuple[int, int] | None:
    """(editor calls, tasks) of round `number` of the run named `run_name` once it finished, else
    None: every attempt is one editor call; tasks are the round's distinct tasks."""
    with factory() as session:
        round_ = session.scalar(
            select(Round)
            .join(Run, Run.id == Round.run_id)
            .where(Run.name == run_name, Round.number == number)
        )
        if round_ is None or round_.status != RoundStatus.FINISHED:
            return None
        task_ids = list(
            session.scalars(select(Attempt.task_id).where(Attempt.round_id == round_.id))
        )
    return len(task_ids), len(set(task_ids))


def wait_for_calls(
    arm_dir: Path, run_name: str, number: int, *, poll_s: float = 1.0
) -> tuple[int, int]:
    """Wait until the arm in `arm_dir` finished round `number`; its (editor calls, tasks).
    RuntimeError if that arm ended without it (it failed: best-of-k has no budget to match)."""
    database = arm_dir / "editloop.db"
    factory = None
    while True:
        ended = (arm_dir / ENDED_MARKER).is_file()  # read first: its rounds are all written then
        if factory is None and database.is_file():
            factory = make_session_factory(make_engine(sqlite_url(database)))
        if factory is not None:
            try:
                calls = round_calls(factory, run_name, number)
            except Exception:  # noqa: BLE001 - its schema may not exist yet
                calls = None
            if calls is not None:
                return calls
        if ended:
            raise RuntimeError(
                f"{arm_dir.name} ended without finishing round {number}: best-of-k has no budget "
                "to match (see that arm's failure)"
            )
        time.sleep(poll_s)


def open_round_with_samples(
    factory: sessionmaker[Session], run_id: int, number: int, config: RunConfig, budget: int
) -> dict[int, int]:
    """Open round `number` of the run with `budget` one-step samples over the controller's draw
    (`spread_budget`), as the controller opens a round; an existing round is left as it is.
    Returns the samples per task."""
    with factory() as session, session.begin():
        existing = session.scalar(
            select(Round).where(Round.run_id == run_id, Round.number == number)
        )
        if existing is not None:
            counts: dict[int, int] = {}
            for task_id in session.scalars(
                select(Attempt.task_id).where(Attempt.round_id == existing.id, Attempt.depth == 0)
            ):
                counts[task_id] = counts.get(task_id, 0) + 1
            return counts
        task_ids = pick_tasks(session, config, number, run_id=run_id)
        samples = spread_budget(task_ids, budget, seed=config.seed, number=number)
        current = latest_promoted(session)
        round_ = Round(run_id=run_id, number=number, checkpoint_id=current.id if current else None)
        session.add(round_)
        session.flush()
        insert_first_attempts(session, round_, samples, seed=config.seed)
        return samples
