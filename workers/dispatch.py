"""The controller's way to hand work to the workers: Celery messages (inline when eager)."""

from collections.abc import Sequence

from workers.tasks import edit_batch, judge_batch


class CeleryDispatcher:
    """Sends attempt-id batches to the `edit` and `judge` queues."""

    @property
    def in_process(self) -> bool:
        """Whether the tasks run inline (Celery's eager mode) instead of through a broker."""
        return bool(edit_batch.app.conf.task_always_eager)

    def send_edit(self, attempt_ids: Sequence[int], batch: str) -> None:
        edit_batch.apply_async(args=[list(attempt_ids), batch])

    def send_judge(self, attempt_ids: Sequence[int], batch: str) -> None:
        judge_batch.apply_async(args=[list(attempt_ids), batch])
