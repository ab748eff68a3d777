"""Fault tests: whatever breaks, every attempt ends exactly once and the store holds exactly
the objects the rows reference (docs/design.md, invariants 1 and 2).

Each test also observes its fault: that it took effect (a killed worker had started a batch,
messages were queued when the broker died, requests failed and were retried while the store was
down, the controller died mid-round) and what recovered from it. With `FAULT_INJECTION=off` in
the environment no fault is injected, and every test here fails on its observation: the check
that the tests test something.
"""

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import func, select

from store.models import Attempt, AttemptStatus, Round, RoundStatus
from tests.fixtures.services import TcpProxy, free_port
from tests.fixtures.workers import EDITLOOP, LoopSetup

REDIS_URL = "redis://127.0.0.1:6379/8"
FAULTS_ON = os.environ.get("FAULT_INJECTION", "on") != "off"

pytestmark = [pytest.mark.services, pytest.mark.slow]


def in_background(fn) -> threading.Thread:  # type: ignore[no-untyped-def]
    """Run `fn` in a thread; its exception is re-raised by `join_ok`."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.errors = errors  # type: ignore[attr-defined]
    thread.start()
    return thread


def join_ok(thread: threading.Thread, timeout: float = 300) -> None:
    thread.join(timeout)
    assert not thread.is_alive(), "the controller did not finish"
    if thread.errors:  # type: ignore[attr-defined]
        raise thread.errors[0]  # type: ignore[attr-defined]


def inject(fault) -> None:  # type: ignore[no-untyped-def]
    """Cause `fault` (a kill, an outage), unless fault injection is turned off."""
    if FAULTS_ON:
        fault()


def started_by(setup: LoopSetup, worker: str) -> set[int]:
    """The ids of the attempts the worker named `worker` last started."""
    with setup.factory() as session:
        return set(session.scalars(select(Attempt.id).where(Attempt.worker.startswith(worker))))


def count_attempts(setup: LoopSetup, *statuses: AttemptStatus) -> int:
    with setup.factory() as session:
        query = select(func.count()).select_from(Attempt)
        if statuses:
            query = query.where(Attempt.status.in_(statuses))
        return session.scalar(query) or 0


def wait_until(condition, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_worker_killed_mid_edit_batch(moto_endpoint: str, loop_setup_factory) -> None:  # type: ignore[no-untyped-def]
    setup = loop_setup_factory(moto_endpoint, REDIS_URL)
    # The doomed worker edits slowly (200 steps), so the kill lands inside its batch; the
    # survivor starts afterwards so that the doomed one surely takes a batch first.
    doomed = setup.worker(name="doomed", EDITLOOP_EDITOR__STEPS="200")
    doomed.wait_for("ready.")
    controller = in_background(lambda: setup.run(setup.config("kill-worker")))
    wait_until(lambda: bool(started_by(setup, "doomed@")))  # it took a batch and began it
    held = started_by(setup, "doomed@")
    inject(doomed.kill)
    setup.worker(name="survivor")
    join_ok(controller)
    setup.assert_exactly_once()
    # What the killed worker held was delivered again and finished by the other worker.
    assert held and started_by(setup, "survivor@") >= held
    with setup.factory() as session:
        finished = session.scalars(select(Attempt.status).where(Attempt.id.in_(held))).all()
    assert set(finished) <= {AttemptStatus.JUDGED, AttemptStatus.FAILED}


def test_broker_killed_and_restarted_with_tasks_queued(
    moto_endpoint: str, loop_setup_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    command = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(tmp_path),
    ]
    redis = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        setup = loop_setup_factory(moto_endpoint, f"redis://127.0.0.1:{port}/0")
        worker = setup.worker(EDITLOOP_EDITOR__STEPS="50")  # slow: batches wait in the queue
        worker.wait_for("ready.")
        config = setup.config("kill-broker", dispatch_timeout_s=15.0)
        controller = in_background(lambda: setup.run(config))
        queue = Redis(port=port)
        wait_until(lambda: queue.llen("edit") > 0)  # messages are queued in the broker
        queued = queue.llen("edit")

        def restart_broker() -> None:
            nonlocal redis
            redis.kill()  # no persistence: every queued message is lost
            redis.wait()
            time.sleep(2)
            redis = subprocess.Popen(command, stdout=subprocess.DEVNULL)
            wait_until(lambda: _answers(queue))
            assert queue.llen("edit") == 0  # they are gone

        inject(restart_broker)
        join_ok(controller)
        setup.assert_exactly_once()
        with setup.factory() as session:
            resent = session.scalar(select(func.max(Attempt.dispatch_count)))
        # Only the controller's re-dispatch could bring back what the broker lost.
        assert queued > 0 and resent is not None and resent >= 2
    finally:
        redis.kill()
        redis.wait()


def test_s3_endpoint_down_during_writes(loop_setup_factory) -> None:  # type: ignore[no-untyped-def]
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    proxy = TcpProxy(moto.get_host_and_port()[1])
    proxy.start()
    try:
        setup = loop_setup_factory(proxy.endpoint, REDIS_URL)
        (worker,) = setup.workers(1)
        controller = in_background(lambda: setup.run(setup.config("s3-down")))
        wait_until(lambda: count_attempts(setup, AttemptStatus.DISPATCHED) > 0)

        def outage() -> None:
            proxy.stop()  # the endpoint refuses connections; the data behind it survives
            time.sleep(3)
            proxy.start()

        inject(outage)
        join_ok(controller)
        setup.assert_exactly_once()
        # Requests failed while it was down and were retried (the store's retry log lines).
        assert re.search(r"S3 .+ failed \(.+\); retry 1 of \d+", worker.text())
    finally:
        proxy.stop()
        moto.stop()


def test_controller_killed_and_resumed(moto_endpoint: str, loop_setup_factory) -> None:  # type: ignore[no-untyped-def]
    setup = loop_setup_factory(moto_endpoint, REDIS_URL)
    setup.workers(1)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("EDITLOOP_")}
    arguments = [
        "run",
        "--name",
        "resumable",
        "--rounds",
        "1",
        "--tasks",
        "6",
        "--max-reflections",
        "1",
    ]
    controller = subprocess.Popen(
        [EDITLOOP, *arguments],
        env=environment | setup.env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(lambda: count_attempts(setup, AttemptStatus.JUDGED) > 0, timeout=180)
    inject(lambda: os.killpg(controller.pid, signal.SIGKILL))
    assert controller.wait(timeout=300) == -signal.SIGKILL, "the controller was killed"
    with setup.factory() as session:
        assert session.scalar(select(Round.status)) != RoundStatus.FINISHED, "killed mid-round"
    resumed = subprocess.run(
        [EDITLOOP, *arguments],
        env=environment | setup.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    setup.assert_exactly_once()


def test_local_broker_worker_killed_mid_task(
    moto_endpoint: str, loop_setup_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "broker"
    folder.mkdir()
    setup = loop_setup_factory(
        moto_endpoint, "filesystem://", EDITLOOP_WORKER__BROKER_FOLDER=str(folder)
    )
    # Slow edits (200 steps) make sure the kill lands while the batch is being worked on.
    doomed = setup.worker(name="doomed", EDITLOOP_EDITOR__STEPS="200")
    doomed.wait_for("ready.")
    config = setup.config("local-broker", dispatch_timeout_s=10.0)
    controller = in_background(lambda: setup.run(config))
    wait_until(lambda: bool(started_by(setup, "doomed@")))  # it took a batch and began it
    # The filesystem transport deleted the message on pickup: killed, it is gone.
    inject(doomed.kill)
    setup.worker().wait_for("ready.")
    join_ok(controller)
    setup.assert_exactly_once()
    with setup.factory() as session:
        resent = session.scalar(select(func.max(Attempt.dispatch_count)))
    assert resent and resent >= 2, "only the controller's re-dispatch could have recovered it"


def _answers(client: Redis) -> bool:
    try:
        return bool(client.ping())
    except RedisConnectionError:
        return False
