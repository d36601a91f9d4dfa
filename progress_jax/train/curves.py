"""Training curves as PNG from a run's metrics.jsonl (drawn when the train loop ends).

Panels: `loss` first, then one panel per metric family (the part before the last '/':
`reward/*`, `probe/*`, `val/*` (validation, the macro average), `val/vision/*`, `val/text/*`,
`time/*`, ...) with one line per member, then every other numeric series on its own panel.
NaN/Inf points (stored as strings) are left out of the lines.
"""
from __future__ import annotations

import logging
import math
import os

import numpy as np

from progress_jax.train.metrics_writer import read_metrics

log = logging.getLogger(__name__)
CURVES_FILE = "training_curves.png"


def series(history: dict[int, dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{metric: (steps, values)} of every numeric metric, finite points only, by step."""
    points: dict[str, list] = {}
    for step in sorted(history):
        for name, value in history[step].items():
            if name == "step" or isinstance(value, bool):
                continue
            try:
                v = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(v):
                points.setdefault(name, []).append((step, v))
    return {k: (np.array([s for s, _ in p]), np.array([v for _, v in p])) for k, p in points.items()}


def panels(names) -> list[tuple[str, list[str]]]:
    """[(title, metric names)]: loss, then the '/' families, then the rest (each alphabetical)."""
    families: dict[str, list[str]] = {}
    single = []
    for name in sorted(names):
        if "/" in name:
            families.setdefault(name.rsplit("/", 1)[0], []).append(name)
        elif name != "loss":
            single.append(name)
    out = [("loss", ["loss"])] if "loss" in names else []
    out += sorted(families.items())
    out += [(n, [n]) for n in single]
    return out


def plot_curves(log_dir: str, path: str | None = None) -> str | None:
    """Write the curves of `<log_dir>/metrics.jsonl` to `path` (default
    `<log_dir>/training_curves.png`). Returns the path, or None when there is nothing to plot."""
    from matplotlib.ticker import MaxNLocator

    from progress_jax.eval.plots import _grid, _save  # the evaluation figures' layout and writer

    data = series(read_metrics(log_dir))
    layout = panels(data)
    if not layout:
        return None
    fig, axes = _grid(len(layout))
    for ax, (title, names) in zip(axes, layout):
        for name in names:
            steps, values = data[name]
            label = name.rsplit("/", 1)[1] if "/" in name else name
            ax.plot(steps, values, marker="." if len(steps) < 50 else None, label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(names) > 1:
            ax.legend(fontsize="small")
    return _save(fig, path or os.path.join(log_dir, CURVES_FILE))


def draw(log_dir: str) -> None:
    """plot_curves at the end of a run, when it logged metrics. A figure must not fail a finished
    run: the metrics themselves are on disk."""
    if not os.path.isfile(os.path.join(log_dir, "metrics.jsonl")):
        return
    try:
        path = plot_curves(log_dir)
    except Exception:  # noqa: BLE001 - reported, the run goes on
        log.exception("training curves of %s not drawn", log_dir)
    else:
        if path:
            log.info("training curves: %s", path)
