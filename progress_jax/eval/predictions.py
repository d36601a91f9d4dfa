"""Predictions JSONL (one line per sample, append-only, resumable) and scoring it against benchmark files.

A line: {"setting": file stem, "id": trajectory id, "stage": observation file, "line": the sample's
1-based line in the benchmark file, "response": raw text, "ref": int | null, "score": float in [0, 1] |
null, "na": bool, "unparseable": bool}. Files from other tools may carry only "score" (and "ref")
instead of "response", and may leave out "line". The result files of the official ProgressLM
harnesses (nested "meta_data") are read too. Layouts and the matching rules: docs/formats.md.
"""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from data_pipeline.jsonl import JsonlAppender, scan_appended, write_text
from data_pipeline.parsing import NUMBER, eval_score_value, parse_response, parse_score_text, read_ref
from data_pipeline.records import Record, file_format, load_records
from progress_jax.eval import plots
from progress_jax.eval import tables as tables_lib
from progress_jax.eval.metrics import Sample, compute_metrics

KEY_FIELDS = ("setting", "id", "stage")


class PredictionError(ValueError):
    def __init__(self, path, line: int, key: str | None, message: str):
        self.path, self.line, self.key, self.reason = path, line, key, message
        where = f"{path}:{line}" + (f": key '{key}'" if key else "")
        super().__init__(f"{where}: {message}")

    def __reduce__(self):
        return (type(self), (self.path, self.line, self.key, self.reason))


def prediction_line(record: Record, response: str, mode: str = "think") -> dict:
    """The JSONL object for one generated response, parsed with the shared parser."""
    parsed = parse_response(response, mode)
    return {"setting": record.source, "id": record.id, "stage": record.observation, "line": record.line,
            "response": response, "ref": parsed.ref, "score": parsed.score, "na": parsed.na,
            "unparseable": parsed.unparseable}


def prediction_key(obj: Mapping) -> tuple[str, str, str, int | None]:
    """(setting, id, stage, line); line is None for files keyed only by (setting, id, stage)."""
    return (str(obj["setting"]), str(obj["id"]), str(obj["stage"]), obj.get("line"))


# Appends one JSON line per prediction and flushes it, so a killed run loses at most one line.
PredictionWriter = JsonlAppender


@dataclass
class PredictionFile:
    path: str
    lines: list[tuple[int, dict]]  # (1-based line number, prediction object)
    truncated_line: int | None = None  # a partial last line that was ignored
    format: str = "predictions"  # or "results": an official harness's output, converted
    unmatched: list[int] = field(default_factory=list)  # result lines that match no benchmark sample


def _validate(obj, path: str, line: int) -> dict:
    if not isinstance(obj, dict):
        raise PredictionError(path, line, None, f"expected a JSON object, got {type(obj).__name__}")
    for key in KEY_FIELDS:
        value = obj.get(key)
        if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
            raise PredictionError(path, line, key, f"missing or not a non-empty string: {value!r:.100}")
    number = obj.get("line")
    if number is not None and (isinstance(number, bool) or not isinstance(number, int) or number < 1):
        raise PredictionError(path, line, "line", f"expected a positive integer or null, got {number!r:.100}")
    if obj.get("response") is not None:
        if not isinstance(obj["response"], str):
            raise PredictionError(path, line, "response", f"expected a string, got {type(obj['response']).__name__}")
    elif "score" not in obj:
        raise PredictionError(path, line, None, "needs 'response' (raw text) or 'score' (parsed, null for N/A)")
    else:
        _check_answer_fields(obj, "score", path, line)
    return obj


def _check_answer_fields(obj: Mapping, score_key: str, path: str, line: int) -> None:
    score = obj.get(score_key)
    if isinstance(score, bool) or not (score is None or isinstance(score, (int, float, str))):
        raise PredictionError(path, line, score_key, f"expected a number, a string or null, got {score!r:.100}")
    if isinstance(score, float) and not math.isfinite(score):  # JSON NaN / Infinity: metrics would be NaN
        raise PredictionError(path, line, score_key, f"expected a finite number, got {score!r}")
    ref = obj.get("ref")
    if isinstance(ref, bool) or not (ref is None or isinstance(ref, (int, str))):
        raise PredictionError(path, line, "ref", f"expected an integer, a string or null, got {ref!r:.100}")


