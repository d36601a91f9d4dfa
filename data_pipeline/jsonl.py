"""JSONL files: one reader for every line-oriented input, append-only writers that survive a killed
writer, and an atomic whole-file write.

One rule for a half-written tail, the last line with no newline after it that does not decode (what a
writer killed mid-line leaves): in a file the project appends to (JsonlAppender: resumable outputs and
their rejects, the review queue and decisions, predictions, training metrics) it is left out with a
warning naming file and line (scan_appended, read_appended), so its record is redone, and the next
JsonlAppender on the file cuts it off (drop_partial_tail). In an input file it is a bad line like any other: an error naming file and line.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from typing import NamedTuple

from data_pipeline.paths import atomic_output

logger = logging.getLogger(__name__)


class JsonLine(NamedTuple):
    number: int  # 1-based line number in the file
    obj: object  # the decoded value, None when error is set
    error: str | None  # why the line could not be decoded (bad UTF-8, bad JSON)
    unterminated: bool  # the file's last line, with no newline after it (a killed writer?)


def read_json_lines(path) -> Iterator[JsonLine]:
    """Every non-blank line of a JSONL file, decoded. A UTF-8 byte-order mark at the start is
    ignored; a line that is not UTF-8 or not JSON comes back with `error` set, never raised, so
    that callers can name the file and line in their own error type."""
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    raw_lines = data.split(b"\n")
    last = len(raw_lines) - 1
    for i, raw in enumerate(raw_lines):
        if not raw.strip():
            continue
        unterminated = i == last
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield JsonLine(i + 1, None, f"not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 4]!r})", unterminated)
            continue
        try:
            yield JsonLine(i + 1, json.loads(text), None, unterminated)
        except (ValueError, RecursionError) as e:
            yield JsonLine(i + 1, None, f"bad JSON: {e}", unterminated)


class AppendedLines(NamedTuple):
    lines: list[JsonLine]  # every other non-blank line as read_json_lines gives it, bad ones included
    truncated_line: int | None  # the half-written last line that was left out, or None


def scan_appended(path) -> AppendedLines:
    """The lines of a file the project appends to under the module's one rule for a half-written
    tail: that line is left out with a warning naming file and line, and its number is returned.
    Any other bad line comes back with `error` set, for the caller to raise in its own error type."""
    path = os.fspath(path)
    lines, truncated = [], None
    for entry in read_json_lines(path):
        if entry.error is not None and entry.unterminated:
            truncated = entry.number
            logger.warning("%s:%d: ignoring a truncated last line (%s) left by an interrupted run; that record "
                           "is redone", path, entry.number, entry.error)
            continue
        lines.append(entry)
    return AppendedLines(lines, truncated)


def read_appended(path, missing_ok: bool = False) -> list[tuple[int, dict]]:
    """(line number, object) for every line of a file the project appends to (scan_appended's rule for
    a half-written tail); any other bad line, or one that is not a JSON object, raises ValueError
    naming file and line. A missing file is an error unless missing_ok (then it has no lines)."""
    path = os.fspath(path)
    if missing_ok and not os.path.exists(path):
        return []
    out = []
    for entry in scan_appended(path).lines:
        if entry.error is not None:
            raise ValueError(f"{path}:{entry.number}: {entry.error}")
        if not isinstance(entry.obj, dict):
            raise ValueError(f"{path}:{entry.number}: expected a JSON object, got {type(entry.obj).__name__}")
        out.append((entry.number, entry.obj))
    return out


def drop_partial_tail(path: str) -> None:
    """Before appending: a last line without newline that is not valid JSON (a killed run) is cut
    off and logged; a complete line that only lacks its newline gets one."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        start = data.rfind(b"\n") + 1
        try:
            json.loads(data[start:])
            f.write(b"\n")
        except ValueError:
            f.truncate(start)
            logger.warning("%s: dropped a truncated last line (line %d, %d bytes) left by an interrupted run; "
                           "that record is redone", path, data.count(b"\n") + 1, len(data) - start)


class JsonlAppender:
    """Appends one JSON line per call and flushes it (fsync=True also syncs it to disk), so a crash
    loses at most the line being written. A truncated last line left by a crash is cut off first."""

    def __init__(self, path, fsync: bool = False):
        self.path, self.fsync = os.fspath(path), fsync
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        drop_partial_tail(self.path)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, obj) -> None:
        self._file.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_text(path, text: str) -> None:
    """Write a whole UTF-8 text file atomically (paths.atomic_output): readers never see half a file."""
    with atomic_output(path) as f:
        f.write(text)


def write_jsonl(path: str, objects: list[dict]) -> None:
    """Write a whole JSONL file atomically (write_text)."""
    write_text(path, "".join(json.dumps(obj, ensure_ascii=False) + "\n" for obj in objects))
