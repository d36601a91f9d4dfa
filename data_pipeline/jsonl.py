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
                           "that sample will be redone", path, data.count(b"\n") + 1, len(data) - start)