def _result_fields(obj, path: str, line: int) -> tuple[dict, str]:
    """The meta_data and the prediction field ('score' or 'predicted_score') of an official result line."""
    if not isinstance(obj, dict) or not isinstance(obj.get("meta_data"), dict):
        raise PredictionError(path, line, "meta_data", "expected an official result line with a 'meta_data' object")
    meta = obj["meta_data"]
    rid = meta.get("id")
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or str(rid) == "":
        raise PredictionError(path, line, "meta_data.id", f"missing or not a non-empty string: {rid!r:.100}")
    stage = meta.get("stage_to_estimate")
    if isinstance(stage, list) and len(stage) == 1:
        stage = stage[0]
    if not isinstance(stage, str) or not stage:
        raise PredictionError(path, line, "meta_data.stage_to_estimate", f"expected a file path, got {stage!r:.100}")
    # Which field holds the prediction, as eval/metric.py of the official release decides it.
    score_key = "score" if "score" in obj else "predicted_score" if "predicted_score" in obj else None
    if score_key is None:
        raise PredictionError(path, line, None, "an official result line needs 'score' or 'predicted_score'")
    _check_answer_fields(obj, score_key, path, line)
    for key in ("progress_score", "closest_idx"):
        value = meta.get(key)
        if isinstance(value, bool) or not (value is None or isinstance(value, (int, float, str))):
            raise PredictionError(path, line, f"meta_data.{key}", f"expected a number or null, got {value!r:.100}")
    return dict(meta, stage_to_estimate=stage), score_key


def validate_line(obj, path: str, line: int, fmt: str = "predictions") -> None:
    """Raise PredictionError for a bad line of a predictions file, or of an official result file (fmt 'results')."""
    if fmt == "results":
        _result_fields(obj, path, line)
    else:
        _validate(obj, path, line)


def _same_truth(meta: Mapping, record: Record) -> bool:
    """Does the ground truth an official result line carries (parsed by the official loader) equal the record's?"""
    gt = meta.get("progress_score")
    if isinstance(gt, str):
        return False  # the official loader stores the parsed float or None
    if (gt is None) != (record.progress is None) or (gt is not None and abs(gt - record.progress) > 1e-6):
        return False
    ref = meta.get("closest_idx")
    if ref is None or isinstance(ref, str):
        return True  # absent from some failed lines; the progress decided
    return ref == record.closest_idx


def _result_to_prediction(meta: Mapping, obj: Mapping, score_key: str, index, path: str, line: int) -> dict | None:
    """Our prediction object for an official result line: the benchmark sample is the one with its id,
    observation file and ground truth; None when no sample matches."""
    candidates = index.get((str(meta["id"]), os.path.basename(meta["stage_to_estimate"])), [])
    if len(candidates) > 1:
        candidates = [r for r in candidates if _same_truth(meta, r)]
    if not candidates:
        return None
    settings = {r.source for r in candidates}
    if len(settings) > 1:
        raise PredictionError(path, line, "meta_data", f"matches samples of several benchmark files {sorted(settings)}; "
                              "score one official result file against its own benchmark file")
    record = candidates[0]
    return {"setting": record.source, "id": record.id, "stage": record.observation,
            "line": record.line if len(candidates) == 1 else None,
            "score": obj[score_key], "ref": obj.get("ref") if score_key == "score" else None}


def read_predictions(path, bench: Mapping[str, Sequence[Record]] | None = None) -> PredictionFile:
    """All prediction lines; a partial last line (killed run) is ignored and reported, a bad line
    elsewhere raises PredictionError. An official result file (nested meta_data) is converted to
    prediction objects, matched to the samples of `bench` (required for that layout)."""
    path = os.fspath(path)
    results = file_format(path) == "results"
    if results and bench is None:
        raise ValueError(f"{path}: an official result file; the benchmark files are needed to match its lines")
    index = defaultdict(list)
    for records in (bench or {}).values():
        for r in records:
            index[(r.id, os.path.basename(r.observation))].append(r)
    out = PredictionFile(path, [], format="results" if results else "predictions")
    scan = scan_appended(path)  # the one rule for a half-written tail (data_pipeline/jsonl.py)
    out.truncated_line = scan.truncated_line
    for entry in scan.lines:
        if entry.error is not None:
            raise PredictionError(path, entry.number, None, entry.error)
        if not results:
            out.lines.append((entry.number, _validate(entry.obj, path, entry.number)))
            continue
        meta, score_key = _result_fields(entry.obj, path, entry.number)
        prediction = _result_to_prediction(meta, entry.obj, score_key, index, path, entry.number)
        if prediction is None:
            out.unmatched.append(entry.number)
        else:
            out.lines.append((entry.number, prediction))
    return out


