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
    # Python's json writes NaN / Infinity for non-finite floats; they would make the metrics NaN
    ('{"setting": "s", "id": "1", "stage": "a", "score": 0.5}\n{"setting": "s", "id": "1", "stage": "b", "score": NaN}\n',
     r"p.jsonl:2: key 'score': expected a finite number, got nan"),
    ('{"setting": "s", "id": "1", "stage": "a", "score": -Infinity}\n', r"p.jsonl:1: key 'score': expected a finite"),
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
    assert row[-3:] == ["7", "1", "1"]  # matched, missing, extra
    assert json.loads((out / "metrics.json").read_text())["coverage"] == {
        "samples": 8, "predictions": 9, "matched": 7, "missing": 1, "extra": 1, "duplicates": 1}


@pytest.mark.parametrize("preds", ["empty", "another bench"])
def test_cli_refuses_predictions_that_match_no_sample(bench_and_preds, tmp_path, preds):
    bench_dir, _ = bench_and_preds
    pred = tmp_path / "p.jsonl"
    pred.write_text("" if preds == "empty" else json.dumps(
        {"setting": "visual_cross_view", "id": "q1", "stage": "a.jpg", "response": think(1, "10%")}) + "\n")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "tools.score_predictions", "--bench", str(bench_dir),
                           "--pred", str(pred), "--out", str(out)], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    n = 0 if preds == "empty" else 1
    assert proc.stderr.strip() == (f"error: {pred}: none of its {n} prediction(s) matches one of the 8 samples of "
                                   f"{bench_dir} (another benchmark's predictions?); nothing written")
    assert not out.exists()


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


# --- duplicate (id, stage) lines, official result files, empty benchmark files -------------------------

@pytest.fixture
def dup_bench(tmp_path):
    """Lines 1 and 3 share (id, stage) with different ground truth, as 20 lines of the official
    visual_same_view.jsonl (8 of visual_cross_view.jsonl) do."""
    path = tmp_path / "visual_same_view.jsonl"
    write_jsonl(path, [vis("t1", "a.jpg", "25%", "2"), vis("t1", "b.jpg", "75%", "4"), vis("t1", "a.jpg", "50%", "3")])
    return load_bench([path])


def scores_by_line(result):
    return {s.record.line: s.score for s in result.samples}


def test_duplicate_lines_are_separate_samples(dup_bench):
    preds = [{"setting": "visual_same_view", "id": "t1", "stage": "a.jpg", "line": 1, "score": 0.25},
             {"setting": "visual_same_view", "id": "t1", "stage": "a.jpg", "line": 3, "score": 0.5},
             {"setting": "visual_same_view", "id": "t1", "stage": "b.jpg", "score": 0.7}]
    result = score(dup_bench, preds)
    assert scores_by_line(result) == {1: 0.25, 2: pytest.approx(0.7), 3: 0.5}
    assert result.report.matched == 3 and not result.report.missing and not result.report.unknown
    # NSE over the three: 0, |0.75 - 0.7| / 0.75, 0
    assert result.metrics["visual_same_view"]["nse"] == pytest.approx(100 * (0.05 / 0.75) / 3)
    assert len(result.report.duplicate_bench_keys) == 2


def test_predictions_keyed_without_line_score_each_duplicate(dup_bench):
    preds = [{"setting": "visual_same_view", "id": "t1", "stage": "a.jpg", "score": 0.25},
             {"setting": "visual_same_view", "id": "t1", "stage": "b.jpg", "score": 0.75}]
    result = score(dup_bench, preds)
    assert scores_by_line(result) == {1: 0.25, 2: 0.75, 3: 0.25}
    assert result.report.matched == 3 and result.report.shared == 2
    assert result.metrics["visual_same_view"]["nse"] == pytest.approx(100 * (0.25 / 0.5) / 3)


def test_line_numbers_drive_resume(dup_bench, tmp_path):
    from progress_jax.eval.predictions import pending_records

    rec1, rec2, rec3 = dup_bench["visual_same_view"]
    path = tmp_path / "p.jsonl"

    def pending_lines(preds):
        write_jsonl(path, preds)
        return [r.line for r in pending_records(dup_bench, done_keys(path))["visual_same_view"]]

    assert pending_lines([prediction_line(rec1, think(2, "25%"))]) == [2, 3]  # the twin on line 3 is not done
    assert pending_lines([{"setting": "visual_same_view", "id": "t1", "stage": "a.jpg", "score": 0.3}]) == [2]
    # a unique sample is done under any line number (a re-saved benchmark file); a repeated one is not
    assert pending_lines([{"setting": "visual_same_view", "id": "t1", "stage": "b.jpg", "line": 9, "score": 0.7},
                          {"setting": "visual_same_view", "id": "t1", "stage": "a.jpg", "line": 9, "score": 0.3}]) == [1, 3]
    assert [r.line for r in pending_records(dup_bench, set())["visual_same_view"]] == [1, 2, 3]


def official_item(record_obj, image_root="/data/images"):
    """What the official loaders keep of a benchmark line in meta_data (visual_demo_dataset.py):
    parsed ground truth, int total_steps, image paths joined to image_root."""
    stage = record_obj["stage_to_estimate"]
    stage = stage[0] if isinstance(stage, list) else stage
    item = dict(record_obj)
    item.update(total_steps=int(item["total_steps"]),
                closest_idx=None if item["closest_idx"] == "n/a" else int(item["closest_idx"]),
                progress_score=None if item["progress_score"] == "n/a" else float(item["progress_score"][:-1]) / 100,
                stage_to_estimate=f"{image_root}/{item['id']}/{stage}", _inference_idx=0)
    return item


