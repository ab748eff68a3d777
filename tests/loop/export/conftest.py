"""A seeded database and store for the export tests, and the export as the library calls it."""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from loop.export.columns import ExportFormat, ExportKind
from loop.export.pipeline import ExportOptions, ExportResult, export_dataset
from loop.export.publish import LocalTarget, Target
from loop.training.pool import PoolFilter
from migrations import upgrade
from store.db import make_engine, make_session_factory
from store.models import Attempt, AttemptStatus, Checkpoint, Judgment, Round, Run, Task
from store.objects import LocalStore, ObjectStore
from tests.loop.export.seed import Seeded, seed_export_data

ALL_VERDICTS = ("Failed", "Reflection", "Success")


@dataclass
class ExportEnv:
    factory: sessionmaker[Session]
    store: ObjectStore
    seeded: Seeded
    url: str
    store_root: Path | None = None

    def export(
        self,
        target: Target | Path,
        kind: ExportKind = ExportKind.EDITS,
        export_format: ExportFormat = ExportFormat.HF,
        **options: Any,
    ) -> ExportResult:
        """An export with the command line's defaults (held-out set left out)."""
        verdicts = ALL_VERDICTS if kind == ExportKind.REFLECTIONS else ()
        pool_filter = options.pop("pool_filter", None) or PoolFilter(
            exclude_origins=("heldout",),
            verdicts=verdicts,
            hindsight=options.pop("hindsight", False),
        )
        return export_dataset(
            factory=self.factory,
            store=self.store,
            target=LocalTarget(target) if isinstance(target, Path) else target,
            options=ExportOptions(
                kind=kind, export_format=export_format, pool_filter=pool_filter, **options
            ),
        )


@pytest.fixture
def env(tmp_path: Path) -> ExportEnv:
    """SQLite and a local folder, seeded (see seed.py)."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    factory = make_session_factory(make_engine(url))
    store = LocalStore(tmp_path / "objects")
    return ExportEnv(factory, store, seed_export_data(factory, store), url, tmp_path / "objects")


def judged_attempts(factory: sessionmaker[Session]) -> list[dict[str, Any]]:
    """Every judged attempt with what an export row says of it, read with one plain query."""
    with factory() as session:
        rows = session.execute(
            select(Attempt, Judgment, Task, Round.number, Run.name, Checkpoint.version)
            .join(Judgment, Judgment.attempt_id == Attempt.id)
            .join(Task, Task.id == Attempt.task_id)
            .join(Round, Round.id == Attempt.round_id)
            .join(Run, Run.id == Round.run_id)
            .outerjoin(Checkpoint, Checkpoint.id == Attempt.checkpoint_id)
            .where(Attempt.status == AttemptStatus.JUDGED)
            .order_by(Attempt.id)
        ).all()
        return [
            {
                "attempt_id": attempt.id,
                "task_id": task.id,
                "origin": task.origin,
                "instruction": attempt.instruction,
                "task_instruction": task.instruction,
                "input_key": attempt.input_key,
                "output_key": attempt.output_key,
                "task_source_key": task.source_key,
                "depth": attempt.depth,
                "seed": attempt.seed,
                "run": run,
                "round": number,
                "checkpoint": version,
                "edit_type": task.edit_type,
                "verdict": (judgment.override_verdict or judgment.verdict).value,
                "judge_verdict": judgment.verdict.value,
                "reviewer": judgment.override_reviewer,
                "overall": judgment.overall,
                "score_quality": judgment.score_quality,
                "tag": judgment.reflector_tag,
                "proposed_instruction": judgment.proposed_instruction,
            }
            for attempt, judgment, task, number, run, version in rows
        ]


def manifest_verifies(folder: Path) -> dict[str, Any]:
    """The manifest of an export folder, after checking that it lists every other file with its
    size and SHA-256 (and nothing else is there)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    listed = {entry["path"]: entry for entry in manifest["files"]}
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert present == set(listed) | {"manifest.json"}
    for path, entry in listed.items():
        data = (folder / path).read_bytes()
        assert len(data) == entry["size"] and hashlib.sha256(data).hexdigest() == entry["sha256"]
    return manifest


def folder_digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under `folder`, by relative path."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
