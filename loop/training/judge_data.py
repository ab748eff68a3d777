"""Training examples for the judge and the reflector, built from the pool's reflection records.

The records come from the export's selection (`loop/export/selection.py`, children included),
each example is one user turn built by the very functions workers send (`judge_turn`,
`reflect_turn`, the scores' hint of `rewards/judging.py`) and the answer to learn: for the judge
the score text `rewards/parsing.py` reads, for the reflector the tagged answer
`rewards/reflection.py` validates. By default only confirmed outcomes (`loop/training/outcomes.py`)
become examples; the split is by task (`loop/export/splits.py`).
"""

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from loop.export.columns import ExportKind
from loop.export.selection import ExportRecord, iter_records
from loop.export.splits import split_of
from loop.training.outcomes import confirmed_outcome, scorer_accepts, scores_of
from loop.training.pool import PoolFilter
from rewards.imgedit_judge import judge_turn
from rewards.prompts import JudgePrompts, dimension_names
from rewards.reflection import ENDING_TAGS, THINK, score_hint
from rewards.reflector import reflect_turn
from rewards.types import JudgeItem, ParseStatus, Scores
from rewards.verdict import VerdictThresholds
from rewards.vlm import Turn
from store.models import CheckpointRole
from store.taxonomy import EditType, Verdict

# The reasoning line of ImgEdit-Judge's answer format (rewards/prompts.py).
_REASONING = re.compile(r"^\s*brief reasoning\s*:\s*(.+)$", re.IGNORECASE | re.MULTILINE)
_TAG_OF = {tag.value: text for text, tag in ENDING_TAGS.items()}


@dataclass(frozen=True)
class JudgeExample:
    """One example: what the turn is built from, the answer, and the record it came from."""

    id: str
    role: CheckpointRole
    attempt_id: int
    task_id: int
    split: str
    outcome: str | None  # the confirmed outcome, None when unconfirmed
    instruction: str  # the task's original instruction: every edit is judged against it
    edit_type: str
    source_key: str
    edited_key: str
    target_description: str  # reflector only
    hint: str | None  # reflector only: the scores' hint, as workers pass it
    answer: str


def record_scores(record: ExportRecord) -> Scores | None:
    """The stored scores as the scorer returned them (what the reflector's hint is made from)."""
    dims = scores_of(record)
    if dims is None or record.overall is None:
        return None
    # The names the scorer answered with (stored), as its hint to the reflector named them.
    stored = record.dimension_names
    names = (
        (stored[0], stored[1], stored[2])
        if len(stored) == 3
        else dimension_names(EditType(record.edit_type))
    )
    return Scores(*dims, record.overall, names, ParseStatus.OK, "", 0.0, record.judge_model)


def judge_answer(record: ExportRecord) -> str | None:
    """The score text in ImgEdit-Judge's format, integer scores; None without scores."""
    dims = scores_of(record)
    if dims is None:
        return None
    found = _REASONING.search(record.raw_judge_output or "")
    reasoning = found.group(1).strip() if found else " ".join((record.think or "").split()[:20])
    names = dimension_names(EditType(record.edit_type))
    # Continuous scores are expected values: the judge writes the nearest integer.
    lines = [f"Brief reasoning: {reasoning or '-'}"]
    lines += [f"{n}: {min(5, max(1, round(d)))}" for n, d in zip(names, dims, strict=True)]
    return "\n".join(lines)


def reflector_answer(record: ExportRecord) -> str | None:
    """The tagged answer `<#Think> ... <#Tag> [new instruction]`; None for an invalid one."""
    tag, think = record.reflector_tag, (record.think or "").strip()
    if tag not in _TAG_OF or not think:
        return None
    answer = f"{THINK} {think} {_TAG_OF[tag]}"
    if tag == Verdict.REFLECTION.value:
        if not record.proposed_instruction:
            return None
        answer += f" {record.proposed_instruction}"
    return answer


def example_of(
    record: ExportRecord,
    role: CheckpointRole,
    thresholds: VerdictThresholds,
    *,
    seed: int,
    val_fraction: float,
) -> JudgeExample | None:
    """The `role` example of `record`, None when it has no answer to learn."""
    answer = judge_answer(record) if role == CheckpointRole.JUDGE else reflector_answer(record)
    if answer is None:
        return None
    outcome = confirmed_outcome(record, thresholds)
    # The judge's scores are confirmed only when they agree with the outcome: high scores for
    # an edit confirmed failed would teach the judge the very mistake.
    agrees = (outcome == Verdict.SUCCESS.value) == scorer_accepts(record, thresholds)
    if role == CheckpointRole.JUDGE and not agrees:
        outcome = None
    scores = record_scores(record)
    return JudgeExample(
        id=f"{role.value[0]}{record.attempt_id:010d}",
        role=role,
        attempt_id=record.attempt_id,
        task_id=record.task_id,
        split=split_of(record.task_id, seed=seed, val_fraction=val_fraction),
        outcome=outcome,
        instruction=record.task_instruction,
        edit_type=record.edit_type,
        source_key=record.task_source_key,
        edited_key=record.output_key,
        target_description=record.target_description or "",
        hint=score_hint(scores) if scores is not None else None,
        answer=answer,
    )


def build_examples(
    records: Iterable[ExportRecord],
    role: CheckpointRole,
    thresholds: VerdictThresholds,
    *,
    confirmed_only: bool = True,
    seed: int = 0,
    val_fraction: float = 0.0,
) -> list[JudgeExample]:
    """The `role` examples of `records`, in order; only confirmed ones unless told otherwise."""
    examples = []
    for record in records:
        example = example_of(record, role, thresholds, seed=seed, val_fraction=val_fraction)
        if example is not None and (example.outcome is not None or not confirmed_only):
            examples.append(example)
    return examples


def select_examples(
    factory: sessionmaker[Session],
    pool_filter: PoolFilter,
    role: CheckpointRole,
    thresholds: VerdictThresholds,
    **options: Any,
) -> list[JudgeExample]:
    """The examples of the judgments the reflector answered that `pool_filter` selects."""
    records = iter_records(factory, pool_filter, ExportKind.REFLECTIONS)
    return build_examples(records, role, thresholds, **options)


def example_turn(
    example: JudgeExample, prompts: JudgePrompts, image: Callable[[str], Image.Image]
) -> Turn:
    """The user turn of `example`, built as workers build theirs; `image(key)` loads an image."""
    edited = image(example.edited_key)
    if example.role == CheckpointRole.REFLECTOR:
        return reflect_turn(example.instruction, edited, example.target_description, example.hint)
    item = JudgeItem(
        image(example.source_key), edited, example.instruction, EditType(example.edit_type)
    )
    return judge_turn(item, prompts)


def chat_row(
    example: JudgeExample, prompts: JudgePrompts, image: Callable[[str], Image.Image]
) -> dict[str, Any]:
    """`example` as one row of a TRL prompt-completion dataset with its images."""
    turn = example_turn(example, prompts, image)
    content = [{"type": "text", "text": turn.text}, *({"type": "image"} for _ in turn.images)]
    return {
        "prompt": [{"role": "user", "content": content}],
        "completion": [
            {"role": "assistant", "content": [{"type": "text", "text": example.answer}]}
        ],
        "images": [im.convert("RGB") for im in turn.images],
    }
