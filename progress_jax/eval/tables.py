"""The paper's tables from metrics.json dicts, several runs side by side as rows, Markdown and CSV.

Table 1: vision / text / micro / macro x NSE, PRC, AFRR, plus UDA (vision, text, macro) and the
predictions' coverage of the benchmark (samples matched, missing a prediction; extra predictions).
Table 2: same-view / cross-view / delta (cross - same) x NSE, PRC, AFRR.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping

METRICS = ("nse", "prc", "afrr")
COVERAGE = ("matched", "missing", "extra")  # counts from metrics.json's "coverage"
MISSING = "-"


def table1(runs: Mapping[str, Mapping]) -> tuple[list[str], list[list]]:
    """(header, rows) with one row per run (name -> metrics dict); cells are floats or None."""
    header = ["run"] + [f"{s} {m.upper()}" for s in ("vision", "text", "micro", "macro") for m in METRICS]
    header += ["vision UDA", "text UDA", "macro UDA"] + list(COVERAGE)
    rows = []
    for name, metrics in runs.items():
        row = [name] + [metrics.get(s, {}).get(m) for s in ("vision", "text", "micro", "macro") for m in METRICS]
        row += [metrics.get(s, {}).get("uda") for s in ("vision", "text", "macro")]
        row += [metrics.get("coverage", {}).get(c) for c in COVERAGE]
        rows.append(row)
    return header, rows


def view_stems(stems: Iterable[str]) -> tuple[str, str] | None:
    """The same-view and cross-view file stems among benchmark file stems, if exactly one of each."""
    stems = list(stems)
    same = [s for s in stems if "same_view" in s]
    cross = [s for s in stems if "cross_view" in s]
    return (same[0], cross[0]) if len(same) == 1 and len(cross) == 1 else None


def table2(runs: Mapping[str, Mapping], same: str = "visual_same_view",
           cross: str = "visual_cross_view") -> tuple[list[str], list[list]]:
    header = ["run"] + [f"{v} {m.upper()}" for v in ("same-view", "cross-view", "delta") for m in METRICS]
    rows = []
    for name, metrics in runs.items():
        s = [metrics.get(same, {}).get(m) for m in METRICS]
        c = [metrics.get(cross, {}).get(m) for m in METRICS]
        d = [None if a is None or b is None else b - a for a, b in zip(s, c)]
        rows.append([name, *s, *c, *d])
    return header, rows


def _cell(value, signed: bool = False) -> str:
    if value is None:
        return MISSING
    if isinstance(value, (str, int)):
        return str(value)
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def to_markdown(header: list[str], rows: list[list]) -> str:
    signed = [h.startswith("delta") for h in header]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(v, sg) for v, sg in zip(row, signed)) + " |")
    return "\n".join(lines) + "\n"


def to_csv(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else v if isinstance(v, (str, int)) else f"{v:.1f}" for v in row])
    return buf.getvalue()
