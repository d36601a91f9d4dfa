"""Predictions JSONL (write, resume, truncated tail), scoring against bench files, and the CLI tool."""
import json
import os
import subprocess
import sys

import pytest

from data_pipeline.records import Record
from progress_jax.eval.predictions import (PredictionError, PredictionWriter, done_keys, load_bench,
                                           prediction_line, read_predictions, score)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def think(ref, score_text):
    return f"<ref_think>r</ref_think><ref>{ref}</ref><score_think>s</score_think><score>{score_text}</score>"


def record(source="visual_same_view", tid="t1", obs="a.jpg", progress=0.25):
    return Record(source=source, line=1, id=tid, task_goal="g", visual_demo=tuple(f"{i}.jpg" for i in range(5)),
                  text_demo=None, total_steps=4, observation=obs, closest_idx=2, progress=progress)


def test_prediction_line_parses_response():
    line = prediction_line(record(), think("3", "40%"))
    assert line == {"setting": "visual_same_view", "id": "t1", "stage": "a.jpg", "line": 1, "response": think("3", "40%"),
                    "ref": 3, "score": pytest.approx(0.4), "na": False, "unparseable": False}
    bad = prediction_line(record(), "I think 40%")
    assert bad["na"] and bad["unparseable"] and bad["score"] is None
    assert prediction_line(record(), "40%", mode="direct")["score"] == pytest.approx(0.4)


def test_writer_resume_after_killed_run(tmp_path):
    path = tmp_path / "run" / "pred.jsonl"
    with PredictionWriter(path) as w:
        w.write(prediction_line(record(obs="a.jpg"), think(1, "10%")))
        w.write(prediction_line(record(obs="b.jpg"), think(2, "20%")))
    with open(path, "a") as f:
        f.write('{"setting": "visual_same_view", "id": "t1", "sta')  # killed mid-line
    pf = read_predictions(path)
    assert pf.truncated_line == 3 and len(pf.lines) == 2
    assert done_keys(path) == {("visual_same_view", "t1", "a.jpg", 1), ("visual_same_view", "t1", "b.jpg", 1)}
    with PredictionWriter(path) as w:  # resume: the partial line is cut, the new one starts cleanly
        w.write(prediction_line(record(obs="c.jpg"), think(3, "30%")))
    pf = read_predictions(path)
    assert pf.truncated_line is None and [n for n, _ in pf.lines] == [1, 2, 3]
    assert pf.lines[2][1]["stage"] == "c.jpg"
    assert done_keys(tmp_path / "absent.jsonl") == set()


def test_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"setting": "s", "id": 1, "stage": "a.jpg", "score": 0.5}')
    assert done_keys(path) == {("s", "1", "a.jpg", None)}
    with PredictionWriter(path) as w:
        w.write({"setting": "s", "id": "2", "stage": "b.jpg", "score": None})
    assert len(read_predictions(path).lines) == 2


@pytest.mark.parametrize("text, match", [
    ('{"setting": "s", "id": "1", "stage": "a", "score": 0.5}\nnot json\n'
     '{"setting": "s", "id": "2", "stage": "b", "score": 1}\n',
     r"p.jsonl:2: bad JSON"),
    ('{"setting": "s", "stage": "a", "score": 0.5}\n', r"p.jsonl:1: key 'id'"),
    ('{"setting": "s", "id": "1", "stage": "a"}\n', r"p.jsonl:1: needs 'response'"),
    ('{"setting": "s", "id": "1", "stage": "a", "response": 5}\n', r"p.jsonl:1: key 'response'"),
    ('{"setting": "s", "id": "1", "stage": "a", "score": [1]}\n', r"p.jsonl:1: key 'score'"),
    ('[1, 2]\n', r"p.jsonl:1: expected a JSON object"),
])
def test_bad_prediction_lines_raise_with_location(tmp_path, text, match):
    path = tmp_path / "p.jsonl"
    path.write_text(text)
    with pytest.raises(PredictionError, match=match):
        read_predictions(path)


def write_jsonl(path, objs):
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))


def vis(tid, obs, score, closest="2"):
    return {"id": tid, "task_goal": "stack cups", "visual_demo": [f"{i}.jpg" for i in range(5)], "total_steps": "4",
            "stage_to_estimate": [obs], "closest_idx": closest, "delta": "10%", "progress_score": score,
            "data_source": "sim"}


def txt(tid, obs, score, closest=1):
    return {"id": tid, "task_goal": "open drawer", "text_demo": ["[left] grasp", "[left] pull"], "total_steps": 2,
            "stage_to_estimate": obs, "closest_idx": closest, "progress_score": score}


