"""A trainer in a process of its own (the kill test SIGKILLs it mid-training).

    python -m tests.loop.training.trainer_process \
        DATABASE_URL STORE_ROOT WORK_DIR MODEL_DIR SETTINGS_JSON

It trains but cannot publish: its editor, verification and scorer raise, so a test that lets it
get that far fails loudly.
"""

import sys
from pathlib import Path
from typing import NoReturn

from loop.training.jobs import TrainerParts, run_trainer
from policies.training.settings import TrainingSettings
from store.db import make_engine, make_session_factory
from store.objects import LocalStore
from tests.fixtures.training import SUBPROCESS_ENV


def _unreachable(*_args: object) -> NoReturn:
    raise AssertionError("this trainer was meant to be killed before publishing")


def main(database_url: str, store_root: str, work_dir: str, model: str, settings: str) -> None:
    parts = TrainerParts(
        factory=make_session_factory(make_engine(database_url)),
        store=LocalStore(Path(store_root)),
        settings=TrainingSettings.model_validate_json(settings),
        work_dir=Path(work_dir),
        model=model,
        cache_dir=Path(work_dir) / "checkpoint-cache",
        editor_for=_unreachable,
        verify=_unreachable,
        load_scorer=_unreachable,
        env=dict(SUBPROCESS_ENV),
    )
    run_trainer(parts, owner="trainer-a", max_jobs=1)


if __name__ == "__main__":
    main(*sys.argv[1:])
