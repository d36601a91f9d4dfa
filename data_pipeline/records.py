"""Typed, validated records for Progress-Bench JSONL files (benchmark, RL) and SFT chat files."""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass

logger = logging.getLogger(__name__)

NA_STRINGS = frozenset({"n/a", "na"})
ROLES = frozenset({"system", "user", "assistant"})
IMAGE_PLACEHOLDER = "<image>"


class RecordError(ValueError):
    """A bad line in a record file; the message names file, line and field."""

    def __init__(self, path: str, line: int, field: str | None, message: str):
        self.path, self.line, self.field = path, line, field
        where = f"{path}:{line}" + (f": field '{field}'" if field else "")
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Record:
    source: str
    line: int
    id: str
    task_goal: str
    visual_demo: tuple[str, ...] | None
    text_demo: tuple[str, ...] | None
    total_steps: int
    observation: str
    closest_idx: int | None
    progress: float | None
    delta: float | None = None
    data_source: str | None = None
    camera_combination: str | None = None
    response: str | None = None

    @property
    def kind(self) -> str:
        return "visual" if self.visual_demo is not None else "text"

    @property
    def answerable(self) -> bool:
        return self.progress is not None

    @property
    def num_demos(self) -> int:
        return len(self.visual_demo if self.visual_demo is not None else self.text_demo)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.source, self.id, self.observation)


@dataclass(frozen=True)
class ChatRecord:
    """SFT chat sample: messages with `<image>` placeholders and the ordered image paths they stand for."""

    source: str
    line: int
    messages: tuple[tuple[str, str], ...]  # (role, content)
    images: tuple[str, ...]  # resolved against image_root when one was given

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.source, str(self.line), self.images[-1] if self.images else "")


def is_na(value) -> bool:
    return isinstance(value, str) and value.strip().lower() in NA_STRINGS


def parse_percent(value) -> float | None:
    """'33%' -> 0.33, '1.41%' -> 0.0141, 45 -> 0.45, 0.3 -> 0.3, 'n/a'/'na' -> None.

    A bare number with magnitude > 1 is read as percent. Signs are kept (deltas are negative).
    """
    if is_na(value):
        return None
    if isinstance(value, bool):
        raise ValueError(f"not a percentage: {value!r}")
    if isinstance(value, (int, float)):
        number, percent = float(value), False
    elif isinstance(value, str):
        text = value.strip()
        percent = text.endswith("%")
        try:
            number = float(text[:-1] if percent else text)
        except ValueError:
            raise ValueError(f"not a percentage: {value!r}") from None
    else:
        raise ValueError(f"not a percentage: {value!r}")
    if not math.isfinite(number):
        raise ValueError(f"not a percentage: {value!r}")
    return number / 100.0 if percent or abs(number) > 1 else number


def record_image_path(image_root: str, record: Record, file: str) -> str:
    return os.path.join(image_root, record.id, file)


