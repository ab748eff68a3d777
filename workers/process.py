"""One worker process: the context installed, its presence (heartbeat, busy/idle, watchdog) in
the database, and Celery consuming the queues until the process is told to stop."""

from celery import Celery
from celery.signals import worker_ready

from workers.context import WorkerContext, set_worker_context
from workers.heartbeat import Presence, commit_without_waiting, connect_to_celery
from workers.settings import WorkerSettings


def run_worker(
    app: Celery,
    context: WorkerContext,
    settings: WorkerSettings,
    *,
    queues: str,
    device: str = "",
    pool: str = "solo",
    concurrency: int = 1,
    loglevel: str = "INFO",
) -> None:
    """Consume `queues` as the worker `context.worker_name` (its Celery node name) until stopped.

    The worker's row is written before Celery starts (so the controller counts it for flow
    control) and marked free once Celery consumes; it is marked stopped on a clean exit. A
    SIGKILL leaves it to lapse: after `heartbeat_timeout_s` the controller sends its batch again.
    """
    commit_without_waiting(context.session_factory)
    set_worker_context(context)
    presence = Presence(
        context.session_factory,
        name=context.worker_name,
        queues=queues,
        device=device,
        interval_s=settings.heartbeat_s,
        time_limit_s=settings.time_limit_s,
        loaded_checkpoint=lambda: context.models.loaded_checkpoint,
    )
    connect_to_celery(presence)
    worker_ready.connect(lambda **_: presence.idle(first=True), weak=False)
    presence.start()
    try:
        app.worker_main(
            [
                "worker",
                f"--queues={queues}",
                f"--pool={pool}",
                f"--concurrency={concurrency}",
                f"--hostname={context.worker_name}",
                f"--loglevel={loglevel}",
                "--without-gossip",
                "--without-mingle",
            ]
        )
    finally:
        presence.stop()
