"""Stop a train loop cleanly: a SIGTERM flag the loop polls, and a non-finite loss check."""
from __future__ import annotations

import math
import signal


class NonFiniteLossError(FloatingPointError):
    """A NaN or Inf loss; the message names the step, the quantity and its value."""


class StopRequest:
    """While active (a context manager), SIGTERM only sets `requested`; the loop checks it
    after each step, saves a checkpoint and returns. Nested requests (a job around its train
    loop) all see the signal. The previous handlers come back on exit. Install from the main
    thread (a Python rule for signal handlers)."""

    def __init__(self, signals=(signal.SIGTERM,)):
        self.signals = tuple(signals)
        self.requested = False
        self.signal_name: str | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        outer = self._previous.get(signum)
        if isinstance(getattr(outer, "__self__", None), StopRequest):
            outer(signum, frame)

    def __enter__(self):
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


def check_finite(step: int, last_good_step: int | None = None, **values) -> None:
    """Raise NonFiniteLossError if any of `values` (e.g. loss=..., grad_norm=...) is NaN or Inf.
    Converting a device scalar to float waits for it, so call this where the loop syncs anyway."""
    for name, value in values.items():
        v = float(value)
        if not math.isfinite(v):
            kept = (f"the last good checkpoint is step {last_good_step}" if last_good_step is not None
                    else "no checkpoint was written yet")
            raise NonFiniteLossError(f"step {step}: {name} is {v}; stopping the run ({kept})")
