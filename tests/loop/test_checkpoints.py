"""The live checkpoint: a promoted judge or reflector checkpoint never becomes the editor."""

from pathlib import Path

from loop.checkpoints import latest_promoted
from migrations import upgrade
from store.db import make_engine, make_session_factory
from store.models import Checkpoint, CheckpointRole, CheckpointStatus, utcnow
from workers.stages import StartingAttempt, choose_checkpoints


def test_latest_promoted_filters_on_the_role(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    factory = make_session_factory(make_engine(url))
    with factory() as session, session.begin():
        rows = [
            Checkpoint(version=f"{role.value}-{i}", kind="full", role=role.value,
                       status=CheckpointStatus.PROMOTED)
            for i, role in enumerate([CheckpointRole.EDITOR, CheckpointRole.JUDGE,
                                      CheckpointRole.REFLECTOR])
        ]  # fmt: skip
        # The judge checkpoints are the newest, yet rounds keep editing with the editor's.
        session.add_all(rows)
    with factory() as session:
        editor = latest_promoted(session)
        assert editor is not None and editor.version == "editor-0"
        judge = latest_promoted(session, CheckpointRole.JUDGE)
        assert judge is not None and judge.version == "judge-1"
        reflector = latest_promoted(session, CheckpointRole.REFLECTOR)
        assert reflector is not None and reflector.version == "reflector-2"
        # A pipelined worker switches to the latest promoted editor, never to a judge.
        starting = StartingAttempt(id=1, checkpoint_id=None, run_id=1, round_started=utcnow(),
                                   run_config={"pipeline_depth": 1})  # fmt: skip
        assert choose_checkpoints(session, [starting]) == {1: (editor.id, 0)}
