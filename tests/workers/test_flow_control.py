"""Flow control and liveness with real worker processes (editloop's worker code over Redis,
PostgreSQL and S3) whose simulated GPUs take set times (tests/fixtures/simulated.py).

Each test observes what it is about: the broker's queue length during the run, a worker killed
while it held a batch, a worker that stayed slower than the heartbeat timeout. With
`FAULT_INJECTION=off` no worker is killed and the kill test fails on its observation.
"""

import time
from datetime import timedelta

import pytest
from redis import Redis
from sqlalchemy import select

from store.models import Attempt, AttemptStatus, Round, Worker
from tests.fixtures.workers import LoopSetup
from tests.workers.test_faults import in_background, inject, join_ok, started_by, wait_until

REDIS_URL = "redis://127.0.0.1:6379/8"

pytestmark = [pytest.mark.services, pytest.mark.slow]


def _attempts(setup: LoopSetup) -> list[Attempt]:
    with setup.factory() as session:
        return list(session.scalars(select(Attempt).order_by(Attempt.id)))


def test_slow_batches_finish_once_and_the_broker_holds_at_most_the_bound(
    moto_endpoint: str, loop_setup_factory
) -> None:  # type: ignore[no-untyped-def]
    setup = loop_setup_factory(moto_endpoint, REDIS_URL)
    setup.simulated_worker("slow", edit_s=0.25).wait_for("ready.")  # 2 s a batch of 8
    # 64 attempts in 8 batches: 16 s of editing behind one worker, with a 5 s pickup timeout
    # (dispatching all at once with 5 s deadlines ended most of them Failed).
    config = setup.config("flow", tasks_per_round=4, samples_per_task=16, max_reflections=0,
                          batch_size=8, dispatch_timeout_s=5.0, max_in_flight=2)  # fmt: skip
    queue = Redis.from_url(REDIS_URL)
    lengths: list[int] = []
    controller = in_background(lambda: setup.run(config))
    while controller.is_alive():
        lengths.append(queue.llen("edit") + queue.llen("judge"))
        time.sleep(0.02)
    join_ok(controller)
    setup.assert_exactly_once(chains=64, max_depth=0)
    attempts = _attempts(setup)
    assert len(attempts) == 64
    assert {(a.status, a.dispatch_count) for a in attempts} == {(AttemptStatus.JUDGED, 1)}
    # The broker held batches, never more than max_in_flight x 1 live worker.
    assert 0 < max(lengths) <= 2
    with setup.factory() as session:
        round_ = session.scalars(select(Round)).one()
    # The test means something: the round outlasted three pickup timeouts end to end.
    assert (round_.finished_at - round_.started_at).total_seconds() > 3 * 5.0


def test_a_killed_worker_is_resent_after_its_heartbeat_lapses_and_a_slow_one_never(
    moto_endpoint: str, loop_setup_factory
) -> None:  # type: ignore[no-untyped-def]
    # Redis would redeliver the killed worker's message after its visibility timeout: make that
    # an hour, so that only the heartbeat can bring the batch back.
    setup = loop_setup_factory(
        moto_endpoint, REDIS_URL, EDITLOOP_WORKER__VISIBILITY_TIMEOUT_S="3600"
    )
    doomed = setup.simulated_worker("doomed", edit_s=30)  # a batch outlasts the test
    doomed.wait_for("ready.")
    heartbeat_timeout = 3.0
    config = setup.config("heartbeat", tasks_per_round=4, max_reflections=0, batch_size=2,
                          heartbeat_timeout_s=heartbeat_timeout)  # fmt: skip
    controller = in_background(lambda: setup.run(config))
    wait_until(lambda: bool(started_by(setup, "doomed@")))  # it took a batch and began it
    held = started_by(setup, "doomed@")
    # 2 s an image, 4 s a batch: every batch of this worker outlasts the heartbeat timeout.
    setup.simulated_worker("slow", edit_s=2.0).wait_for("ready.")
    inject(doomed.kill)
    join_ok(controller)
    setup.assert_exactly_once(chains=4, max_depth=0)
    with setup.factory() as session:
        last_beat = session.scalars(select(Worker.beat_at).where(Worker.name.startswith("doomed@")))
        last_beat = last_beat.one()
    attempts = _attempts(setup)
    resent = [a for a in attempts if a.id in held]
    assert resent and {a.dispatch_count for a in resent} == {2}
    # Sent again once its heartbeat had lapsed (not at a fixed deadline: the pickup timeout is
    # 60 s here, and the run ended well before it).
    lapse = last_beat + timedelta(seconds=heartbeat_timeout)
    assert all(a.dispatched_at is not None and a.dispatched_at >= lapse for a in resent)
    # The slow but alive worker did everything else, and none of it was ever sent twice.
    others = [a for a in attempts if a.id not in held]
    assert others and {a.dispatch_count for a in others} == {1}
    assert all((a.worker or "").startswith("slow@") for a in attempts)


def test_the_watchdog_ends_a_worker_past_its_time_limit_and_its_batch_is_resent(
    moto_endpoint: str, loop_setup_factory
) -> None:  # type: ignore[no-untyped-def]
    setup = loop_setup_factory(
        moto_endpoint, REDIS_URL, EDITLOOP_WORKER__VISIBILITY_TIMEOUT_S="3600"
    )
    stuck = setup.simulated_worker(
        "stuck",
        edit_s=30,
        EDITLOOP_WORKER__TIME_LIMIT_S="2",
        EDITLOOP_WORKER__SOFT_TIME_LIMIT_S="1",
    )
    stuck.wait_for("ready.")
    config = setup.config("watchdog", tasks_per_round=2, max_reflections=0, batch_size=2)
    controller = in_background(lambda: setup.run(config))
    wait_until(lambda: stuck.process.poll() is not None, timeout=60)
    assert stuck.process.returncode == 70
    assert "watchdog: task editloop.edit_batch has run" in stuck.text()
    setup.simulated_worker("rescue", edit_s=0).wait_for("ready.")
    join_ok(controller)
    setup.assert_exactly_once(chains=2, max_depth=0)
    assert {a.dispatch_count for a in _attempts(setup)} == {2}
