"""Append-only JSONL files that survive a killed writer."""

from __future__ import annotations

import json
import logging
import os

logger = logging.getLogger(__name__)


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


def write_jsonl(path: str, objects: list[dict]) -> None:
    """Write a whole JSONL file atomically (temporary file, then rename)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for obj in objects:
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
