"""Which checkpoint is live: the one rounds edit with and the next training job starts from."""

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import Checkpoint, CheckpointRole, CheckpointStatus


def latest_promoted(
    session: Session, role: CheckpointRole = CheckpointRole.EDITOR
) -> Checkpoint | None:
    """The latest promoted checkpoint of `role`; for the editor, the one rounds edit with now.

    Filtering on the role is what keeps a judge or reflector checkpoint from becoming the editor.
    """
    return session.scalar(
        select(Checkpoint)
        .where(Checkpoint.status == CheckpointStatus.PROMOTED, Checkpoint.role == role.value)
        .order_by(Checkpoint.id.desc())
        .limit(1)
    )