def done_keys(path) -> set[tuple[str, str, str, int | None]]:
    """Keys (setting, id, stage, line) already predicted in a (possibly absent) predictions file, for resume."""
    if not os.path.exists(path):
        return set()
    return {prediction_key(obj) for _, obj in read_predictions(path).lines}


_NO_MATCH = object()


def _matching_line(record: Record, lines, shared: bool):
    """Which prediction, among those with the record's (setting, id, stage) keyed by their line
    (None: no line), scores the record; _NO_MATCH when none does. The line decides only where the
    bench repeats (id, stage) (`shared`); a unique sample takes a prediction with any line, since the
    benchmark file may have been re-saved since (docs/formats.md)."""
    if record.line in lines:
        return record.line
    if None in lines:
        return None
    if lines and not shared:
        return list(lines)[-1]
    return _NO_MATCH


def _repeated_keys(bench: Mapping[str, Sequence[Record]]) -> set[tuple[str, str, str]]:
    seen, repeated = set(), set()
    for records in bench.values():
        for record in records:
            (repeated if record.key in seen else seen).add(record.key)
    return repeated


def match_predictions(bench: Mapping[str, Sequence[Record]], predictions: Iterable[Mapping]) -> dict[tuple[str, int], dict]:
    """(record.source, record.line) -> the prediction that scores that sample, by score()'s rule (the
    last line for a key wins); samples without one are absent."""
    by_key = defaultdict(dict)
    for obj in predictions:
        setting, rid, stage, line = prediction_key(obj)
        by_key[(setting, rid, stage)][line] = obj
    repeated = _repeated_keys(bench)
    out = {}
    for records in bench.values():
        for record in records:
            answers = by_key.get(record.key, {})
            line = _matching_line(record, answers, record.key in repeated)
            if line is not _NO_MATCH:
                out[(record.source, record.line)] = answers[line]
    return out


def pending_records(bench: Mapping[str, Sequence[Record]], keys: set) -> dict[str, list[Record]]:
    """The samples of `bench` (by file stem) that no prediction key from done_keys() scores yet."""
    lines_by_key = defaultdict(set)
    for setting, rid, stage, line in keys:
        lines_by_key[(setting, rid, stage)].add(line)
    repeated = _repeated_keys(bench)
    return {stem: [r for r in records if _matching_line(r, lines_by_key.get(r.key, ()), r.key in repeated) is _NO_MATCH]
            for stem, records in bench.items()}


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
    missing: list[tuple] = field(default_factory=list)  # bench samples without prediction (setting, id, stage, line)
    unknown: list[tuple] = field(default_factory=list)  # predictions matching no sample
    duplicates: list[tuple] = field(default_factory=list)  # repeated prediction keys (last wins)
    duplicate_bench_keys: list[tuple] = field(default_factory=list)  # (setting, id, stage, line) sharing a key
    shared: int = 0  # samples with a duplicated (id, stage) scored by one prediction keyed without a line

    def coverage(self) -> dict:
        """How the predictions cover the benchmark, as metrics.json and table1 record it."""
        return {"samples": self.n_bench, "predictions": self.n_predictions, "matched": self.matched,
                "missing": len(self.missing), "extra": len(self.unknown), "duplicates": len(self.duplicates)}

    def lines(self) -> list[str]:
        out = [f"benchmark samples: {self.n_bench}; predictions: {self.n_predictions}; matched: {self.matched}"]
        for name, keys, note in [("missing predictions", self.missing, "counted as N/A"),
                                 ("unknown predictions", self.unknown, "ignored"),
                                 ("duplicate predictions", self.duplicates, "the last one used"),
                                 ("benchmark lines sharing (id, stage)", self.duplicate_bench_keys,
                                  "separate samples, told apart by line")]:
            if keys:
                shown = ", ".join("/".join(map(str, k)) for k in keys[:3]) + (" ..." if len(keys) > 3 else "")
                out.append(f"{name}: {len(keys)} ({note}), e.g. {shown}")
        if self.shared:
            out.append(f"{self.shared} of those samples took a prediction keyed only by (setting, id, stage)")
        return out