def official_think_line(record_obj, ref, score_text, status="success"):
    # The layout run_visual_demo.py writes (json.dumps, so inf becomes Infinity).
    item = official_item(record_obj)
    return {"ref": ref, "score": score_text, "closest_idx": str(item["closest_idx"]),
            "ground_truth_score": record_obj["progress_score"], "ref_score": float("inf"), "pred_score": float("inf"),
            "ref_false_positive": False, "score_false_positive": False, "response": "<ref>...</ref>",
            "meta_data": {**item, "status": status}}


def official_nothink_line(record_obj, score_text):
    # The layout run_visual_demo_nothink.py writes.
    return {"predicted_score": score_text, "ground_truth_score": record_obj["progress_score"],
            "evaluation_score": 0.1, "score_false_positive": False, "response": score_text,
            "meta_data": {**official_item(record_obj), "status": "success"}}


def test_official_result_files_score_like_our_predictions(tmp_path):
    lines = [vis("t1", "a.jpg", "25%", "2"), vis("t1", "b.jpg", "75%", "4"), vis("t1", "a.jpg", "50%", "3"),
             vis("t2", "c.jpg", "n/a", "n/a")]
    bench_path = tmp_path / "visual_same_view.jsonl"
    write_jsonl(bench_path, lines)
    bench = load_bench([bench_path])
    results = tmp_path / "results.jsonl"
    # Official order need not follow the file; line 3 (the duplicate) before line 1; one failed parse.
    write_jsonl(results, [official_think_line(lines[2], "3", "50%"), official_think_line(lines[0], "2", "20%"),
                          official_think_line(lines[1], None, None, status="failed"),
                          official_think_line(lines[3], "n/a", "n/a"),
                          official_think_line(vis("t9", "z.jpg", "10%", "1"), "1", "10%")])
    pf = read_predictions(results, bench)
    assert pf.format == "results" and pf.unmatched == [5]
    got = score(bench, [obj for _, obj in pf.lines])
    ours = [{"setting": "visual_same_view", "id": "t1", "stage": "a.jpg", "line": 3, "score": "50%", "ref": "3"},
            {"setting": "visual_same_view", "id": "t1", "stage": "a.jpg", "line": 1, "score": "20%", "ref": "2"},
            {"setting": "visual_same_view", "id": "t1", "stage": "b.jpg", "line": 2, "score": None},
            {"setting": "visual_same_view", "id": "t2", "stage": "c.jpg", "line": 4, "score": "n/a", "ref": "n/a"}]
    expected = score(bench, ours)
    assert got.metrics == expected.metrics
    assert scores_by_line(got) == {1: pytest.approx(0.2), 2: None, 3: pytest.approx(0.5), 4: None}
    assert {s.record.line: s.ref for s in got.samples} == {1: 2, 2: None, 3: 3, 4: None}
    assert got.metrics["visual_same_view"]["uda"] == 100.0  # the n/a sample answered n/a

    nothink = tmp_path / "nothink.jsonl"
    write_jsonl(nothink, [official_nothink_line(lines[0], "30%"), official_nothink_line(lines[2], "40%")])
    pf = read_predictions(nothink, bench)
    assert scores_by_line(score(bench, [o for _, o in pf.lines])) == {1: pytest.approx(0.3), 2: None,
                                                                      3: pytest.approx(0.4), 4: None}
    with pytest.raises(ValueError, match="official result file"):
        read_predictions(nothink)  # the benchmark is needed to place its lines
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [official_think_line(lines[0], "2", "20%"), {"meta_data": {"id": "t1"}, "score": "1%"}])
    with pytest.raises(PredictionError, match=r"bad.jsonl:2: key 'meta_data.stage_to_estimate'"):
        read_predictions(bad, bench)


def test_cli_scores_an_official_result_file(tmp_path):
    lines = [vis("t1", "a.jpg", "25%", "2"), vis("t1", "b.jpg", "75%", "4")]
    bench = tmp_path / "visual_same_view.jsonl"
    write_jsonl(bench, lines)
    results = tmp_path / "qwen72b_results.jsonl"
    write_jsonl(results, [official_think_line(lines[0], "2", "25%"), official_think_line(lines[1], "4", "75%")])
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "tools.score_predictions", "--bench", str(bench),
                           "--pred", str(results), "--out", str(out)], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "official result file, 2 line(s) matched" in proc.stdout
    assert json.loads((out / "metrics.json").read_text())["visual_same_view"]["nse"] == 0.0


def test_cli_refuses_an_empty_benchmark_file_before_writing(tmp_path):
    good, empty = tmp_path / "visual_same_view.jsonl", tmp_path / "visual_cross_view.jsonl"
    write_jsonl(good, [vis("t1", "a.jpg", "25%", "2")])
    empty.write_text("\n")
    pred = tmp_path / "p.jsonl"
    write_jsonl(pred, [{"setting": "visual_same_view", "id": "t1", "stage": "a.jpg", "score": 0.25}])
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "score_predictions.py"), "--bench", str(good),
                           str(empty), "--pred", str(pred), "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "visual_cross_view.jsonl: no benchmark samples" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_cli_refuses_an_out_that_is_a_file(bench_and_preds, tmp_path):
    bench_dir, pred = bench_and_preds
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    proc = subprocess.run([sys.executable, "-m", "tools.score_predictions", "--bench", str(bench_dir),
                           "--pred", str(pred), "--out", str(out)], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"--out {out} is a file; it names the directory" in proc.stderr and out.read_text() == "mine"
