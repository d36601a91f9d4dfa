"""Tables (layout, one decimal, several runs) and figures (files written, heatmap counts)."""
import csv
import io
import os

import numpy as np
import pytest

from data_pipeline.records import Record
from progress_jax.eval import plots, tables
from progress_jax.eval.plots import _pyplot
from progress_jax.eval.metrics import Sample


def metrics(v_nse, t_nse, same_prc=None, cross_prc=None):
    entry = lambda nse, prc=50.0: {"nse": nse, "prc": prc, "afrr": 1.25, "uda": 40.0}  # noqa: E731
    return {"visual_same_view": entry(10.0, same_prc), "visual_cross_view": entry(20.04, cross_prc),
            "vision": entry(v_nse), "text": entry(t_nse), "micro": entry(None), "macro": entry(12.35),
            "coverage": {"samples": 60, "predictions": 58, "matched": 58, "missing": 2, "extra": 0, "duplicates": 0}}


def test_table1_rows_markdown_csv():
    runs = {"sft": metrics(24.04, 30.0), "rl": metrics(17.46, None)}
    header, rows = tables.table1(runs)
    assert header[:4] == ["run", "vision NSE", "vision PRC", "vision AFRR"]
    assert header[-6:] == ["vision UDA", "text UDA", "macro UDA", "matched", "missing", "extra"]
    assert len(header) == 1 + 12 + 3 + 3
    assert [r[0] for r in rows] == ["sft", "rl"]
    md = tables.to_markdown(header, rows)
    lines = md.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith("| run | vision NSE")
    assert lines[2].startswith("| sft | 24.0 | 50.0 | 1.2 | 30.0 |")  # one decimal (1.25 -> 1.2, round-half-even)
    assert "| rl | 17.5 |" in lines[3] and "| - |" in lines[3]  # undefined text NSE
    assert lines[2].endswith("| 58 | 2 | 0 |")  # the coverage, counted
    parsed = list(csv.reader(io.StringIO(tables.to_csv(header, rows))))
    assert parsed[0] == header and parsed[2][0] == "rl"
    assert parsed[2][header.index("text NSE")] == "" and parsed[2][header.index("macro NSE")] == "12.3"
    assert parsed[2][-3:] == ["58", "2", "0"]


def test_table2_same_cross_delta():
    runs = {"a": metrics(1.0, 1.0, same_prc=93.5, cross_prc=80.0)}
    header, rows = tables.table2(runs)
    assert header == ["run", "same-view NSE", "same-view PRC", "same-view AFRR", "cross-view NSE", "cross-view PRC",
                      "cross-view AFRR", "delta NSE", "delta PRC", "delta AFRR"]
    assert rows[0][7] == pytest.approx(10.04) and rows[0][8] == pytest.approx(-13.5) and rows[0][9] == 0.0
    md = tables.to_markdown(header, rows)
    assert "| +10.0 | -13.5 | +0.0 |" in md
    assert tables.view_stems(["x", "sim_same_view", "sim_cross_view"]) == ("sim_same_view", "sim_cross_view")
    assert tables.view_stems(["x", "text"]) is None


def rec(kind, total_steps, source="s", closest=1, progress=0.5, i=0):
    demo = tuple(f"f{k}.jpg" for k in range(total_steps + 1)) if kind == "visual" else None
    text = tuple(f"step {k}" for k in range(total_steps)) if kind == "text" else None
    return Record(source=source, line=i + 1, id=f"t{i % 3}", task_goal="g", visual_demo=demo, text_demo=text,
                  total_steps=total_steps, observation=f"o{i}.jpg", closest_idx=closest, progress=progress)


def independent_aligned_step(kind, total_steps, score):
    """Closest demo step by scanning percent values, the way a reader of the prompt would."""
    if kind == "visual":
        values = {i + 1: 100 * i / total_steps for i in range(total_steps + 1)}
    else:
        values = {k: 100 * k / total_steps for k in range(1, total_steps + 1)}
    best = None
    for idx in sorted(values):
        if best is None or abs(values[idx] - 100 * score) < abs(values[best] - 100 * score):
            best = idx
    return best


def make_samples(n=60, seed=0):
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        kind = "visual" if i % 2 else "text"
        steps = int(rng.integers(2, 6))
        num_demos = steps + 1 if kind == "visual" else steps
        score = None if i % 7 == 0 else float(rng.uniform(0, 1))
        ref = None if i % 11 == 0 else int(rng.integers(1, num_demos + 2))  # sometimes out of range
        progress = float(rng.uniform(0, 1))
        samples.append(Sample(rec(kind, steps, source=f"{kind}_file", closest=1, progress=progress, i=i), score, ref))
    return samples


def test_aligned_step_examples():
    assert plots.score_aligned_step(rec("visual", 4), 0.0) == 1   # frame 0 = 0%
    assert plots.score_aligned_step(rec("visual", 4), 0.3) == 2   # 25%
    assert plots.score_aligned_step(rec("visual", 4), 1.0) == 5
    assert plots.score_aligned_step(rec("text", 4), 0.0) == 1     # step 1 = 25%
    assert plots.score_aligned_step(rec("text", 4), 0.6) == 2     # 50%
    assert plots.score_aligned_step(rec("visual", 4), 0.125) == 1  # tie 0% / 25%: lower index


def test_coupling_counts_equal_independent_count():
    samples = make_samples()
    counts, out_of_range = plots.coupling_counts(samples)
    expected, expected_out = {}, 0
    for s in samples:
        if s.score is None or s.ref is None:
            continue
        if s.ref > s.record.num_demos:
            expected_out += 1
            continue
        a = independent_aligned_step(s.record.kind, s.record.total_steps, s.score)
        expected[(s.ref, a)] = expected.get((s.ref, a), 0) + 1
    assert out_of_range == expected_out > 0
    assert counts.sum() == sum(expected.values())
    for (r, a), c in expected.items():
        assert counts[r - 1, a - 1] == c
    assert counts.shape == (6, 6)  # largest demo: 5 steps + 1 frames


def test_figures_written(tmp_path):
    paths = plots.write_figures(make_samples(), str(tmp_path / "figs"))
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["score_histograms.png", "error_distributions.png", "coupling.png"]
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # degenerate inputs still give files: everything N/A
    all_na = [Sample(s.record, None, None) for s in make_samples(6)]
    for p in plots.write_figures(all_na, str(tmp_path / "na")):
        assert (tmp_path / "na" / p.rsplit("/", 1)[-1]).stat().st_size > 0


def test_figure_written_whole_or_not_at_all(tmp_path):
    paths = plots.write_figures(make_samples(), str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in paths)  # no temp file left
    fig, _ = plots._grid(1)
    with pytest.raises(ValueError, match="not supported"):
        plots._save(fig, str(tmp_path / "bad.nosuchformat"))  # savefig fails: nothing is written
    assert not (tmp_path / "bad.nosuchformat").exists()
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in paths)
    assert fig.number not in _pyplot().get_fignums()  # the figure is closed either way
