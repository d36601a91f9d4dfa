"""The one parser of model outputs, shared by evaluation and RL rewards.

Two score conventions live here and differ on purpose (REFERENCE §3 vs §5):
- eval rule (`eval_score_value`): "45%" -> 0.45, a bare number > 1 is percent ("45" -> 0.45)
  but a bare number <= 1 is a fraction ("0.45" -> 0.45), then clamped to [0, 1];
- reward rule (`read_reward_score`): a number is always percent ("45" and "45%" -> 45.0,
  "0.45" -> 0.45 percent), not clamped.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# Statuses of a value read from a tag or an answer.
NUMBER, NA, UNPARSEABLE = "number", "na", "unparseable"

TAG_NA = frozenset({"n/a", "na"})
DIRECT_NA = frozenset({"n/a", "na", "none", "null", "-"})

_NUM = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_NUMBER_TEXT = re.compile(rf"\s*({_NUM})\s*(%?)\s*")  # fullmatch: a whole tag content
_NUMBER_PERCENT = re.compile(rf"({_NUM})\s*%")
_ANY_NUMBER = re.compile(_NUM)
_INTEGER = re.compile(r"\d+")
_SCORE_TAG = re.compile(r"<score>(.*?)</score>", re.DOTALL)
_REF_TAG = re.compile(r"<ref>(.*?)</ref>", re.DOTALL)

BLOCKS = ("ref_think", "ref", "score_think", "score")
_STRICT_FORMAT = re.compile(
    r"\s*<ref_think>.*?</ref_think>\s*"
    r"<ref>\s*(?:\d+|(?i:n/a))\s*</ref>\s*"
    r"<score_think>.*?</score_think>\s*"
    r"<score>\s*(?:\d+(?:\.\d+)?\s*%?|(?i:n/a))\s*</score>\s*",
    re.DOTALL,
)


@dataclass(frozen=True)
class ParsedAnswer:
    """A parsed eval answer. score in [0, 1] or None (an N/A prediction); ref 1-based or None."""

    score: float | None
    ref: int | None
    status: str  # NUMBER, NA (the model said n/a) or UNPARSEABLE (missing or garbled score)

    @property
    def na(self) -> bool:
        return self.score is None

    @property
    def unparseable(self) -> bool:
        return self.status == UNPARSEABLE


def _clamp01(x: float) -> float:
    return min(max(x, 0.0), 1.0)


def eval_score_value(number: float, percent: bool) -> float:
    """Eval rule: X% -> X/100; a bare number > 1 -> /100; clamp to [0, 1]."""
    return _clamp01(number / 100.0 if percent or number > 1.0 else number)


def _tag_content(pattern: re.Pattern, text: str) -> str | None:
    match = pattern.search(text)
    return None if match is None else match.group(1).strip()


def parse_score_text(text: str) -> tuple[str, float | None]:
    """Eval rule on a score string (a tag's content): (status, score in [0, 1] or None)."""
    text = text.strip()
    if text.lower() in TAG_NA:
        return NA, None
    match = _NUMBER_TEXT.fullmatch(text)
    if match is None:
        return UNPARSEABLE, None
    return NUMBER, eval_score_value(float(match.group(1)), bool(match.group(2)))


def read_ref(text: str) -> tuple[str, int | None]:
    """`<ref>` wherever it stands: n/a, else the first integer inside, else unparseable."""
    content = _tag_content(_REF_TAG, text)
    if content is None:
        return UNPARSEABLE, None
    if content.lower() in TAG_NA:
        return NA, None
    match = _INTEGER.search(content)
    return (NUMBER, int(match.group())) if match else (UNPARSEABLE, None)


def parse_think(response: str) -> ParsedAnswer:
    """Four-block answer: score from the first `<score>...</score>`, ref from `<ref>`."""
    ref = read_ref(response)[1]
    content = _tag_content(_SCORE_TAG, response)
    if content is None:
        return ParsedAnswer(None, ref, UNPARSEABLE)
    status, score = parse_score_text(content)
    return ParsedAnswer(score, ref, status)


def parse_direct(response: str) -> ParsedAnswer:
    """Score-only answer, tried in order: a number followed by %; the whole answer a bare number;
    any number in it. "n/a", "na", "none", "null", "-" (whole answer, any case) -> N/A."""
    text = response.strip()
    if text.lower().rstrip(".") in DIRECT_NA:
        return ParsedAnswer(None, None, NA)
    match = _NUMBER_PERCENT.search(text)
    if match:
        return ParsedAnswer(eval_score_value(float(match.group(1)), True), None, NUMBER)
    match = _NUMBER_TEXT.fullmatch(text)
    number = match.group(1) if match else None
    if number is None:
        match = _ANY_NUMBER.search(text)
        number = match.group() if match else None
    if number is None:
        return ParsedAnswer(None, None, UNPARSEABLE)
    return ParsedAnswer(eval_score_value(float(number), False), None, NUMBER)


MODES = ("think", "direct")


def parse_response(response: str, mode: str = "think") -> ParsedAnswer:
    if mode == "think":
        return parse_think(response)
    if mode == "direct":
        return parse_direct(response)
    raise ValueError(f"unknown parse mode {mode!r}; expected one of {MODES}")


# ---- RL reward reads (REFERENCE §5) ----

def read_reward_score(text: str) -> tuple[str, float | None]:
    """`<score>` wherever it stands, in PERCENT: "45%" and "45" -> 45.0; n/a -> NA; else unparseable."""
    content = _tag_content(_SCORE_TAG, text)
    if content is None:
        return UNPARSEABLE, None
    if content.lower() in TAG_NA:
        return NA, None
    match = _NUMBER_TEXT.fullmatch(content)
    return (NUMBER, float(match.group(1))) if match else (UNPARSEABLE, None)


def strict_format_ok(response: str) -> bool:
    """The whole response is exactly the four blocks in order: whitespace allowed around and between
    blocks, nothing else outside; `<ref>` digits or n/a; `<score>` a number with optional % or n/a.
    Every tag must occur exactly once, so no block can hide a second answer inside a think block."""
    for name in BLOCKS:
        if response.count(f"<{name}>") != 1 or response.count(f"</{name}>") != 1:
            return False
    return _STRICT_FORMAT.fullmatch(response) is not None
