"""ReasonEdit-style reflector: describe the target, judge the edit against it, answer with tags."""

import time
from collections.abc import Sequence

from PIL import Image

from rewards.imgedit_judge import check_items
from rewards.reflection import (
    ReflectionCheck,
    describe_target_prompt,
    reflect_prompt,
    retry_note,
    validate_reflection,
)
from rewards.types import JudgeItem, Reflection, ReflectionTag
from rewards.vlm import Generation, PixelBounds, Turn, VisionLanguageModel, generate


def reflect_turn(
    instruction: str, edited: Image.Image, description: str, hint: str | None, note: str = ""
) -> Turn:
    """The answering turn (steps 2 and 3): the prompt on `description` and the edited image alone.

    What a worker sends and what `editloop train-judge --role reflector` trains on.
    """
    return Turn(reflect_prompt(instruction, description, hint, note), (edited,))


class ReasonEditReflector:
    """A Qwen2.5-VL following ReasonEdit's protocol in two generations per item (docs/design.md).

    (1) From the source and the instruction, describe the target image. (2) From the edited image,
    the instruction and that description, answer `<#Think> ...` with one ending tag. An answer that
    breaks the protocol is asked again up to `retries` times, the prompt saying what was wrong
    (greedy decoding would repeat the same answer to the same prompt); then it is `Invalid`.
    ReasonEdit's release retries forever: every retry here is bounded.
    """

    def __init__(
        self,
        vlm: VisionLanguageModel,
        *,
        bounds: PixelBounds = PixelBounds(),
        batch_size: int = 8,
        max_new_tokens: int = 256,
        retries: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: expected 1 or more")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens}: expected 1 or more")
        if retries < 0:
            raise ValueError(f"retries={retries}: expected 0 or more")
        self.vlm = vlm
        self.bounds = bounds
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.retries = retries

    @property
    def name(self) -> str:
        """The reflector model's id as stored with each judgment."""
        return self.vlm.name

    def reflect(
        self, items: Sequence[JudgeItem], *, hints: Sequence[str | None] | None = None
    ) -> list[Reflection]:
        """One `Reflection` per item, in order; `hints` (e.g. `score_hint`) are non-binding."""
        check_items(items)
        if hints is not None and len(hints) != len(items):
            raise ValueError(f"len(hints)={len(hints)} but len(items)={len(items)}")
        all_hints = list(hints) if hints is not None else [None] * len(items)
        results: list[Reflection] = []
        for start in range(0, len(items), self.batch_size):
            end = start + self.batch_size
            results += self._reflect_batch(items[start:end], all_hints[start:end])
        return results

    def _reflect_batch(
        self, items: Sequence[JudgeItem], hints: Sequence[str | None]
    ) -> list[Reflection]:
        began = time.perf_counter()
        describe = [
            Turn(describe_target_prompt(item.instruction), (item.source,)) for item in items
        ]
        descriptions = [g.text.strip() for g in self._generate(describe)]
        answers: dict[int, str] = {}
        checks: dict[int, ReflectionCheck] = {}
        tries = [0] * len(items)
        pending = list(range(len(items)))
        for _ in range(1 + self.retries):
            turns = []
            for i in pending:
                note = retry_note(checks[i].reason) if i in checks else ""
                item = items[i]
                turns.append(
                    reflect_turn(item.instruction, item.edited, descriptions[i], hints[i], note)
                )
            for i, generation in zip(pending, self._generate(turns), strict=True):
                answers[i] = generation.text
                checks[i] = validate_reflection(generation.text, items[i].instruction)
                tries[i] += 1
            pending = [i for i in pending if checks[i].tag == ReflectionTag.INVALID]
            if not pending:
                break
        latency = (time.perf_counter() - began) / len(items)
        return [
            Reflection(
                tag=checks[i].tag,
                new_instruction=checks[i].new_instruction,
                think=checks[i].think,
                target_description=descriptions[i],
                raw_output=answers[i],
                tries=tries[i],
                model=self.name,
                detail=checks[i].reason,
                latency_s=latency,
            )
            for i in range(len(items))
        ]

    def _generate(self, turns: list[Turn]) -> list[Generation]:
        return generate(self.vlm, turns, bounds=self.bounds, max_new_tokens=self.max_new_tokens)