def _parse_int(value, field: str, path: str, line: int) -> int | None:
    if is_na(value):
        return None
    if isinstance(value, bool):
        raise RecordError(path, line, field, f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise RecordError(path, line, field, f"expected an integer, got {value!r}")


def _str_list(obj: dict, field: str, path: str, line: int) -> tuple[str, ...]:
    value = obj[field]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise RecordError(path, line, field, f"expected a non-empty list of strings, got {value!r:.200}")
    return tuple(value)


def _require(obj: dict, field: str, path: str, line: int):
    if field not in obj:
        raise RecordError(path, line, field, "missing")
    return obj[field]


def _optional_str(obj: dict, field: str, path: str, line: int) -> str | None:
    value = obj.get(field)
    if value is not None and not isinstance(value, str):
        raise RecordError(path, line, field, f"expected a string, got {value!r:.200}")
    return value


def parse_record(obj: dict, source: str, path: str, line: int, image_root: str | None = None) -> Record:
    """Validate one decoded JSON object into a Record (raises RecordError)."""
    if not isinstance(obj, dict):
        raise RecordError(path, line, None, f"expected a JSON object, got {type(obj).__name__}")
    rid = _require(obj, "id", path, line)
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or str(rid) == "":
        raise RecordError(path, line, "id", f"expected a non-empty string, got {rid!r}")
    goal = _require(obj, "task_goal", path, line)
    if not isinstance(goal, str) or not goal.strip():
        raise RecordError(path, line, "task_goal", f"expected a non-empty string, got {goal!r:.200}")

    has_visual, has_text = "visual_demo" in obj, "text_demo" in obj
    if has_visual == has_text:
        raise RecordError(path, line, "visual_demo/text_demo", "exactly one of the two must be present")
    visual = _str_list(obj, "visual_demo", path, line) if has_visual else None
    text = _str_list(obj, "text_demo", path, line) if has_text else None

    total = _parse_int(_require(obj, "total_steps", path, line), "total_steps", path, line)
    if total is None or total < 1:
        raise RecordError(path, line, "total_steps", f"expected a positive integer, got {obj['total_steps']!r}")
    if visual is not None and len(visual) != total + 1:
        raise RecordError(path, line, "visual_demo",
                          f"has {len(visual)} frames, expected total_steps + 1 = {total + 1}")
    if text is not None and len(text) != total:
        raise RecordError(path, line, "text_demo", f"has {len(text)} steps, expected total_steps = {total}")
    num_demos = len(visual if visual is not None else text)

    stage = _require(obj, "stage_to_estimate", path, line)
    if isinstance(stage, list) and len(stage) == 1:
        stage = stage[0]
    if not isinstance(stage, str) or not stage:
        raise RecordError(path, line, "stage_to_estimate",
                          f"expected a file name or a one-element list, got {stage!r:.200}")

    closest = _parse_int(_require(obj, "closest_idx", path, line), "closest_idx", path, line)
    if closest is not None and not 1 <= closest <= num_demos:
        raise RecordError(path, line, "closest_idx", f"{closest} is outside 1..{num_demos} (number of demo steps)")
    try:
        progress = parse_percent(_require(obj, "progress_score", path, line))
    except ValueError as e:
        raise RecordError(path, line, "progress_score", str(e)) from None
    if progress is not None and not 0.0 <= progress <= 1.0:
        raise RecordError(path, line, "progress_score", f"{obj['progress_score']!r} is outside [0%, 100%]")
    if (closest is None) != (progress is None):
        raise RecordError(path, line, "closest_idx/progress_score", "must both be n/a or both be numbers")
    delta = None
    if obj.get("delta") is not None:
        try:
            delta = parse_percent(obj["delta"])
        except ValueError as e:
            raise RecordError(path, line, "delta", str(e)) from None

    record = Record(
        source=source, line=line, id=str(rid), task_goal=goal, visual_demo=visual, text_demo=text,
        total_steps=total, observation=stage, closest_idx=closest, progress=progress, delta=delta,
        data_source=_optional_str(obj, "data_source", path, line),
        camera_combination=_optional_str(obj, "camera_combination", path, line),
        response=_optional_str(obj, "response", path, line),
    )
    if image_root is not None:
        for field, files in (("visual_demo", visual or ()), ("stage_to_estimate", (stage,))):
            for file in files:
                full = record_image_path(image_root, record, file)
                if not os.path.isfile(full):
                    raise RecordError(path, line, field, f"image file not found: {full}")
    return record


def parse_chat_record(obj: dict, source: str, path: str, line: int, image_root: str | None = None) -> ChatRecord:
    """Validate one SFT chat object {"messages": [{role, content}], "images": [paths]}."""
    if not isinstance(obj, dict):
        raise RecordError(path, line, None, f"expected a JSON object, got {type(obj).__name__}")
    messages = _require(obj, "messages", path, line)
    if not isinstance(messages, list) or not messages:
        raise RecordError(path, line, "messages", "expected a non-empty list")
    parsed = []
    for i, m in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise RecordError(path, line, field,
                              f"expected {{role: system|user|assistant, content: str}}, got {m!r:.200}")
        parsed.append((m["role"], m["content"]))
    if parsed[-1][0] != "assistant":
        raise RecordError(path, line, "messages", "the last message must be the assistant answer")
    images = obj.get("images", [])
    if not isinstance(images, list) or not all(isinstance(p, str) and p for p in images):
        raise RecordError(path, line, "images", f"expected a list of paths, got {images!r:.200}")
    placeholders = sum(content.count(IMAGE_PLACEHOLDER) for _, content in parsed)
    if placeholders != len(images):
        raise RecordError(path, line, "images",
                          f"{len(images)} images but {placeholders} '<image>' placeholders in messages")
    if image_root is not None:
        images = [os.path.join(image_root, p) for p in images]
        for p in images:
            if not os.path.isfile(p):
                raise RecordError(path, line, "images", f"image file not found: {p}")
    return ChatRecord(source=source, line=line, messages=tuple(parsed), images=tuple(images))


def _read_jsonl(path, parse, image_root, strict):
    """Parses every non-blank line; returns the items and the RecordErrors of skipped lines."""
    path = os.fspath(path)
    source = os.path.splitext(os.path.basename(path))[0]
    items, errors = [], []
    with open(path, encoding="utf-8") as f:
        for line_no, text in enumerate(f, start=1):
            if not text.strip():
                continue  # blank lines hold no record
            try:
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    raise RecordError(path, line_no, None, f"bad JSON: {e}") from None
                items.append(parse(obj, source, path, line_no, image_root))
            except RecordError as e:
                if strict:
                    raise
                errors.append(e)
    if errors:
        shown = "\n  ".join(str(e) for e in errors[:10])
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        logger.warning("%s: skipped %d bad line(s), kept %d:\n  %s%s", path, len(errors), len(items), shown, more)
    return items, errors


def read_records(path, image_root=None, strict=True) -> tuple[list[Record], list[RecordError]]:
    """Like load_records, also returning the errors of lines skipped when strict=False."""
    return _read_jsonl(path, parse_record, image_root, strict)


def load_records(path, image_root=None, strict=True) -> list[Record]:
    """Benchmark / RL records of one JSONL file. strict=False skips bad lines and logs a summary."""
    return read_records(path, image_root, strict)[0]


def read_chat_records(path, image_root=None, strict=True) -> tuple[list[ChatRecord], list[RecordError]]:
    return _read_jsonl(path, parse_chat_record, image_root, strict)


def load_chat_records(path, image_root=None, strict=True) -> list[ChatRecord]:
    """SFT chat records of one JSONL file; image paths resolved against image_root when given."""
    return read_chat_records(path, image_root, strict)[0]
