"""What a job shows on the console: the project's own messages, one short line each, and the
progress bar. Other libraries' INFO records (absl, Orbax, JAX, matplotlib) appear only with
`--verbose`; their warnings and errors always do. Sample generations and metrics go to the run's
files (metrics.jsonl, TensorBoard), not here."""
from __future__ import annotations

import logging
import sys

from absl import logging as absl_logging
from tqdm.auto import tqdm

# The packages whose loggers are the project's messages.
PROJECT = ("progress_jax", "data_pipeline", "data_construction")


class _Handler(logging.Handler):
    """Writes above the progress bar (tqdm.write), so a message never breaks the bar's line."""

    def emit(self, record):
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging's own convention for a failed emit
            self.handleError(record)


class _Format(logging.Formatter):
    def format(self, record):
        line = super().format(record)
        return line if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {line}"


def setup(verbose: bool = False) -> None:
    """The project's loggers at INFO through one short-line handler; everything else at WARNING
    (INFO with verbose)."""
    handler = _Handler()
    handler.setFormatter(_Format("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    for name in PROJECT:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False  # not a second time through absl's root handler
    absl_logging.set_verbosity("info" if verbose else "warning")  # Orbax logs through absl
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)


def progress_bar(total: int, initial: int = 0, desc: str = "train", enabled: bool = True):
    """A tqdm bar over steps or samples; starts at `initial` when a run resumes. Only on process 0 and
    on a terminal: in a log file its redraws would be thousands of carriage-return updates."""
    return tqdm(total=total, initial=initial, desc=desc, disable=not (enabled and sys.stderr.isatty()),
                dynamic_ncols=True)
