"""The one parser of model outputs, shared by evaluation and RL rewards.

Score conventions live here and differ on purpose (docs/rewards.md for the reward reads):
- eval rule (`eval_score_value`): "45%" -> 0.45, a bare number > 1 is percent ("45" -> 0.45)
  but a bare number <= 1 is a fraction ("0.45" -> 0.45), then clamped to [0, 1];
- reward reads (the RL section below): a number is always percent ("45" and "45%" -> 45.0,
  "0.45" -> 0.45 percent), not clamped; each reward function has its own tag reads.
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


def _digits_int(digits: str) -> int | None:
    """int() of a run of digits; None past Python's cap on the digits int() converts (4300 by default
    since 3.11, a ValueError there). The official paper reward reads such a ref as no ref, through
    its own try/except (docs/rewards.md, "Non-finite and huge numbers")."""
    try:
        return int(digits)
    except ValueError:
        return None


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
    value = None if (match := _INTEGER.search(content)) is None else _digits_int(match.group())
    return (UNPARSEABLE, None) if value is None else (NUMBER, value)


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


# ---- the official qwen25vl runners' read (eval and CoT generation) ----
# parse_*_demo_response of eval/qwen25vl/codes/run_{visual,text}_demo*.py (the CoT-generation runners
# share it) and the fields the runners then write; eval/metric.py scores those fields, not the text.

_RUN_REF = re.compile(r"<ref>(.*?)</ref>", re.DOTALL)
_RUN_SCORE = re.compile(r"<score>(.*?)</score>", re.DOTALL)
_RUN_DIGITS = re.compile(r"\d+")


def official_percent_text(fraction: float) -> str:
    """A fraction as the official runners write it: int(fraction * 100) truncates (0.29 -> "28%")."""
    return f"{int(fraction * 100)}%"


def official_runner_fields(text: str) -> tuple[str, str | None, bool]:
    """(ref, score, parsed) as the official runners write them for a response: ref "n/a" (n/a or na,
    any case), else the first integer in `<ref>`, else the tag's text ("" without a tag); score "n/a",
    or official_percent_text of the number read (X% -> X / 100, a bare number > 1 -> / 100, clamped
    to [0, 1]), None when unreadable; parsed False (status "failed") when `<score>` is missing or
    unreadable."""
    ref = ""
    match = _RUN_REF.search(text)
    if match:
        content = match.group(1).strip()
        digits = _RUN_DIGITS.search(content)
        ref = "n/a" if content.lower() in ("n/a", "na") else str(int(digits.group())) if digits else content
    match = _RUN_SCORE.search(text)
    if match is None:
        return ref, None, False
    content = match.group(1).strip()
    if content.lower() in ("n/a", "na"):
        return ref, "n/a", True
    try:
        if content.endswith("%"):
            value = float(content[:-1]) / 100.0
        else:
            value = float(content)
            value = value / 100.0 if value > 1.0 else value
    except ValueError:
        return ref, None, False
    return ref, official_percent_text(max(0.0, min(1.0, value))), True


# ---- RL reward reads (see docs/rewards.md) ----
# Each reward function reads the tags its own way; the official two are reproduced exactly, the
# project's earlier reading stays as the "lenient" one.

# paper: EasyR1/progresslm/reward/visual_demo_reward.py. Case-sensitive tags and `n/a`; ref digits;
# score digits with an optional fraction and one `%` glued to it (no sign, no space before `%`).
# The first tag whose content has this form wins (re.search), so `<ref>x</ref> <ref>2</ref>` reads 2.
_PAPER_REF = re.compile(r"<ref>\s*(\d+|n/a)\s*</ref>")
_PAPER_SCORE = re.compile(r"<score>\s*([0-9]+(?:\.[0-9]+)?%?|n/a)\s*</score>")
_PAPER_FORMAT = re.compile(
    r"\s*<ref_think>.*?</ref_think>\s*"
    r"<ref>\s*(?:\d+|n/a)\s*</ref>\s*"
    r"<score_think>.*?</score_think>\s*"
    r"<score>\s*(?:[0-9]+(?:\.[0-9]+)?%?|n/a)\s*</score>\s*",
    re.DOTALL,
)


def paper_read_ref(text: str) -> tuple[str, int | None]:
    match = _PAPER_REF.search(text)
    if match is None:
        return UNPARSEABLE, None
    value = match.group(1)
    if value == "n/a":
        return NA, None
    number = _digits_int(value)
    return (UNPARSEABLE, None) if number is None else (NUMBER, number)


def paper_read_score(text: str) -> tuple[str, float | None]:
    """In percent, never clamped: "45%" and "45" -> 45.0, "0.45" -> 0.45, "150%" -> 150.0."""
    match = _PAPER_SCORE.search(text)
    if match is None:
        return UNPARSEABLE, None
    value = match.group(1)
    return (NA, None) if value == "n/a" else (NUMBER, float(value.rstrip("%")))


def paper_format_ok(response: str) -> bool:
    """The four blocks in order with only whitespace around and between them (think blocks may
    contain anything, other tags included)."""
    return _PAPER_FORMAT.fullmatch(response.strip()) is not None


# anti_hack: EasyR1/progresslm/reward/progresslm_reward.py. Tags and `n/a` in any case; a tag's
# content is anything without `<` (the first non-empty one wins), read by anti_hack_ref_value /
# anti_hack_score_value. Its format pattern's `(?:.*?|n/a)` in score_think matches what `.*?` does.
_AH_REF = re.compile(r"<ref>\s*([^<]+)\s*</ref>", re.IGNORECASE)
_AH_SCORE = re.compile(r"<score>\s*([^<]+)\s*</score>", re.IGNORECASE)
_AH_SCORE_THINK = re.compile(r"<score_think>\s*(.*?)\s*</score_think>", re.DOTALL | re.IGNORECASE)
_AH_FORMAT = re.compile(
    r"\s*<ref_think>.*?</ref_think>\s*"
    r"<ref>\s*[^<]+\s*</ref>\s*"
    r"<score_think>\s*.*?\s*</score_think>\s*"
    r"<score>\s*(?:[0-9]+(?:\.[0-9]+)?%?|n/a)\s*</score>\s*",
    re.DOTALL | re.IGNORECASE,
)
_DIGITS = re.compile(r"\d+")


def _ah_tag(pattern: re.Pattern, text: str) -> str | None:
    match = pattern.search(text)
    return None if match is None else match.group(1).strip()


def anti_hack_ref_text(text: str) -> str | None:
    return _ah_tag(_AH_REF, text)


def anti_hack_score_text(text: str) -> str | None:
    return _ah_tag(_AH_SCORE, text)


def anti_hack_score_think(text: str) -> str:
    """The first `<score_think>` content, stripped; "" when there is none."""
    return _ah_tag(_AH_SCORE_THINK, text) or ""


def anti_hack_format_ok(response: str) -> bool:
    return _AH_FORMAT.fullmatch(response.strip()) is not None


def anti_hack_ref_value(raw) -> tuple[bool, int | None]:
    """(is_na, value) of a ref, predicted or ground truth: a number (bool included, as Python counts
    it) if integral; a string: "n/a" in any case, else int(), else its first run of digits
    ("No. 8" -> 8, "3.5" -> 3, "-2" -> -2 through int()); anything else (None, lists) -> (False, None)."""
    if isinstance(raw, (int, float)):
        if isinstance(raw, float) and not raw.is_integer():
            return False, None
        return False, int(raw)
    if isinstance(raw, str):
        text = raw.strip()
        if text.lower() == "n/a":
            return True, None
        try:
            return False, int(text)
        except ValueError:
            pass
        digits = _DIGITS.findall(text)
        # (The official float() fallback after this only ever succeeds on inf/nan, which are not
        # integral and end in (False, None) as well.)
        return False, _digits_int(digits[0]) if digits else None  # None past int()'s cap: the official code raises
    return False, None


def anti_hack_score_value(raw) -> tuple[bool, float | None]:
    """(is_na, value in percent) of a score: a number as is; a string: "n/a" in any case, else
    float() after dropping one trailing `%` (so "-5", "1e2", "nan" are numbers); else (False, None)."""
    if isinstance(raw, (int, float)):
        return False, float(raw)
    if isinstance(raw, str):
        text = raw.strip()
        if text.lower() == "n/a":
            return True, None
        if text.endswith("%"):
            text = text[:-1].strip()
        try:
            return False, float(text)
        except ValueError:
            pass
    return False, None


# lenient (the project's earlier reading, reward variants paper_lenient / anti_hack_gt_free):
# n/a or na in any case, a sign and spaces allowed, the first `<score>` tag whatever it holds.

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
