"""The prompts a judge worker sends are the prompts `editloop train-judge` trains on, token for
token and pixel for pixel, for the scorer and for the reflector (scores' hint included); and the
worker judges with the promoted judge checkpoint."""

from pathlib import Path

import pytest
import torch
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from loop.training.judge_data import chat_row, select_examples
from loop.training.pool import PoolFilter
from migrations import upgrade
from rewards.imgedit_judge import ImgEditJudge
from rewards.prompts import editloop_prompts
from rewards.reflection import validate_reflection
from rewards.reflector import ReasonEditReflector
from rewards.sft import ChatCollator
from rewards.verdict import VerdictThresholds
from rewards.vlm import PixelBounds, VisionLanguageModel, images_kwargs
from store.db import make_engine, make_session_factory
from store.images import decode_image, encode_png
from store.models import (
    Attempt,
    AttemptStatus,
    Checkpoint,
    CheckpointRole,
    CheckpointStatus,
    Judgment,
    Round,
    Run,
    Task,
)
from store.objects import LocalStore, put_content
from tests.fixtures.judges import script_answers
from workers.context import ModelCache, WorkerContext
from workers.stages import judge_attempts

BOUNDS = PixelBounds(min_pixels=28 * 28, max_pixels=56 * 56)
SCORES = "Brief reasoning: half done\nPrompt Compliance: 3\nVisual Naturalness: 2\n" \
    "Physical & Detail Integrity: 2"  # fmt: skip
REFLECTION = "<#Think> the cat is there but the sky is still blue <#Reflection> make the sky green"


def edited_attempt(tmp_path: Path) -> tuple[sessionmaker[Session], LocalStore, int]:
    """A database and a store holding one edited attempt, ready to judge."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    factory = make_session_factory(make_engine(url))
    store = LocalStore(tmp_path / "objects")

    def put(colour: tuple[int, int, int], prefix: str) -> str:
        png = encode_png(Image.new("RGB", (40, 32), colour))
        return put_content(store, png, prefix=prefix, ext="png", content_type="image/png")

    with factory() as session, session.begin():
        instruction = "add a cat and make the sky green"
        task = Task(source_key=put((0, 0, 200), "sources"), instruction=instruction,
                    instruction_sha256="0" * 64, edit_type="replace", width=40,
                    height=32)  # fmt: skip
        run = Run(name="r", config={"max_reflections": 2})
        session.add_all([task, run])
        session.flush()
        round_ = Round(run_id=run.id, number=0)
        session.add(round_)
        session.flush()
        attempt = Attempt(round_id=round_.id, task_id=task.id, sample_index=0, depth=0,
                          instruction=instruction, input_key=task.source_key, seed=1,
                          output_key=put((200, 100, 0), "edits"),
                          status=AttemptStatus.EDITED)  # fmt: skip
        session.add(attempt)
        session.flush()
        return factory, store, attempt.id


def test_worker_prompts_equal_training_prompts(
    tmp_path: Path, tiny_vlm: VisionLanguageModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    factory, store, attempt_id = edited_attempt(tmp_path)
    judges = (
        ImgEditJudge(tiny_vlm, bounds=BOUNDS),
        ReasonEditReflector(tiny_vlm, bounds=BOUNDS, retries=0),
    )
    models = ModelCache(load_editor=lambda old, checkpoint: None, load_judges=lambda: judges)
    context = WorkerContext(session_factory=factory, store=store, models=models)
    # Scorer, then the reflector's description, then its answer: one generate call each.
    seen = script_answers(
        monkeypatch, tiny_vlm, [[SCORES], ["a cat under a green sky"], [REFLECTION]]
    )
    assert judge_attempts(context, [attempt_id]) == [attempt_id]
    with factory() as session:
        assert session.get_one(Judgment, attempt_id).reflector_tag == "Reflection"

    collator = ChatCollator(tiny_vlm.processor, BOUNDS)
    pool = PoolFilter(verdicts=("Success", "Reflection", "Failed"))

    def image(key: str) -> Image.Image:
        return decode_image(store.get(key))

    for role, sent in ((CheckpointRole.JUDGE, seen[0]), (CheckpointRole.REFLECTOR, seen[2])):
        (example,) = select_examples(factory, pool, role, VerdictThresholds(), confirmed_only=False)
        row = chat_row(example, editloop_prompts(), image)
        trained = tiny_vlm.processor(
            text=[collator.prompt_text(row)], images=row["images"], return_tensors="pt",
            images_kwargs=images_kwargs(BOUNDS),
        )  # fmt: skip
        assert torch.equal(trained["input_ids"], sent["input_ids"])
        assert torch.equal(trained["pixel_values"], sent["pixel_values"])
    (judge_example,) = select_examples(factory, pool, CheckpointRole.JUDGE, VerdictThresholds(),
                                       confirmed_only=False)  # fmt: skip
    assert judge_example.answer == SCORES  # the judge's own answer, in the format it parses
    # The worker passed the scores' hint, so the reflector's prompt carries it.
    reflector_text = tiny_vlm.processor.tokenizer.decode(seen[2]["input_ids"][0])
    assert "An earlier judge said: overall 2.33" in reflector_text
    (reflector_example,) = select_examples(factory, pool, CheckpointRole.REFLECTOR,
                                           VerdictThresholds(), confirmed_only=False)  # fmt: skip
    check = validate_reflection(reflector_example.answer, reflector_example.instruction)
    assert (check.tag.value, check.new_instruction) == ("Reflection", "make the sky green")


def test_workers_judge_with_the_promoted_judge_checkpoint(
    tmp_path: Path, tiny_vlm: VisionLanguageModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    factory, store, attempt_id = edited_attempt(tmp_path)
    with factory() as session, session.begin():
        session.add_all([
            Checkpoint(version="judge-a", role="judge", status=CheckpointStatus.PROMOTED),
            Checkpoint(version="judge-b", role="judge", status=CheckpointStatus.READY),
            Checkpoint(version="reflector-a", role="reflector", status=CheckpointStatus.REJECTED),
            Checkpoint(version="editor-a", role="editor", status=CheckpointStatus.PROMOTED),
        ])  # fmt: skip
    wanted: list[tuple[str | None, str | None]] = []

    def load_at(judge: Checkpoint | None, reflector: Checkpoint | None) -> tuple:
        wanted.append((judge and judge.version, reflector and reflector.version))
        return ImgEditJudge(tiny_vlm, bounds=BOUNDS), None

    models = ModelCache(load_editor=lambda old, c: None, load_judges=lambda: (None, None),
                        load_judges_at=load_at)  # fmt: skip
    context = WorkerContext(session_factory=factory, store=store, models=models)
    script_answers(monkeypatch, tiny_vlm, [[SCORES]])
    assert judge_attempts(context, [attempt_id]) == [attempt_id]
    # Only a promoted checkpoint of the judge's own role: the reflector stays configured.
    assert wanted == [("judge-a", None)]
