"""The Celery app: JSON only, late acks, no result backend; configured from `WorkerSettings`."""

from celery import Celery
from kombu import Exchange, Queue
from kombu.exceptions import OperationalError as KombuOperationalError
from kombu.utils.url import maybe_sanitize_url

from workers.settings import WorkerSettings

EDIT_QUEUE = "edit"
JUDGE_QUEUE = "judge"


def configure_celery(settings: WorkerSettings) -> Celery:
    """A Celery app for `settings`, made the process's current and default app.

    A new app each time: an app caches its broker connection pool on first use, so re-using one
    with another broker URL would keep sending to the old broker.
    """
    app = Celery("editloop", include=["workers.tasks"], set_as_current=True)
    app.set_default()
    broker_url = settings.broker_url.get_secret_value()
    transport_options: dict[str, object] = {}
    if broker_url.startswith(("redis://", "rediss://")):
        # kombu scans for unacked messages every 10 s x 10 by default (~100 s to redeliver a
        # killed worker's task); these make it ~5 s once the visibility timeout lapsed
        # (docs/design.md, "Platform notes").
        transport_options = {
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
            # Without socket timeouts a publish on a connection to a killed server can block
            # for good; with them it fails, and the attempts are re-sent at their deadline.
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
        }
    elif broker_url.startswith("filesystem://"):
        # The embedded mode's serverless broker. It loses a message whose worker is killed
        # (it deletes the file on pickup): the controller's re-dispatch is what recovers it.
        if not settings.broker_folder:
            raise ValueError("broker_url=filesystem:// needs worker.broker_folder to be set")
        transport_options = {
            "data_folder_in": settings.broker_folder,
            "data_folder_out": settings.broker_folder,
            "control_folder": f"{settings.broker_folder}/control",  # else ./control in the cwd
        }
    app.conf.update(
        broker_url=broker_url,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        # A send gives up after a few seconds instead of retrying for minutes: the controller
        # keeps the attempts dispatched with a deadline and re-sends them when it lapses.
        task_publish_retry_policy={
            "max_retries": 3,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 2,
        },
        result_backend=None,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.soft_time_limit_s,
        task_time_limit=settings.time_limit_s,
        task_queues=[
            Queue(EDIT_QUEUE, Exchange(EDIT_QUEUE), routing_key=EDIT_QUEUE),
            Queue(JUDGE_QUEUE, Exchange(JUDGE_QUEUE), routing_key=JUDGE_QUEUE),
        ],
        task_default_queue=EDIT_QUEUE,
        task_routes={
            "editloop.edit_batch": {"queue": EDIT_QUEUE, "routing_key": EDIT_QUEUE},
            "editloop.judge_batch": {"queue": JUDGE_QUEUE, "routing_key": JUDGE_QUEUE},
        },
        # Task events, so that Flower (the compose file's monitor) sees what the workers do.
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_always_eager=settings.eager,
        task_eager_propagates=True,
        worker_hijack_root_logger=False,
    )
    return app


class BrokerUnavailable(RuntimeError):
    """The broker did not accept a connection within the retries."""


def check_broker(app: Celery, *, retries: int, backoff_s: float) -> None:
    """Fail with `BrokerUnavailable` unless the app's broker accepts a connection, retrying
    with backoff first (a broker that is starting up)."""
    url = maybe_sanitize_url(app.conf.broker_url)
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(
                max_retries=retries,
                interval_start=backoff_s,
                interval_step=backoff_s,
                interval_max=10,
                timeout=5,
            )
    except (KombuOperationalError, OSError) as exc:
        raise BrokerUnavailable(
            f"the broker at {url} did not answer after {retries + 1} tries ({exc}); check that it "
            "is running and EDITLOOP_WORKER__BROKER_URL is right"
        ) from None
