"""ImgEdit-Judge: a Qwen2.5-VL that rates an edit on three 1-5 dimensions per edit type."""

import math
import time
from collections.abc import Sequence

import torch
from PIL import Image

from rewards.parsing import ParsedScores, cap_scores, parse_scores
from rewards.prompts import (
    JudgePrompts,
    dimension_names,
    editloop_prompts,
    image_count,
    judge_prompt,
)
from rewards.types import JudgeItem, ParseStatus, Scores
from rewards.vlm import Generation, PixelBounds, Turn, VisionLanguageModel, generate, token_offsets
from store.taxonomy import EditType

DIGITS = ("1", "2", "3", "4", "5")


def check_items(items: Sequence[JudgeItem]) -> None:
    """Reject items no judge can rate: a non-image, an empty instruction, an unknown edit type."""
    for i, item in enumerate(items):
        if not isinstance(item.source, Image.Image) or not isinstance(item.edited, Image.Image):
            raise ValueError(f"items[{i}]: source and edited must be PIL images")
        if not isinstance(item.instruction, str) or not item.instruction.strip():
            raise ValueError(f"items[{i}].instruction is empty")
        if not isinstance(item.edit_type, EditType):
            raise ValueError(f"items[{i}].edit_type={item.edit_type!r} is not an EditType")


def judge_turn(item: JudgeItem, prompts: JudgePrompts) -> Turn:
    """ImgEdit-Judge's single user turn: prompt, then source and edited (extract: edited only)."""
    text = judge_prompt(prompts, item.edit_type, item.instruction)
    images = (item.source, item.edited) if image_count(item.edit_type) == 2 else (item.edited,)
    return Turn(text, images)


def expected_score(digit_logits: torch.Tensor) -> float:
    """Expected value over 1-5 from the logits of the tokens "1".."5" at one step, shape (5,).

    The Edit-R1 reward server reads its judge this way (docs/design.md): renormalising over the five
    digits is a softmax over their logits alone.
    """
    probs = torch.softmax(digit_logits.double(), dim=0)
    return float((probs * torch.arange(1, 6, dtype=torch.float64)).sum())


def token_at(ends: Sequence[int], offset: int) -> int | None:
    """Index of the token starting exactly at character `offset`, given each token's end offset."""
    start = 0
    for index, end in enumerate(ends):
        if start == offset and end > offset:
            return index
        if start > offset:
            return None
        start = end
    return None


class ImgEditJudge:
    """Scores edits with an ImgEdit-Judge-style Qwen2.5-VL: batched, greedy, per-type prompts.

    `continuous` replaces each integer with the expected value over 1-5 at the step that emitted
    it, the cap applied again; the parse status still comes from the integers the model wrote.
    """

    def __init__(
        self,
        vlm: VisionLanguageModel,
        *,
        prompts: JudgePrompts | None = None,
        bounds: PixelBounds = PixelBounds(),
        batch_size: int = 8,
        max_new_tokens: int = 128,
        continuous: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: expected 1 or more")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens}: expected 1 or more")
        self.vlm = vlm
        self.prompts = prompts if prompts is not None else editloop_prompts()
        self.bounds = bounds
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.continuous = continuous
        self.digit_ids: tuple[int, ...] = ()
        if continuous:
            tokenizer = vlm.processor.tokenizer
            ids = tuple(tokenizer.convert_tokens_to_ids(d) for d in DIGITS)
            if any(tokenizer.decode([i]) != d for i, d in zip(ids, DIGITS, strict=True)):
                raise ValueError(
                    f"{vlm.name}: continuous scoring needs the digits 1-5 as single tokens"
                )
            self.digit_ids = ids

    @property
    def name(self) -> str:
        """The judge model's id as stored with each judgment."""
        return self.vlm.name

    def score(self, items: Sequence[JudgeItem]) -> list[Scores]:
        """One `Scores` per item, in order; an answer that cannot be read is `unparseable`."""
        check_items(items)
        results: list[Scores] = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            began = time.perf_counter()
            generations = generate(
                self.vlm,
                [judge_turn(item, self.prompts) for item in chunk],
                bounds=self.bounds,
                max_new_tokens=self.max_new_tokens,
                logit_token_ids=self.digit_ids,
            )
            # Latency is the batch's wall time shared evenly: what one judgment costs.
            latency = (time.perf_counter() - began) / len(chunk)
            results += [
                self._read(item, generation, latency)
                for item, generation in zip(chunk, generations, strict=True)
            ]
        return results

    def _read(self, item: JudgeItem, generation: Generation, latency: float) -> Scores:
        names = dimension_names(item.edit_type)
        parsed = parse_scores(generation.text, names)
        values, status, detail = parsed.values, parsed.status, parsed.detail
        # Logits are there exactly when `continuous` asked `generate` for the digits' columns.
        if values is not None and generation.logits is not None:
            expected = expected_values(
                parsed, generation, token_offsets(self.vlm, generation.token_ids), self.digit_ids
            )
            # The cap applies to the expected values too, as to the integers.
            values, capped = cap_scores(expected)
            if capped and status == ParseStatus.OK:
                status = ParseStatus.CAPPED
                detail = "capped " + ", ".join(f"{names[i]} (expected value)" for i in capped)
        return Scores(
            following=values[0] if values else None,
            quality=values[1] if values else None,
            preservation=values[2] if values else None,
            # ImgEdit-Bench: an item's score is the mean of its three dimensions.
            overall=sum(values) / 3 if values else None,
            dimension_names=names,
            status=status,
            raw_output=generation.text,
            latency_s=latency,
            model=self.name,
            detail=detail,
        )


def expected_values(
    parsed: ParsedScores,
    generation: Generation,
    token_ends: Sequence[int],
    digit_ids: Sequence[int],
) -> tuple[float, ...]:
    """Each parsed score replaced by the expected value at the step that emitted its digit.

    `token_ends` is each generated token's end offset in the text, `digit_ids` the ids of the
    tokens "1".."5" (the columns of `generation.logits`). Where the digit is not a token of its
    own, or the logits are not finite, the integer the model wrote is kept: nothing is made up.
    """
    if parsed.values is None or parsed.offsets is None or parsed.emitted is None:
        raise ValueError(f"no scores to refine: {parsed.detail}")
    if generation.logits is None:
        raise ValueError("the generation carries no logits")
    result = []
    for value, emitted, offset in zip(parsed.values, parsed.emitted, parsed.offsets, strict=True):
        index = token_at(token_ends, offset)
        score = math.nan
        if index is not None and generation.token_ids[index] == digit_ids[emitted - 1]:
            score = expected_score(generation.logits[index])
        result.append(score if math.isfinite(score) else value)
    return tuple(result)
