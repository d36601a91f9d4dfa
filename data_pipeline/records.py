"""Typed, validated records for Progress-Bench JSONL files (benchmark, RL) and SFT chat files.

File formats, the lines the official loaders skip and why: docs/formats.md.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

from data_pipeline.jsonl import read_json_lines

logger = logging.getLogger(__name__)

NA_STRINGS = frozenset({"n/a", "na"})
ROLES = frozenset({"system", "user", "assistant"})
IMAGE_PLACEHOLDER = "<image>"


class RecordError(ValueError):
    """A bad line in a record file; the message names file, line and field."""

    def __init__(self, path: str, line: int, field: str | None, message: str):
        self.path, self.line, self.field = path, line, field
        where = f"{path}:{line}" + (f": field '{field}'" if field else "")
        self.reason = message
        super().__init__(f"{where}: {message}")

    def __reduce__(self):  # picklable (worker processes pass errors back)
        return (type(self), (self.path, self.line, self.field, self.reason))


class SkippedLine(RecordError):
    """A line the official ProgressLM loaders skip with a warning (a missing field, an empty task_goal,
    a step list whose length disagrees with total_steps): skipped and counted unless strict=True."""


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
    path: str | None = None  # the file the record was read from (for messages naming file and line)

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
        """(setting, id, observation). Not unique: the official files repeat a few (id, observation)
        pairs with different ground truth; `line` tells those apart (docs/formats.md)."""
        return (self.source, self.id, self.observation)


@dataclass(frozen=True)
class ChatRecord:
    """SFT chat sample: messages with `<image>` placeholders and the ordered image paths they stand for."""

    source: str
    line: int
    messages: tuple[tuple[str, str], ...]  # (role, content)
    images: tuple[str, ...]  # resolved against image_root when one was given
    path: str | None = None

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
        raise RecordError(path, line, field, f"expected an integer, got {value!r:.100}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise RecordError(path, line, field, f"expected an integer, got {value!r:.100}")


def _str_list(obj: dict, field: str, path: str, line: int) -> tuple[str, ...]:
    """A non-empty list of strings; file names must be non-empty, text steps may be (the official
    raw_train text files hold a few empty steps)."""
    value = obj[field]
    files = field == "visual_demo"
    if (not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value)
            or (files and not all(value))):
        what = "file names" if files else "strings"
        raise RecordError(path, line, field, f"expected a non-empty list of {what}, got {value!r:.200}")
    return tuple(value)


def _optional_str(obj: dict, field: str, path: str, line: int) -> str | None:
    value = obj.get(field)
    if value is not None and not isinstance(value, str):
        raise RecordError(path, line, field, f"expected a string, got {value!r:.200}")
    return value


# The fields every benchmark / RL line needs; besides these exactly one of visual_demo / text_demo.
REQUIRED = ("id", "task_goal", "stage_to_estimate", "progress_score", "closest_idx", "total_steps")


def parse_record(obj: dict, source: str, path: str, line: int, image_root: str | None = None) -> Record:
    """Validate one decoded JSON object into a Record. Raises SkippedLine for the lines the official
    loaders skip (docs/formats.md), RecordError for any other defect."""
    if not isinstance(obj, dict):
        raise RecordError(path, line, None, f"expected a JSON object, got {type(obj).__name__}")
    has_visual, has_text = "visual_demo" in obj, "text_demo" in obj
    if has_visual and has_text:
        raise RecordError(path, line, "visual_demo/text_demo", "exactly one of the two must be present")
    missing = [f for f in REQUIRED if f not in obj] + ([] if has_visual or has_text else ["visual_demo/text_demo"])
    if missing:
        raise SkippedLine(path, line, missing[0], f"missing field(s) {', '.join(missing)}")
    goal = obj["task_goal"]
    if not isinstance(goal, str) or not goal.strip():
        raise SkippedLine(path, line, "task_goal", f"expected a non-empty string, got {goal!r:.200}")
    rid = obj["id"]
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or str(rid) == "":
        raise RecordError(path, line, "id", f"expected a non-empty string, got {rid!r:.100}")

    visual = _str_list(obj, "visual_demo", path, line) if has_visual else None
    text = _str_list(obj, "text_demo", path, line) if has_text else None
    total = _parse_int(obj["total_steps"], "total_steps", path, line)
    if total is None or total < 1:
        raise RecordError(path, line, "total_steps", f"expected a positive integer, got {obj['total_steps']!r:.100}")
    if visual is not None and len(visual) != total + 1:
        raise SkippedLine(path, line, "visual_demo",
                          f"has {len(visual)} frames, expected total_steps + 1 = {total + 1}")
    if text is not None and len(text) != total:
        raise SkippedLine(path, line, "text_demo", f"has {len(text)} steps, expected total_steps = {total}")
    num_demos = len(visual if visual is not None else text)

    stage = obj["stage_to_estimate"]
    if isinstance(stage, list) and len(stage) == 1:
        stage = stage[0]
    if not isinstance(stage, str) or not stage:
        raise RecordError(path, line, "stage_to_estimate",
                          f"expected a file name or a one-element list, got {stage!r:.200}")

    closest = _parse_int(obj["closest_idx"], "closest_idx", path, line)
    if closest is not None and not 1 <= closest <= num_demos:
        raise RecordError(path, line, "closest_idx", f"{closest} is outside 1..{num_demos} (number of demo steps)")
    try:
        progress = parse_percent(obj["progress_score"])
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
        response=_optional_str(obj, "response", path, line), path=path,
    )
    if image_root is not None:
        check_images(record, image_root)
    return record


def check_images(record: Record, image_root: str) -> None:
    """Every image of a record exists under image_root, else a RecordError naming the record's file and line."""
    for field, files in (("visual_demo", record.visual_demo or ()), ("stage_to_estimate", (record.observation,))):
        for file in files:
            full = record_image_path(image_root, record, file)
            if not os.path.isfile(full):
                raise RecordError(record.path or record.source, record.line, field, f"image file not found: {full}")


