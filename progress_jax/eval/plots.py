"""Evaluation figures (PNG, matplotlib Agg): predicted-score histograms, per-sample errors, coupling heatmaps."""
from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from data_pipeline.paths import atomic_output
from progress_jax.eval.metrics import SETTINGS, Sample, normalized_error


def _pyplot():
    """matplotlib.pyplot on the Agg backend, imported when a figure is drawn (not by every job that
    imports the evaluation code: it costs a second of start-up)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def demo_progress(record) -> list[float]:
    """Progress in [0, 1] of each demo step, by 1-based index: frame i of a vision demo is i/T (i = 0..T),
    step k of a text demo is k/T (k = 1..T)."""
    t = record.total_steps
    first = 0 if record.kind == "visual" else 1
    return [i / t for i in range(first, first + record.num_demos)]


def score_aligned_step(record, score: float) -> int:
    """1-based index of the demo step whose progress is closest to the score (ties: the lower index)."""
    progress = demo_progress(record)
    return int(np.argmin([abs(p - score) for p in progress])) + 1


def coupling_counts(samples: Sequence[Sample]) -> tuple[np.ndarray, int]:
    """counts[r - 1, a - 1] = samples with retrieved ref r and score-aligned step a, over samples whose
    ref and score are both numeric (answerable or not: it measures the model's own consistency);
    the second value counts refs outside 1..num_demos, left out of the matrix."""
    used = [s for s in samples if s.score is not None and s.ref is not None]
    size = max((s.record.num_demos for s in used), default=1)
    counts = np.zeros((size, size), dtype=np.int64)
    out_of_range = 0
    for s in used:
        if not 1 <= s.ref <= s.record.num_demos:
            out_of_range += 1
            continue
        counts[s.ref - 1, score_aligned_step(s.record, s.score) - 1] += 1
    return counts, out_of_range


def _by_file(samples: Sequence[Sample]) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        out[s.record.source].append(s)
    return out


def _grid(n: int, width: float = 4.5, height: float = 3.2):
    n = max(n, 1)  # an empty panel rather than a division by zero
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = _pyplot().subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat)


def _save(fig, path: str) -> str:
    fig.tight_layout()
    try:
        with atomic_output(path, "wb") as f:  # a file object: the format comes from path's extension
            fig.savefig(f, format=os.path.splitext(path)[1][1:], dpi=100)
    finally:
        _pyplot().close(fig)
    return path


def plot_score_histograms(samples: Sequence[Sample], path: str) -> str:
    """Predicted scores per benchmark file (a spike shows collapse), N/A count in each title."""
    files = _by_file(samples)
    fig, axes = _grid(len(files))
    bins = np.linspace(0, 100, 21)
    for ax, (stem, group) in zip(axes, files.items()):
        scores = [100 * s.score for s in group if s.score is not None]
        ax.hist(scores, bins=bins, color="tab:blue", edgecolor="white")
        ax.set_title(f"{stem}\n{len(scores)} scored, {len(group) - len(scores)} N/A", fontsize=9)
        ax.set_xlabel("predicted progress (%)")
        ax.set_ylabel("samples")
    return _save(fig, path)


def plot_error_distributions(samples: Sequence[Sample], path: str) -> str:
    """Per-sample normalized error (%) of answerable samples with a numeric prediction, per file."""
    files = {stem: g for stem, g in _by_file(samples).items() if any(s.record.answerable for s in g)}
    fig, axes = _grid(len(files))
    bins = np.linspace(0, 100, 21)
    for ax, (stem, group) in zip(axes, files.items()):
        errors = [100 * normalized_error(s.record.progress, s.score)
                  for s in group if s.record.answerable and s.score is not None]
        ax.hist(errors, bins=bins, color="tab:orange", edgecolor="white")
        mean = f", mean {np.mean(errors):.1f}" if errors else ""
        ax.set_title(f"{stem}\n{len(errors)} samples{mean}", fontsize=9)
        ax.set_xlabel("normalized score error (%)")
        ax.set_ylabel("samples")
    return _save(fig, path)


def plot_coupling(samples: Sequence[Sample], path: str) -> str:
    """Heatmap of retrieved ref vs score-aligned demo step, one panel per setting (vision, text)."""
    groups = {name: [s for s in samples if s.setting == name] for name in SETTINGS}
    groups = {k: v for k, v in groups.items() if v}
    fig, axes = _grid(len(groups), width=4.8, height=4.2)
    for ax, (name, group) in zip(axes, groups.items()):
        counts, out_of_range = coupling_counts(group)
        image = ax.imshow(counts, origin="lower", cmap="viridis",
                          extent=(0.5, counts.shape[1] + 0.5, 0.5, counts.shape[0] + 0.5))
        fig.colorbar(image, ax=ax, shrink=0.8)
        if counts.shape[0] <= 12:  # small enough to print each count
            for (r, a), c in np.ndenumerate(counts):
                ax.text(a + 1, r + 1, str(c), ha="center", va="center", fontsize=7,
                        color="white" if c < counts.max() / 2 else "black")
        extra = f", {out_of_range} ref out of range" if out_of_range else ""
        ax.set_title(f"{name}: {int(counts.sum())} samples{extra}", fontsize=9)
        ax.set_xlabel("demo step closest to predicted score")
        ax.set_ylabel("retrieved <ref>")
    return _save(fig, path)


def write_figures(samples: Sequence[Sample], out_dir: str) -> list[str]:
    return [plot_score_histograms(samples, os.path.join(out_dir, "score_histograms.png")),
            plot_error_distributions(samples, os.path.join(out_dir, "error_distributions.png")),
            plot_coupling(samples, os.path.join(out_dir, "coupling.png"))]