@pytest.fixture
def bench_and_preds(tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    write_jsonl(bench / "visual_same_view.jsonl", [vis("t1", "a.jpg", "25%"), vis("t1", "b.jpg", "75%", "4"),
                                                   vis("t2", "c.jpg", "50%", "3"), vis("t2", "d.jpg", "100%", "5")])
    write_jsonl(bench / "text-normal.jsonl", [txt("x1", "e.jpg", "50%"), txt("x1", "f.jpg", "100%", 2)])
    write_jsonl(bench / "text-unanswerable.jsonl", [txt("x1", "e.jpg", "n/a", "n/a"), txt("x1", "f.jpg", "n/a", "n/a")])
    (bench / "notes.txt").write_text("not a benchmark file")
    preds = [
        {"setting": "visual_same_view", "id": "t1", "stage": "a.jpg", "response": think(1, "90%")},  # replaced below
        {"setting": "visual_same_view", "id": "t1", "stage": "a.jpg", "response": think(2, "30%")},
        {"setting": "visual_same_view", "id": "t1", "stage": "b.jpg", "response": think(4, "0.7")},
        {"setting": "visual_same_view", "id": "t2", "stage": "c.jpg", "score": 40, "ref": "3"},     # parsed fields only
        # t2/d.jpg missing -> N/A
        {"setting": "visual_same_view", "id": "t9", "stage": "z.jpg", "response": think(1, "5%")},  # unknown sample
        {"setting": "text-normal", "id": "x1", "stage": "e.jpg", "response": think("n/a", "n/a")},
        {"setting": "text-normal", "id": "x1", "stage": "f.jpg", "response": think(2, "100%")},
        {"setting": "text-unanswerable", "id": "x1", "stage": "e.jpg", "response": think("n/a", "n/a")},
        {"setting": "text-unanswerable", "id": "x1", "stage": "f.jpg", "response": think(1, "20%")},
    ]
    pred = tmp_path / "model_x.jsonl"
    pred.write_text("".join(json.dumps(p) + "\n" for p in preds) + '{"setting": "text-nor')
    return bench, pred


# Hand-computed expectations for the fixture (metric definitions: progress_jax/eval/metrics.py).
V_NSE = (0.05 / 0.75 + 0.05 / 0.75 + 0.1 / 0.5) / 3
EXPECTED = {
    "visual_same_view": {"n": 4, "nse": 100 * V_NSE, "prc": 100.0, "afrr": 25.0, "uda": None},
    "text-normal": {"n": 2, "nse": 0.0, "prc": None, "afrr": 50.0, "uda": None},
    "text-unanswerable": {"n": 2, "nse": None, "prc": None, "afrr": None, "uda": 50.0},
    "vision": {"nse": 100 * V_NSE, "prc": 100.0, "afrr": 25.0, "uda": None},
    "text": {"nse": 0.0, "prc": None, "afrr": 50.0, "uda": 50.0},
    "micro": {"nse": 100 * (4 * V_NSE + 0) / 6, "prc": 100.0, "afrr": (4 * 25 + 2 * 50) / 6, "uda": 50.0},
    "macro": {"nse": 100 * V_NSE / 2, "prc": 100.0, "afrr": 37.5, "uda": 50.0},
}


def check_metrics(metrics):
    for entry, values in EXPECTED.items():
        for key, value in values.items():
            got = metrics[entry][key]
            assert (got is None) if value is None else got == pytest.approx(value), (entry, key, got, value)


def test_score_library(bench_and_preds):
    bench_dir, pred = bench_and_preds
    bench = load_bench([bench_dir])
    assert list(bench) == ["text-normal", "text-unanswerable", "visual_same_view"]
    pf = read_predictions(pred)
    assert pf.truncated_line == 10
    result = score(bench, [obj for _, obj in pf.lines])
    check_metrics(result.metrics)
    r = result.report
    assert (r.n_bench, r.n_predictions, r.matched) == (8, 9, 7)
    assert r.missing == [("visual_same_view", "t2", "d.jpg", 4)]
    assert r.unknown == [("visual_same_view", "t9", "z.jpg", None)]
    assert r.duplicates == [("visual_same_view", "t1", "a.jpg", None)]
    refs = {s.record.observation: s.ref for s in result.samples if s.record.source == "visual_same_view"}
    assert refs == {"a.jpg": 2, "b.jpg": 4, "c.jpg": 3, "d.jpg": None}


def test_load_bench_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such benchmark"):
        load_bench([tmp_path / "nope.jsonl"])
    with pytest.raises(FileNotFoundError, match="no .jsonl"):
        load_bench([tmp_path])
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        write_jsonl(tmp_path / d / "same.jsonl", [vis("t", "o.jpg", "50%")])
    with pytest.raises(ValueError, match="stem 'same'"):
        load_bench([tmp_path / "a", tmp_path / "b" / "same.jsonl"])


def test_cli_writes_everything(bench_and_preds, tmp_path):
    bench_dir, pred = bench_and_preds
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "score_predictions.py"), "--bench",
                           str(bench_dir / "visual_same_view.jsonl"), str(bench_dir / "text-normal.jsonl"),
                           str(bench_dir / "text-unanswerable.jsonl"), "--pred", str(pred), "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "truncated last line" in proc.stdout
    assert "missing predictions: 1 (counted as N/A)" in proc.stdout
    assert "unknown predictions: 1" in proc.stdout and "duplicate predictions: 1" in proc.stdout
    assert "| model_x |" in proc.stdout
    check_metrics(json.loads((out / "metrics.json").read_text()))
    names = sorted(os.listdir(out))
    assert names == ["coupling.png", "error_distributions.png", "metrics.json", "score_histograms.png",
                     "table1.csv", "table1.md"]  # no same/cross-view pair -> no table 2
    row = (out / "table1.csv").read_text().splitlines()[1].split(",")
    assert row[0] == "model_x" and row[1] == f"{100 * V_NSE:.1f}"


def test_cli_bad_bench_line_names_file_and_line(tmp_path):
    bench = tmp_path / "b.jsonl"
    write_jsonl(bench, [vis("t", "o.jpg", "50%"), {**vis("t", "p.jpg", "50%"), "closest_idx": "9"}])
    pred = tmp_path / "p.jsonl"
    pred.write_text("")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "score_predictions.py"), "--bench", str(bench),
                           "--pred", str(pred), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode != 0
    assert "b.jsonl:2: field 'closest_idx'" in proc.stderr
