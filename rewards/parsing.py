"""Reading the three 1-5 scores out of a judge's answer, without ever guessing one.

ImgEdit's benchmark parser keeps every `Label: N` line with an integer N, silently drops `4.`, `4/5`
and `Score 2: 4 (...)`, and never checks that three scores came back; a peer system even returns a
random score when parsing fails (docs/design.md). This parser accepts the forms real models emit,
requires exactly the type's three dimensions, checks the range and applies ImgEdit-Judge's cap
(dimensions 2 and 3 not above dimension 1). Anything else is `unparseable`, with the reason.
"""

import re
from dataclasses import dataclass

from rewards.prompts import DIMENSIONS
from rewards.types import ParseStatus


@dataclass(frozen=True)
class ParsedScores:
    """The parser's answer: scores after the cap, as emitted, where they are, and why not."""

    status: ParseStatus
    values: tuple[float, float, float] | None  # after the cap; None when unparseable
    emitted: tuple[int, int, int] | None  # as the judge wrote them
    offsets: tuple[int, int, int] | None  # index in the text of each score's digit
    detail: str  # the reason when unparseable, the capped dimensions when capped


def _name_pattern(name: str) -> str:
    # Any run of spaces between words, "&" or "and", any case (flag below).
    words = [r"(?:&|and)" if word == "&" else re.escape(word) for word in name.split()]
    return r"[ \t]++".join(words)


_ALL_NAMES = sorted({n for names in DIMENSIONS.values() for n in names}, key=len, reverse=True)
_NAME_BY_KEY = {n.lower().replace("&", "and"): n for n in _ALL_NAMES}
# Possessive quantifiers (`*+`, `++`) keep matching linear on adversarial whitespace runs.
_SCORE_LINE = re.compile(
    r"(?<![\w&])"
    r"(?:(?P<name>" + "|".join(_name_pattern(n) for n in _ALL_NAMES) + r")"
    r"|score[ \t]*+\#?[ \t]*+(?P<position>[0-9]++))"
    r"[ \t]*+(?:\([^()\n]{0,24}\)[ \t]*+)?"  # "Prompt Compliance (1-5): 4"
    r"(?:(?:score|rating)[ \t]*+)?"  # "Prompt Compliance score: 4"
    r"(?:\*++[ \t]*+)?"  # "**Prompt Compliance**: 4"
    r"[:：=][ \t]*+(?:\*++[ \t]*+)?"
    r"(?P<sign>[+-])?(?P<value>[0-9]++(?:\.[0-9]++)?)"
    r"(?:[ \t]*+(?:/|out[ \t]++of)[ \t]*+(?P<scale>[0-9]++(?:\.[0-9]++)?))?",
    re.IGNORECASE,
)


def _unparseable(detail: str) -> ParsedScores:
    return ParsedScores(ParseStatus.UNPARSEABLE, None, None, None, detail)


def parse_scores(text: str, names: tuple[str, str, str]) -> ParsedScores:
    """Parse a judge answer that must rate exactly the dimensions `names` (in that order).

    Never raises on any `text`; an answer that is not three in-range integer scores for exactly
    these dimensions is `unparseable`, and nothing is made up.
    """
    if not text.strip():
        return _unparseable("empty output")
    keys = [n.lower().replace("&", "and") for n in names]
    found: dict[int, tuple[int, int]] = {}  # dimension index -> (score, offset of its digit)
    for match in _SCORE_LINE.finditer(text):
        if match["name"] is not None:
            key = re.sub(r"\s+", " ", match["name"].lower()).replace("&", "and")
            if key not in keys:
                return _unparseable(
                    f"score for {_NAME_BY_KEY[key]!r}, not a dimension of this type"
                )
            index = keys.index(key)
            label = names[index]
        else:
            position = int(match["position"])
            if not 1 <= position <= 3:
                return _unparseable(f"score for 'Score {position}', there are three dimensions")
            index = position - 1
            label = names[index]
        raw = (match["sign"] or "") + match["value"]
        scale = match["scale"]
        if scale is not None and float(scale) != 5:
            return _unparseable(f"{label}: {raw}/{scale} is not on the 1-5 scale")
        value = float(raw)
        if not value.is_integer():
            return _unparseable(f"{label}: {raw} is not an integer score")
        if not 1 <= value <= 5:
            return _unparseable(f"{label}: {raw} is outside 1-5")
        score = int(value)
        if index in found and found[index][0] != score:
            return _unparseable(f"{label}: two different scores ({found[index][0]} and {score})")
        found.setdefault(index, (score, match.start("value")))
    missing = [names[i] for i in range(3) if i not in found]
    if missing:
        return _unparseable(f"missing {', '.join(missing)}")
    emitted = (found[0][0], found[1][0], found[2][0])
    offsets = (found[0][1], found[1][1], found[2][1])
    values, capped = cap_scores(tuple(float(v) for v in emitted))
    if capped:
        detail = "capped " + ", ".join(f"{names[i]} {emitted[i]}→{emitted[0]}" for i in capped)
        return ParsedScores(ParseStatus.CAPPED, values, emitted, offsets, detail)
    return ParsedScores(ParseStatus.OK, values, emitted, offsets, "")


def cap_scores(
    values: tuple[float, ...],
) -> tuple[tuple[float, float, float], tuple[int, ...]]:
    """ImgEdit-Judge's rule: dimensions 2 and 3 are not above dimension 1; returns the lowered ones.

    `values` has three scores; the second result lists the indices (1, 2) that were lowered.
    """
    first, second, third = values
    capped = tuple(i for i, v in ((1, second), (2, third)) if v > first)
    return (first, min(second, first), min(third, first)), capped
