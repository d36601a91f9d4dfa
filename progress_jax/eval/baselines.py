"""Blind baselines: the metrics of answering one constant progress for every sample.

A model that estimates progress must beat these; the demo prints the best of them as the first row of
its Table 1. A constant never says n/a (UDA 0, AFRR 0) and ranks nothing (PRC undefined).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from data_pipeline.records import Record
from progress_jax.eval.metrics import Sample, compute_metrics


def constant_metrics(bench: Mapping[str, Sequence[Record]], value: float) -> dict:
    """metrics.json of predicting `value` (in [0, 1]) for every sample of `bench` (file stem -> records)."""
    return compute_metrics(Sample(r, value) for records in bench.values() for r in records)


def training_mean(records: Iterable[Record]) -> float:
    """Mean progress (in [0, 1]) of the answerable training records."""
    values = [r.progress for r in records if r.answerable]
    if not values:
        raise ValueError("no answerable training record: the training mean is undefined")
    return sum(values) / len(values)


def best_constant(bench: Mapping[str, Sequence[Record]], train_mean: float | None = None) -> tuple[str, dict]:
    """(row name, metrics) of the constant among 25%, 50% and the training mean with the lowest macro NSE."""
    candidates = {"constant 25%": 0.25, "constant 50%": 0.5}
    if train_mean is not None:
        candidates[f"constant {100 * train_mean:.0f}% (train mean)"] = train_mean
    scored = {name: constant_metrics(bench, v) for name, v in candidates.items()}
    name = min(scored, key=lambda n: scored[n]["macro"]["nse"])
    return name, scored[name]
