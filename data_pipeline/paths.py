"""Output paths of the command-line tools: never one of the inputs, and written whole or not at all.

A tool names its inputs and outputs with their flags; `check_outputs` refuses before any work when
an output is the same file as an input (the same path, a symlink to it, or a hard link) or as
another output, naming both. See docs/reliability.md.
"""
from __future__ import annotations

import contextlib
import os


def _same(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:  # hard links, bind mounts
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def _flat(named: dict) -> list[tuple[str, str]]:
    """{flag: path or list of paths or None} -> [(flag, path)]."""
    out = []
    for flag, value in named.items():
        if value is None:
            continue
        for path in [value] if isinstance(value, (str, os.PathLike)) else value:
            if path is not None:
                out.append((flag, os.fspath(path)))
    return out


def check_outputs(outputs: dict, inputs: dict) -> None:
    """Raise SystemExit (a one-line message, nothing written) when an output path is the same file as
    an input or as another output. `outputs` and `inputs` map a flag (e.g. "--out") to a path, a
    list of paths or None."""
    outs, ins = _flat(outputs), _flat(inputs)
    for i, (flag, path) in enumerate(outs):
        for other_flag, other in ins:
            if _same(path, other):
                raise SystemExit(f"{flag} {path} is the input {other_flag} {other} (the same file): "
                                 "it would be overwritten; choose another output path")
        for other_flag, other in outs[:i]:
            if _same(path, other):
                raise SystemExit(f"{flag} {path} and {other_flag} {other} are the same file: "
                                 "choose two different output paths")


@contextlib.contextmanager
def atomic_output(path: str, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temporary file beside `path`; on success it replaces `path` in one rename, on an
    exception it is removed and `path` is untouched."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
