"""One item's judgment as every caller makes it: the scores, then the reflection given them.

Workers (`workers/stages.py`) and `editloop judge` both call `judge_items`, so the reflector sees
the same prompt, the scores' non-binding hint included, wherever it runs; the training examples of
`editloop train-judge` are built from the same prompt functions.
"""

from collections.abc import Sequence

from rewards.reflection import score_hint
from rewards.types import JudgeItem, Reflection, Reflector, Scorer, Scores


def judge_items(
    scorer: Scorer, reflector: Reflector | None, items: Sequence[JudgeItem]
) -> tuple[list[Scores], list[Reflection | None]]:
    """Score `items`, then reflect on them with each item's scores as the reflector's hint."""
    scores = scorer.score(items)
    if reflector is None:
        return scores, [None] * len(items)
    reflections: list[Reflection | None] = list(
        reflector.reflect(items, hints=[score_hint(s) for s in scores])
    )
    return scores, reflections
