"""Which sent attempts are lost: from the workers' heartbeats, never from a fixed deadline."""

from datetime import UTC, datetime, timedelta

import pytest

from loop.liveness import SentAttempt, WorkerState, is_live, is_lost, live_workers

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
HEARTBEAT, PICKUP = 30.0, 60.0


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def worker(
    name: str = "w@h",
    *,
    beat: float = 1,
    busy: float | None = None,
    idle: float | None = None,
    stopped: float | None = None,
    started: float = 7200,
    queues: tuple[str, ...] = ("edit", "judge"),
) -> WorkerState:
    return WorkerState(
        name=name,
        queues=queues,
        beat_at=ago(beat),
        busy_since=ago(busy) if busy is not None else None,
        idle_since=ago(idle) if idle is not None else None,
        stopped_at=ago(stopped) if stopped is not None else None,
        started_at=ago(started),
    )


def sent(
    *, queue: str = "edit", sent_s: float = 10, started: float | None = None, by: str = "w@h"
) -> SentAttempt:
    return SentAttempt(
        queue=queue,
        batch="b1",
        dispatched_at=ago(sent_s),
        worker=by if started is not None else None,
        started_at=ago(started) if started is not None else None,
    )


def lost(attempt: SentAttempt, *workers: WorkerState, in_process: bool = False) -> bool:
    return is_lost(
        attempt,
        {w.name: w for w in workers},
        now=NOW,
        heartbeat_timeout_s=HEARTBEAT,
        pickup_timeout_s=PICKUP,
        in_process=in_process,
    )


def test_live_means_a_recent_beat_and_not_stopped() -> None:
    fresh, silent, stopped = worker("a", beat=5), worker("b", beat=31), worker("c", stopped=1)
    states = [is_live(w, now=NOW, heartbeat_timeout_s=HEARTBEAT) for w in (fresh, silent, stopped)]
    assert states == [True, False, False]
    assert [w.name for w in live_workers([fresh, silent, stopped], now=NOW,
                                         heartbeat_timeout_s=HEARTBEAT)] == ["a"]  # fmt: skip


def test_a_slow_but_alive_worker_keeps_its_batch_however_long_it_takes() -> None:
    # Started an hour ago, still busy with that task and beating: never sent again.
    assert not lost(sent(sent_s=3700, started=3600), worker(busy=3601, beat=2))


@pytest.mark.parametrize(
    "holder",
    [
        worker(busy=100, beat=31),  # its heartbeat lapsed (killed, OOM, a dead node)
        worker(busy=100, stopped=5),  # it stopped (the watchdog, a shutdown) without finishing
        worker(idle=5),  # it went idle: the task ended without a result
        worker(busy=5),  # it went on to another task
        worker(started=5),  # it restarted under the same name (and is starting up)
    ],
    ids=["heartbeat-lapsed", "stopped", "idle-since", "busy-with-another", "restarted"],
)
def test_a_started_batch_is_lost_when_its_worker_lets_it_go(holder: WorkerState) -> None:
    assert lost(sent(started=50), holder)


def test_a_busy_mark_not_written_yet_is_no_sign_of_loss() -> None:
    # The worker started the batch 2 s ago; its row still shows it idle since before that.
    assert not lost(sent(started=2), worker(idle=30))
    assert not lost(sent(started=2), worker(busy=40))  # or busy with the task it came from


def test_a_started_batch_of_an_unknown_worker_is_lost() -> None:
    assert lost(sent(started=50, by="gone@h"), worker())


def test_a_queued_batch_waits_as_long_as_every_worker_is_busy() -> None:
    # Sent ten minutes ago, far past the pickup timeout, but no worker was ever free to take it.
    assert not lost(sent(sent_s=600), worker(busy=700), worker("v@h", busy=20))
    assert not lost(sent(sent_s=600))  # no worker at all: it waits for one


def test_the_pickup_clock_starts_when_a_worker_is_free() -> None:
    assert not lost(sent(sent_s=600), worker(idle=59))  # free for less than the pickup timeout
    assert lost(sent(sent_s=600), worker(idle=61))  # free for longer: the message is gone
    assert not lost(sent(sent_s=30), worker(idle=600))  # sent recently to a long-idle worker


def test_only_a_free_worker_of_the_right_queue_and_alive_counts() -> None:
    judge_only = worker(idle=600, queues=("judge",))
    assert not lost(sent(queue="edit", sent_s=600), judge_only)
    assert lost(sent(queue="judge", sent_s=600), judge_only)
    assert not lost(sent(sent_s=600), worker(idle=600, beat=31))  # lapsed: not a free worker


def test_in_process_the_clock_runs_from_the_send() -> None:
    assert lost(sent(sent_s=61, started=60), in_process=True)
    assert not lost(sent(sent_s=59), in_process=True)


def test_an_attempt_sent_before_batches_existed_is_lost() -> None:
    legacy = SentAttempt(queue="edit", batch=None, dispatched_at=None, worker=None, started_at=None)
    assert lost(legacy, worker(busy=1))