def parse_chat_record(obj: dict, source: str, path: str, line: int, image_root: str | None = None) -> ChatRecord:
    """Validate one SFT chat object {"messages": [{role, content}], "images": [paths]} (LLaMA-Factory's
    sharegpt layout with role/content tags, as the official SFT files ship; docs/formats.md)."""
    if not isinstance(obj, dict):
        raise RecordError(path, line, None, f"expected a JSON object, got {type(obj).__name__}")
    if "messages" not in obj:
        raise RecordError(path, line, "messages", "missing")
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise RecordError(path, line, "messages", f"expected a non-empty list, got {messages!r:.100}")
    parsed = []
    for i, m in enumerate(messages):
        field = f"messages[{i}]"
        role = m.get("role") if isinstance(m, dict) else None
        if not isinstance(role, str) or role not in ROLES or not isinstance(m.get("content"), str):
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
    return ChatRecord(source=source, line=line, messages=tuple(parsed), images=tuple(images), path=path)


@dataclass
class FileScan:
    """Everything one pass over a record file found: parsed items, official skips, other errors."""
    path: str
    lines: int  # non-blank lines
    items: list
    skipped: list[SkippedLine]
    errors: list[RecordError]


def scan_file(path, parse, image_root=None) -> FileScan:
    """Parse every non-blank line with `parse`, collecting (not raising) the errors of bad lines."""
    path = os.fspath(path)
    source = os.path.splitext(os.path.basename(path))[0]
    scan = FileScan(path, 0, [], [], [])
    for entry in read_json_lines(path):
        scan.lines += 1
        try:
            if entry.error is not None:
                raise RecordError(path, entry.number, None, entry.error)
            scan.items.append(parse(entry.obj, source, path, entry.number, image_root))
        except SkippedLine as e:
            scan.skipped.append(e)
        except RecordError as e:
            scan.errors.append(e)
    return scan


def _read_jsonl(path, parse, image_root, strict):
    """The items of a record file and its skipped lines. A line the official loaders skip is skipped
    with one warning naming file, line and reason, and a count at the end (strict=True: raised);
    any other bad line raises its RecordError."""
    scan = scan_file(path, parse, image_root)
    first = min(scan.errors + (scan.skipped if strict else []), key=lambda e: e.line, default=None)
    if first is not None:
        raise first
    if scan.skipped and not scan.items:
        kind = file_format(scan.path)
        hint = f" (it looks like a {kind} file)" if kind not in (None, "bench" if parse is parse_record else "chat") else ""
        raise RecordError(scan.path, scan.skipped[0].line, scan.skipped[0].field,
                          f"all {len(scan.skipped)} line(s) would be skipped{hint}; first: {scan.skipped[0].reason}")
    for e in scan.skipped:
        logger.warning("skipped %s", e)
    if scan.skipped:
        logger.warning("%s: skipped %d line(s) as the official loaders do, kept %d (docs/formats.md)",
                       scan.path, len(scan.skipped), len(scan.items))
    return scan.items, scan.skipped


def read_records(path, image_root=None, strict=False) -> tuple[list[Record], list[SkippedLine]]:
    """Like load_records, also returning the skipped lines."""
    return _read_jsonl(path, parse_record, image_root, strict)


def load_records(path, image_root=None, strict=False) -> list[Record]:
    """Benchmark / RL records of one JSONL file. Lines the official loaders skip are skipped with a
    warning (strict=True: raised); any other bad line raises RecordError naming file, line and field."""
    return read_records(path, image_root, strict)[0]


def read_chat_records(path, image_root=None, strict=False) -> tuple[list[ChatRecord], list[SkippedLine]]:
    return _read_jsonl(path, parse_chat_record, image_root, strict)


def load_chat_records(path, image_root=None, strict=False) -> list[ChatRecord]:
    """SFT chat records of one JSONL file; image paths resolved against image_root when given."""
    return read_chat_records(path, image_root, strict)[0]


# The line layouts the project reads, told apart by their first decodable line (docs/formats.md).
FORMATS = ("bench", "chat", "results", "predictions")


def file_format(path) -> str | None:
    """'chat' (SFT messages), 'results' (an official harness's output, nested meta_data),
    'predictions' (this project's predictions), 'bench' (benchmark / RL records); None when the
    file has no decodable JSON object line."""
    for entry in read_json_lines(os.fspath(path)):
        if isinstance(entry.obj, dict):
            if "messages" in entry.obj:
                return "chat"
            if isinstance(entry.obj.get("meta_data"), dict):
                return "results"
            if "setting" in entry.obj:
                return "predictions"
            return "bench"
    return None
