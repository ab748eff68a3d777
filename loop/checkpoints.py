"""Which checkpoint is live: the one rounds edit with and the next training job starts from."""

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import Checkpoint, CheckpointStatus


def latest_promoted(session: Session) -> Checkpoint | None:
    """The checkpoint rounds edit with now (the controller's rule): the latest promoted one."""
    return session.scalar(
        select(Checkpoint)
        .where(Checkpoint.status == CheckpointStatus.PROMOTED)
        .order_by(Checkpoint.id.desc())
        .limit(1)
    )
