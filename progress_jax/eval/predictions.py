"""Predictions JSONL (one line per sample, append-only, resumable) and scoring it against benchmark files.

A line: {"setting": file stem, "id": trajectory id, "stage": observation file, "response": raw text,
"ref": int | null, "score": float in [0, 1] | null, "na": bool, "unparseable": bool}.
Files from other tools may carry only "score" (and "ref") instead of "response".
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from data_pipeline.jsonl import JsonlAppender
from data_pipeline.parsing import NUMBER, eval_score_value, parse_response, parse_score_text, read_ref
from data_pipeline.records import Record, load_records
from progress_jax.eval import plots
from progress_jax.eval import tables as tables_lib
from progress_jax.eval.metrics import Sample, compute_metrics

logger = logging.getLogger(__name__)

KEY_FIELDS = ("setting", "id", "stage")


class PredictionError(ValueError):
    def __init__(self, path, line: int, key: str | None, message: str):
        where = f"{path}:{line}" + (f": key '{key}'" if key else "")
        super().__init__(f"{where}: {message}")


def prediction_line(record: Record, response: str, mode: str = "think") -> dict:
    """The JSONL object for one generated response, parsed with the shared parser."""
    parsed = parse_response(response, mode)
    return {"setting": record.source, "id": record.id, "stage": record.observation, "response": response,
            "ref": parsed.ref, "score": parsed.score, "na": parsed.na, "unparseable": parsed.unparseable}


def prediction_key(obj: Mapping) -> tuple[str, str, str]:
    return (obj["setting"], str(obj["id"]), obj["stage"])


# Appends one JSON line per prediction and flushes it, so a killed run loses at most one line.
PredictionWriter = JsonlAppender


@dataclass
class PredictionFile:
    path: str
    lines: list[tuple[int, dict]]  # (1-based line number, object)
    truncated_line: int | None = None  # a partial last line that was ignored


def _validate(obj, path: str, line: int) -> dict:
    if not isinstance(obj, dict):
        raise PredictionError(path, line, None, f"expected a JSON object, got {type(obj).__name__}")
    for key in KEY_FIELDS:
        value = obj.get(key)
        if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
            raise PredictionError(path, line, key, f"missing or not a non-empty string: {value!r:.100}")
    if obj.get("response") is not None:
        if not isinstance(obj["response"], str):
            raise PredictionError(path, line, "response", f"expected a string, got {type(obj['response']).__name__}")
    elif "score" not in obj:
        raise PredictionError(path, line, None, "needs 'response' (raw text) or 'score' (parsed, null for N/A)")
    else:
        score = obj["score"]
        if isinstance(score, bool) or not (score is None or isinstance(score, (int, float, str))):
            raise PredictionError(path, line, "score", f"expected a number, a string or null, got {score!r:.100}")
        ref = obj.get("ref")
        if isinstance(ref, bool) or not (ref is None or isinstance(ref, (int, str))):
            raise PredictionError(path, line, "ref", f"expected an integer, a string or null, got {ref!r:.100}")
    return obj


def read_predictions(path) -> PredictionFile:
    """All prediction lines; a partial last line (killed run) is ignored and reported, a bad line elsewhere raises."""
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        texts = f.read().split("\n")
    lines, truncated = [], None
    last = max((i for i, t in enumerate(texts) if t.strip()), default=-1)
    for i, text in enumerate(texts):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            if i == last and i == len(texts) - 1:  # last line, no newline after it
                truncated = i + 1
                logger.warning("%s:%d: ignoring a truncated last line (a killed run?)", path, i + 1)
                continue
            raise PredictionError(path, i + 1, None, f"bad JSON: {e}") from None
        lines.append((i + 1, _validate(obj, path, i + 1)))
    return PredictionFile(path, lines, truncated)


def done_keys(path) -> set[tuple[str, str, str]]:
    """Keys (setting, id, stage) already predicted in a (possibly absent) predictions file, for resume."""
    if not os.path.exists(path):
        return set()
    return {prediction_key(obj) for _, obj in read_predictions(path).lines}


def prediction_answer(obj: Mapping, mode: str = "think") -> tuple[float | None, int | None]:
    """(score in [0, 1] or None for N/A, ref or None) of a validated prediction: the response is parsed
    when present (it wins over stored parsed fields); otherwise score/ref are read with the eval rule."""
    if obj.get("response") is not None:
        parsed = parse_response(obj["response"], mode)
        return parsed.score, parsed.ref
    score = obj["score"]
    if isinstance(score, str):
        score = parse_score_text(score)[1]
    elif score is not None:
        score = eval_score_value(float(score), False)
    ref = obj.get("ref")
    if isinstance(ref, str):
        status, ref = read_ref(f"<ref>{ref}</ref>")
        ref = ref if status == NUMBER else None
    return score, ref


@dataclass
class ScoreReport:
    n_bench: int = 0
    n_predictions: int = 0
    matched: int = 0
    missing: list[tuple[str, str, str]] = field(default_factory=list)  # bench samples without prediction
    unknown: list[tuple[str, str, str]] = field(default_factory=list)  # predictions matching no sample
    duplicates: list[tuple[str, str, str]] = field(default_factory=list)  # repeated prediction keys (last wins)
    duplicate_bench_keys: list[tuple[str, str, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"benchmark samples: {self.n_bench}; predictions: {self.n_predictions}; matched: {self.matched}"]
        for name, keys, note in [("missing predictions", self.missing, "counted as N/A"),
                                 ("unknown predictions", self.unknown, "ignored"),
                                 ("duplicate predictions", self.duplicates, "the last one used"),
                                 ("duplicate benchmark keys", self.duplicate_bench_keys, "share one prediction")]:
            if keys:
                shown = ", ".join("/".join(k) for k in keys[:3]) + (" ..." if len(keys) > 3 else "")
                out.append(f"{name}: {len(keys)} ({note}), e.g. {shown}")
        return out


@dataclass
class ScoreResult:
    metrics: dict
    samples: list[Sample]
    report: ScoreReport


def score(bench: Mapping[str, Sequence[Record]], predictions: Iterable[Mapping], mode: str = "think") -> ScoreResult:
    """Match predictions to benchmark records by (setting, id, stage) and compute metrics.json.

    bench maps a file stem to its records; a missing prediction is an N/A answer."""
    report = ScoreReport()
    by_key: dict[tuple[str, str, str], tuple[float | None, int | None]] = {}
    for obj in predictions:
        report.n_predictions += 1
        key = prediction_key(obj)
        if key in by_key:
            report.duplicates.append(key)
        by_key[key] = prediction_answer(obj, mode)
    samples, seen = [], set()
    for stem, records in bench.items():
        for record in records:
            if record.source != stem:
                raise ValueError(f"record from {record.source!r} (line {record.line}) listed under bench file {stem!r}")
            report.n_bench += 1
            if record.key in seen:
                report.duplicate_bench_keys.append(record.key)
            seen.add(record.key)
            if record.key in by_key:
                report.matched += 1
                pred_score, pred_ref = by_key[record.key]
            else:
                report.missing.append(record.key)
                pred_score, pred_ref = None, None
            samples.append(Sample(record, pred_score, pred_ref))
    report.unknown = [k for k in by_key if k not in seen]
    return ScoreResult(compute_metrics(samples), samples, report)


def load_bench(paths: Iterable) -> dict[str, list[Record]]:
    """Benchmark records by file stem from JSONL files and/or directories of them (no images needed)."""
    files = []
    for p in map(os.fspath, paths):
        if os.path.isdir(p):
            found = sorted(os.path.join(p, n) for n in os.listdir(p) if n.endswith(".jsonl"))
            if not found:
                raise FileNotFoundError(f"{p}: no .jsonl benchmark files in this directory")
            files += found
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such benchmark file or directory")
    bench: dict[str, list[Record]] = {}
    for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in bench:
            raise ValueError(f"{path}: a second benchmark file with stem {stem!r}; "
                             "stems name settings and must be unique")
        bench[stem] = load_records(path)
    return bench


def write_results(result: ScoreResult, out_dir, run_name: str) -> str:
    """Writes metrics.json, table1/table2 (.md, .csv) and the figures; returns the tables as printable text."""
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(result.metrics, f, indent=2)
    runs = {run_name: result.metrics}
    tables = {"table1": tables_lib.table1(runs)}
    views = tables_lib.view_stems(result.metrics)
    if views:
        tables["table2"] = tables_lib.table2(runs, *views)
    text = []
    for name, (header, rows) in tables.items():
        markdown = tables_lib.to_markdown(header, rows)
        with open(os.path.join(out_dir, f"{name}.md"), "w", encoding="utf-8") as f:
            f.write(markdown)
        with open(os.path.join(out_dir, f"{name}.csv"), "w", encoding="utf-8") as f:
            f.write(tables_lib.to_csv(header, rows))
        text.append(markdown)
    plots.write_figures(result.samples, out_dir)
    return "\n".join(text)
