"""Fault tests: whatever breaks, every attempt ends exactly once and the store holds exactly
the objects the rows reference (docs/design.md, invariants 1 and 2)."""

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer
from sqlalchemy import func, select

from store.models import Attempt, AttemptStatus, Round, RoundStatus
from tests.fixtures.services import TcpProxy, free_port
from tests.fixtures.workers import EDITLOOP, LoopSetup

REDIS_URL = "redis://127.0.0.1:6379/8"
# Celery's log line when a worker takes an edit task (the start-up banner only lists the name).
RECEIVED_EDIT = "Task editloop.edit_batch["

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
    doomed = setup.worker(EDITLOOP_EDITOR__STEPS="200")
    doomed.wait_for("ready.")
    controller = in_background(lambda: setup.run(setup.config("kill-worker")))
    doomed.wait_for(RECEIVED_EDIT)
    doomed.kill()
    survivor = setup.worker()
    join_ok(controller)
    setup.assert_exactly_once()
    assert RECEIVED_EDIT in survivor.text()


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
        worker = setup.worker()
        worker.wait_for("ready.")
        config = setup.config("kill-broker", dispatch_timeout_s=15.0)
        controller = in_background(lambda: setup.run(config))
        wait_until(lambda: count_attempts(setup, AttemptStatus.DISPATCHED) > 0)
        redis.kill()  # no persistence: every queued message is lost
        redis.wait()
        time.sleep(2)
        redis = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        join_ok(controller)
        setup.assert_exactly_once()
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
        setup.workers(1)
        controller = in_background(lambda: setup.run(setup.config("s3-down")))
        wait_until(lambda: count_attempts(setup, AttemptStatus.DISPATCHED) > 0)
        proxy.stop()  # the endpoint refuses connections; the data behind it survives
        time.sleep(3)
        proxy.start()
        join_ok(controller)
        setup.assert_exactly_once()
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
    os.killpg(controller.pid, signal.SIGKILL)
    controller.wait()
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
    doomed = setup.worker(EDITLOOP_EDITOR__STEPS="200")
    doomed.wait_for("ready.")
    config = setup.config("local-broker", dispatch_timeout_s=10.0)
    controller = in_background(lambda: setup.run(config))
    doomed.wait_for(RECEIVED_EDIT)
    doomed.kill()  # the filesystem transport deleted the message on pickup: it is gone
    setup.worker().wait_for("ready.")
    join_ok(controller)
    setup.assert_exactly_once()
    with setup.factory() as session:
        resent = session.scalar(select(func.max(Attempt.dispatch_count)))
    assert resent and resent >= 2, "only the controller's re-dispatch could have recovered it"
