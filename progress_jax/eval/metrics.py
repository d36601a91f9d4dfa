"""Progress-Bench metrics (docs/metrics.md): NSE, PRC, AFRR, UDA and ref error, per file and pooled.

metrics.json layout, values in percent (x100), None (null) where undefined:
  {"<file stem>": entry, "vision": entry, "text": entry, "micro": entry, "macro": entry}
  entry = {"n", "n_answerable", "n_unanswerable", "nse", "prc", "prc_trajectories", "afrr", "uda", "ref_error"}
- NSE, PRC, AFRR and ref error come from answerable samples, UDA from unanswerable ones; a file
  holding both kinds gets both.
- "vision" pools the samples of every file whose records carry visual_demo, "text" those with
  text_demo. PRC always groups by (file, trajectory id): the same id in same-view and cross-view files
  is two trajectories, and the pooled PRC is the mean over all qualifying trajectories of all files.
- "macro" = plain mean of the vision and text values; "micro" = their mean weighted by answerable
  sample counts (UDA: by unanswerable counts). Either skips a setting whose value is undefined
  (e.g. a vision-only benchmark gives macro = vision).
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from data_pipeline.records import Record

SETTINGS = ("vision", "text")
RATE_KEYS = ("nse", "prc", "afrr", "uda", "ref_error")


@dataclass(frozen=True)
class Sample:
    """One benchmark record with its prediction: score in [0, 1] or None (N/A), ref 1-based or None."""

    record: Record
    score: float | None
    ref: int | None = None

    @property
    def setting(self) -> str:
        return "vision" if self.record.kind == "visual" else "text"


def normalized_error(gt: float, pred: float) -> float:
    """|gt - pred| / max(gt, 1 - gt); the denominator is at least 0.5."""
    return abs(gt - pred) / max(gt, 1.0 - gt)


def nse(gts: Sequence[float], preds: Sequence[float | None]) -> float | None:
    """Mean normalized score error over pairs with a numeric prediction."""
    errors = [normalized_error(g, p) for g, p in zip(gts, preds) if p is not None]
    return float(np.mean(errors)) if errors else None


def prc(groups: Sequence, gts: Sequence[float], preds: Sequence[float | None]) -> tuple[float | None, int]:
    """Mean per-trajectory Spearman correlation and the number of trajectories that entered it.

    N/A predictions are dropped first; a trajectory is skipped with fewer than 2 samples left,
    all predictions equal or all ground truths equal; NaN correlations are dropped.
    """
    by_group: dict = defaultdict(lambda: ([], []))
    for g, gt, p in zip(groups, gts, preds):
        if p is not None:
            by_group[g][0].append(gt)
            by_group[g][1].append(p)
    rhos = []
    for g_gts, g_preds in by_group.values():
        if len(g_gts) < 2 or len(set(g_preds)) == 1 or len(set(g_gts)) == 1:
            continue
        from scipy.stats import spearmanr  # here: scipy.stats costs a second of every job's start-up

        rho = spearmanr(g_gts, g_preds).statistic
        if not math.isnan(rho):
            rhos.append(float(rho))
    return (float(np.mean(rhos)) if rhos else None), len(rhos)


def na_rate(preds: Sequence[float | None]) -> float | None:
    """Fraction of N/A predictions: AFRR on answerable samples, UDA on unanswerable ones."""
    return sum(p is None for p in preds) / len(preds) if preds else None


def ref_error(gt_refs: Sequence[int], pred_refs: Sequence[int | None], num_demos: Sequence[int]) -> float | None:
    """Mean |gt - pred| / max(gt - 1, num_demos - gt) over samples with a numeric predicted ref."""
    errors = []
    for gt, pred, n in zip(gt_refs, pred_refs, num_demos):
        if pred is None:
            continue
        denom = max(gt - 1, n - gt)
        errors.append(abs(gt - pred) / denom if denom > 0 else float(gt != pred))
    return float(np.mean(errors)) if errors else None


def _percent(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def summarize(samples: Iterable[Sample]) -> dict:
    """One metrics entry (values x100) over the given samples."""
    samples = list(samples)
    ans = [s for s in samples if s.record.answerable]
    unans = [s for s in samples if not s.record.answerable]
    gts = [s.record.progress for s in ans]
    preds = [s.score for s in ans]
    prc_value, prc_count = prc([(s.record.source, s.record.id) for s in ans], gts, preds)
    return {
        "n": len(samples), "n_answerable": len(ans), "n_unanswerable": len(unans),
        "nse": _percent(nse(gts, preds)),
        "prc": _percent(prc_value), "prc_trajectories": prc_count,
        "afrr": _percent(na_rate(preds)),
        "uda": _percent(na_rate([s.score for s in unans])),
        "ref_error": _percent(ref_error([s.record.closest_idx for s in ans], [s.ref for s in ans],
                                        [s.record.num_demos for s in ans])),
    }


def _average(entries: Sequence[dict], weighted: bool) -> dict:
    out = {k: sum(e[k] for e in entries) for k in ("n", "n_answerable", "n_unanswerable", "prc_trajectories")}
    for key in RATE_KEYS:
        count_key = "n_unanswerable" if key == "uda" else "n_answerable"
        pairs = [(e[key], e[count_key] if weighted else 1) for e in entries if e[key] is not None]
        total = sum(w for _, w in pairs)
        out[key] = sum(v * w for v, w in pairs) / total if pairs and total > 0 else None
    return out


def compute_metrics(samples: Iterable[Sample]) -> dict:
    """The whole metrics.json dict: per file (first-seen order), vision, text, micro, macro."""
    samples = list(samples)
    by_file: dict[str, list[Sample]] = defaultdict(list)
    by_setting: dict[str, list[Sample]] = {name: [] for name in SETTINGS}
    for s in samples:
        by_file[s.record.source].append(s)
        by_setting[s.setting].append(s)
    overlap = set(by_file) & {*SETTINGS, "micro", "macro"}
    if overlap:
        raise ValueError(f"benchmark file stem(s) {sorted(overlap)} collide with metrics.json keys")
    out = {stem: summarize(file_samples) for stem, file_samples in by_file.items()}
    settings = [summarize(by_setting[name]) for name in SETTINGS]
    out.update(zip(SETTINGS, settings))
    out["micro"] = _average(settings, weighted=True)
    out["macro"] = _average(settings, weighted=False)
    return out
