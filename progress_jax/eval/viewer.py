"""The results viewer's logic (tools/results_viewer.py is its Gradio front): a predictions file
joined to its benchmark files, each sample's error kinds, filters, and the text shown per sample.

Error kinds of a sample (a sample may have several):
- missing: no prediction line for it (scored as N/A);
- unparseable: the response follows neither answer format;
- false n/a: N/A predicted on an answerable sample; missed n/a: a score on an unanswerable one;
- wrong ref: the predicted reference step differs from closest_idx;
- score error: normalized score error |gt - pred| / max(gt, 1 - gt) above a threshold.
"""
from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass

from data_pipeline.parsing import parse_response
from data_pipeline.records import Record, record_image_path
from progress_jax.eval.metrics import normalized_error
from progress_jax.eval.predictions import load_bench, match_predictions, prediction_answer, read_predictions

KINDS = ("missing", "unparseable", "false n/a", "missed n/a", "wrong ref", "score error")
ALL, ANY_ERROR, CORRECT = "all samples", "any error", "no error"
ALL_SETTINGS = "all settings"
FILTERS = (ALL, ANY_ERROR, CORRECT) + KINDS
SCORE_ERROR = 0.2  # default threshold of the "score error" kind (normalized error)


@dataclass
class Row:
    record: Record
    prediction: dict | None  # the predictions line, None when missing
    score: float | None  # parsed prediction; None = N/A
    ref: int | None
    unparseable: bool

    @property
    def setting(self) -> str:
        return self.record.source

    @property
    def error(self) -> float | None:
        """Normalized score error, when both the ground truth and the prediction are numbers."""
        if self.record.progress is None or self.score is None:
            return None
        return normalized_error(self.record.progress, self.score)

    def kinds(self, threshold: float = SCORE_ERROR) -> list[str]:
        if self.prediction is None:
            return ["missing"]
        out = ["unparseable"] if self.unparseable else []
        answerable = self.record.progress is not None
        if answerable and self.score is None and not self.unparseable:
            out.append("false n/a")
        if not answerable and self.score is not None:
            out.append("missed n/a")
        if answerable and self.ref is not None and self.ref != self.record.closest_idx:
            out.append("wrong ref")
        if self.error is not None and self.error > threshold:
            out.append("score error")
        return out


def load(pred_path: str, bench_paths, mode: str = "think") -> list[Row]:
    """Every benchmark sample (in file order) with the prediction that scores it (as score() matches them)."""
    bench = load_bench(bench_paths)
    matched = match_predictions(bench, (obj for _, obj in read_predictions(pred_path, bench).lines))
    rows = []
    for records in bench.values():
        for record in records:
            obj = matched.get((record.source, record.line))
            if obj is None:
                rows.append(Row(record, None, None, None, False))
                continue
            score, ref = prediction_answer(obj, mode)
            unparseable = obj.get("response") is not None and parse_response(obj["response"], mode).unparseable
            rows.append(Row(record, obj, score, ref, unparseable))
    return rows


def select(rows: list[Row], setting: str = ALL_SETTINGS, error: str = ALL, threshold: float = SCORE_ERROR) -> list[int]:
    """Indices of the rows of `setting` (a benchmark file stem, or ALL_SETTINGS) passing the `error` filter."""
    if error not in FILTERS:
        raise ValueError(f"unknown error filter {error!r}; choose one of {FILTERS}")
    out = []
    for i, row in enumerate(rows):
        if setting != ALL_SETTINGS and row.setting != setting:
            continue
        kinds = row.kinds(threshold)
        keep = {ALL: True, ANY_ERROR: bool(kinds), CORRECT: not kinds}.get(error, error in kinds)
        if keep:
            out.append(i)
    return out


def settings(rows: list[Row]) -> list[str]:
    return list(dict.fromkeys(r.setting for r in rows))


def counts(rows: list[Row], threshold: float = SCORE_ERROR) -> dict[str, int]:
    """Samples per error kind (and with none)."""
    out = dict.fromkeys(KINDS, 0)
    out[CORRECT] = 0
    for row in rows:
        kinds = row.kinds(threshold)
        for k in kinds:
            out[k] += 1
        out[CORRECT] += not kinds
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


_SCORE = re.compile(r"<score>\s*([^<]*?)\s*</score>", re.S)


def answered_score(row: Row) -> str | None:
    """The score the response wrote (its last <score>) when scoring clamped it into 0..100%
    (e.g. "772%"), else None."""
    response = (row.prediction or {}).get("response")
    found = _SCORE.findall(response) if isinstance(response, str) else []
    if row.score is None or not found:
        return None
    try:
        value = float(found[-1].rstrip("%").strip())
    except ValueError:
        return None
    return found[-1] if not 0 <= value <= 100 else None


def describe(row: Row, threshold: float = SCORE_ERROR) -> str:
    """Markdown: the sample, the ground truth, the parsed prediction and its error kinds."""
    r = row.record
    kinds = row.kinds(threshold)
    raw = answered_score(row)
    pred = ("none (missing)" if row.prediction is None else
            f"ref {row.ref if row.ref is not None else 'n/a'}, score {_pct(row.score)}"
            + (f" (answered {html.escape(raw)}, clamped to 0..100%)" if raw else "")
            + (" (unparseable)" if row.unparseable else ""))
    lines = [f"- **Sample:** `{r.source}` / `{html.escape(r.id)}` / `{html.escape(r.observation)}` (line {r.line})",
             f"- **Goal:** {html.escape(r.task_goal)}",
             f"- **Ground truth:** ref {r.closest_idx if r.closest_idx is not None else 'n/a'}, "
             f"score {_pct(r.progress)}",
             f"- **Prediction:** {pred}",
             f"- **Normalized error:** {'-' if row.error is None else f'{row.error:.3f}'}",
             f"- **Errors:** {', '.join(kinds) if kinds else 'none'}"]
    if r.visual_demo:  # the gallery's captions show only in its preview: the ground-truth frame named here
        lines += ["", "**Key frames:** " + ", ".join(
            f"**{i}: {html.escape(f)} (ground-truth ref)**" if i == r.closest_idx else f"{i}: {html.escape(f)}"
            for i, f in enumerate(r.visual_demo, start=1))]
    if r.text_demo is not None:
        lines += ["", "**Demo steps:**"] + [
            f"{i}. **{html.escape(s)}** (ground-truth ref)" if i == r.closest_idx else f"{i}. {html.escape(s)}"
            for i, s in enumerate(r.text_demo, start=1)]
    return "\n".join(lines)


def images(row: Row, image_root: str | None) -> tuple[list[tuple[str, str]], str | None, list[str]]:
    """([(demo frame path, caption)], observation path or None, missing files) under image_root."""
    r = row.record
    if not image_root:
        return [], None, []
    frames, missing = [], []
    for i, f in enumerate(r.visual_demo or (), start=1):
        path = record_image_path(image_root, r, f)
        if os.path.isfile(path):
            frames.append((path, f"{i}: {f}" + (" (ground-truth ref)" if i == r.closest_idx else "")))
        else:
            missing.append(path)
    obs = record_image_path(image_root, r, r.observation)
    if not os.path.isfile(obs):
        missing.append(obs)
        obs = None
    return frames, obs, missing
