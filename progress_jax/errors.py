"""Expected errors (a busy or damaged run directory, inputs that do not fit) end a job or a tool
with one line on stderr and exit status 1; anything else is a bug and keeps its traceback."""
from __future__ import annotations

import errno
import os
import re
import sys
import traceback


class UserError(Exception):
    """A mistake or condition the user can act on; the message says what and where."""


class InputNotFound(UserError, FileNotFoundError):
    """A file or directory that a config key or flag names is not there."""


class BadInput(UserError, ValueError):
    """An input that is there but cannot be used (empty, of the wrong kind)."""


# Conditions of the machine, not bugs: a full disk, a read-only or forbidden place to write.
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def disk_cause(e: BaseException) -> tuple[int, str | None] | None:
    """(errno, file or None) of the DISK_ERRORS condition behind `e` (an OSError, or one a library
    raised from it; TensorStore's errors carry it as `[os_error_code='28']`), else None."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in DISK_ERRORS:
            return e.errno, e.filename
        code = re.search(r"\[os_error_code='(\d+)'\]", str(e))
        if code and int(code.group(1)) in DISK_ERRORS:
            return int(code.group(1)), None
        e = e.__cause__ or e.__context__
    return None


def disk_error(e: BaseException) -> str | None:
    """`<file>: <reason>` for a DISK_ERRORS condition behind `e` (disk_cause), else None."""
    cause = disk_cause(e)
    if cause is None:
        return None
    code, where = cause
    return f"{where if where is not None else 'writing'}: {os.strerror(code)}"


def one_line(fn, *args, verbose: bool = False, **kwargs):
    """fn(*args, **kwargs); a UserError, or a full disk / read-only or forbidden path, becomes
    `error: <message>` on stderr and exit status 1 (with its traceback when `verbose`)."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - anything else is re-raised as it is
        message = str(e) if isinstance(e, UserError) else disk_error(e)
        if message is None:
            raise
        if verbose:
            traceback.print_exc()
        print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
        sys.exit(1)
