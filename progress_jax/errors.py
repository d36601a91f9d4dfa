"""Expected errors (a busy or damaged run directory, inputs that do not fit) end a job or a tool
with one line on stderr and exit status 1; anything else is a bug and keeps its traceback."""
from __future__ import annotations

import sys
import traceback


class UserError(Exception):
    """A mistake or condition the user can act on; the message says what and where."""


class InputNotFound(UserError, FileNotFoundError):
    """A file or directory that a config key or flag names is not there."""


class BadInput(UserError, ValueError):
    """An input that is there but cannot be used (empty, of the wrong kind)."""


def one_line(fn, *args, verbose: bool = False, **kwargs):
    """fn(*args, **kwargs); a UserError becomes `error: <message>` on stderr and exit status 1
    (with its traceback when `verbose`)."""
    try:
        return fn(*args, **kwargs)
    except UserError as e:
        if verbose:
            traceback.print_exc()
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        sys.exit(1)