@dataclass
class ScoreResult:
    metrics: dict
    samples: list[Sample]
    report: ScoreReport


def score(bench: Mapping[str, Sequence[Record]], predictions: Iterable[Mapping], mode: str = "think") -> ScoreResult:
    """Match predictions to benchmark records and compute metrics.json; a missing prediction is an N/A answer.
    The metrics' "coverage" entry counts the samples, the predictions matched, the samples missing one
    and the predictions matching none ("extra").

    bench maps a file stem to its records. A prediction names its sample by (setting, id, stage) and,
    optionally, line. The line only matters where a benchmark file repeats (id, stage) with different
    ground truth (separate samples): there a prediction with a line scores that line only, one
    without a line scores each of them. Elsewhere the line is not needed to match."""
    report = ScoreReport()
    by_key: dict[tuple, dict] = defaultdict(dict)  # (setting, id, stage) -> {line or None: answer}
    for obj in predictions:
        report.n_predictions += 1
        setting, rid, stage, line = prediction_key(obj)
        answers = by_key[(setting, rid, stage)]
        if line in answers:
            report.duplicates.append((setting, rid, stage, line))
        answers[line] = prediction_answer(obj, mode)
    for stem, records in bench.items():
        for record in records:
            if record.source != stem:
                raise ValueError(f"record from {record.source!r} (line {record.line}) listed under bench file {stem!r}")
    repeated = _repeated_keys(bench)
    samples, used = [], set()
    for records in bench.values():
        for record in records:
            report.n_bench += 1
            answers = by_key.get(record.key, {})
            shared = record.key in repeated
            if shared:
                report.duplicate_bench_keys.append((*record.key, record.line))
            line = _matching_line(record, answers, shared)
            if line is _NO_MATCH:
                report.missing.append((*record.key, record.line))
                samples.append(Sample(record, None, None))
                continue
            if line is None:
                report.shared += shared
            elif line != record.line:  # a unique sample predicted under other line numbers
                report.duplicates += [(*record.key, other) for other in answers if other != line]
            report.matched += 1
            used.add((*record.key, line))
            pred_score, pred_ref = answers[line]
            samples.append(Sample(record, pred_score, pred_ref))
    report.unknown = [(*key, line) for key, answers in by_key.items() for line in answers
                      if (*key, line) not in used and (*key, line) not in report.duplicates]
    return ScoreResult({**compute_metrics(samples), "coverage": report.coverage()}, samples, report)


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
        if not bench[stem]:
            raise ValueError(f"{path}: no benchmark samples in this file (empty); nothing to score")
    return bench


def write_results(result: ScoreResult, out_dir, run_name: str) -> str:
    """Writes metrics.json, table1/table2 (.md, .csv) and the figures; returns the tables as printable text."""
    if not result.samples:
        raise ValueError("no benchmark samples to score; nothing written")
    out_dir = os.fspath(out_dir)
    write_text(os.path.join(out_dir, "metrics.json"), json.dumps(result.metrics, indent=2))
    runs = {run_name: result.metrics}
    tables = {"table1": tables_lib.table1(runs)}
    views = tables_lib.view_stems(result.metrics)
    if views:
        tables["table2"] = tables_lib.table2(runs, *views)
    text = []
    for name, (header, rows) in tables.items():
        markdown = tables_lib.to_markdown(header, rows)
        write_text(os.path.join(out_dir, f"{name}.md"), markdown)
        write_text(os.path.join(out_dir, f"{name}.csv"), tables_lib.to_csv(header, rows))
        text.append(markdown)
    plots.write_figures(result.samples, out_dir)
    return "\n".join(text)
