"""Results viewer: error kinds and filters of a predictions file joined to its benchmark files, and
the Gradio app driven in headless Chromium (Debian's chromium, Playwright), as the review app."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from progress_jax.eval import viewer
from tests.test_review_app import CHROMIUM, CHROMIUM_ARGS, _free_port


def _answer(ref, score):
    return f"<ref_think>look</ref_think><ref>{ref}</ref><score_think>hmm</score_think><score>{score}</score>"


def make_run(tmp_path):
    """Two settings: visual (3 samples, with images) and text (3 samples, one unanswerable);
    predictions covering every error kind."""
    bench = tmp_path / "bench"
    images = bench / "images"
    visual = []
    for i in range(3):
        d = images / f"traj{i}"
        d.mkdir(parents=True)
        for name, color in (("f0.jpg", 40), ("f1.jpg", 120), ("f2.jpg", 200), ("obs.jpg", 90)):
            Image.fromarray(np.full((32, 32, 3), color + i, np.uint8)).save(d / name)
        visual.append({"id": f"traj{i}", "task_goal": f"stack block {i}", "visual_demo": ["f0.jpg", "f1.jpg", "f2.jpg"],
                       "total_steps": "2", "stage_to_estimate": ["obs.jpg"], "closest_idx": "2",
                       "progress_score": "50%"})
    text = [{"id": f"t{i}", "task_goal": f"make tea {i}", "text_demo": ["boil water", "add leaves", "pour"],
             "total_steps": "3", "stage_to_estimate": [f"t{i}.jpg"], "closest_idx": "3", "progress_score": "90%"}
            for i in range(2)]
    text.append({"id": "t9", "task_goal": "make tea 9", "text_demo": ["boil water", "add leaves", "pour"],
                 "total_steps": "3", "stage_to_estimate": ["t9.jpg"], "closest_idx": "n/a", "progress_score": "n/a"})
    for name, recs in (("visual_same_view", visual), ("text-normal", text)):
        (bench / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    preds = [
        {"setting": "visual_same_view", "id": "traj0", "stage": "obs.jpg", "response": _answer(2, "52%")},  # fine
        {"setting": "visual_same_view", "id": "traj1", "stage": "obs.jpg", "response": _answer(1, "95%")},  # ref, score
        {"setting": "visual_same_view", "id": "traj2", "stage": "obs.jpg", "response": "I cannot tell"},  # unparseable
        {"setting": "text-normal", "id": "t0", "stage": "t0.jpg", "response": _answer("n/a", "n/a")},  # false n/a
        # t1: no prediction (missing)
        {"setting": "text-normal", "id": "t9", "stage": "t9.jpg", "score": 0.3, "ref": 2},  # missed n/a
    ]
    pred = tmp_path / "predictions.jsonl"
    pred.write_text("".join(json.dumps(p) + "\n" for p in preds))
    return str(pred), str(bench), str(images)


def test_error_kinds_and_filters(tmp_path):
    pred, bench, images = make_run(tmp_path)
    rows = viewer.load(pred, [bench])
    by_id = {r.record.id: r for r in rows}
    assert [r.record.id for r in rows] == ["t0", "t1", "t9", "traj0", "traj1", "traj2"]  # files in name order
    assert by_id["traj0"].kinds() == [] and by_id["traj0"].score == pytest.approx(0.52)
    assert by_id["traj1"].kinds() == ["wrong ref", "score error"]
    assert by_id["traj1"].error == pytest.approx(0.45 / 0.5)
    assert by_id["traj2"].kinds() == ["unparseable"]
    assert by_id["t0"].kinds() == ["false n/a"]
    assert by_id["t1"].kinds() == ["missing"]
    assert by_id["t9"].kinds() == ["missed n/a"]
    assert by_id["traj0"].kinds(threshold=0.01) == ["score error"]  # |0.5 - 0.52| / 0.5 = 0.04

    ids = lambda idx: [rows[i].record.id for i in idx]
    assert ids(viewer.select(rows)) == [r.record.id for r in rows]
    assert ids(viewer.select(rows, "visual_same_view", viewer.ANY_ERROR)) == ["traj1", "traj2"]
    assert ids(viewer.select(rows, error=viewer.CORRECT)) == ["traj0"]
    assert ids(viewer.select(rows, "text-normal", "missed n/a")) == ["t9"]
    assert ids(viewer.select(rows, "visual_same_view", "false n/a")) == []
    with pytest.raises(ValueError, match="unknown error filter"):
        viewer.select(rows, error="bad")
    assert viewer.counts(rows) == {"missing": 1, "unparseable": 1, "false n/a": 1, "missed n/a": 1,
                                   "wrong ref": 1, "score error": 1, viewer.CORRECT: 1}
    assert viewer.settings(rows) == ["text-normal", "visual_same_view"]


def test_describe_and_images(tmp_path):
    pred, bench, images = make_run(tmp_path)
    rows = {r.record.id: r for r in viewer.load(pred, [bench])}
    text = viewer.describe(rows["t0"])
    assert "ref 3, score 90.0%" in text and "ref n/a, score n/a" in text and "false n/a" in text
    assert "3. **pour** (ground-truth ref)" in text
    assert "none (missing)" in viewer.describe(rows["t1"])
    frames, obs, missing = viewer.images(rows["traj1"], images)
    assert [c for _, c in frames] == ["1: f0.jpg", "2: f1.jpg (ground-truth ref)", "3: f2.jpg"]
    # The gallery shows captions only in its preview: the ground-truth frame is named in the text too.
    assert "**Key frames:** 1: f0.jpg, **2: f1.jpg (ground-truth ref)**, 3: f2.jpg" in viewer.describe(rows["traj1"])
    assert "Key frames" not in text  # a text demo
    assert obs == os.path.join(images, "traj1", "obs.jpg") and missing == []
    os.remove(os.path.join(images, "traj1", "f2.jpg"))
    frames, _, missing = viewer.images(rows["traj1"], images)
    assert len(frames) == 2 and missing == [os.path.join(images, "traj1", "f2.jpg")]
    assert viewer.images(rows["t0"], images)[1] is None  # a text sample's observation image is absent here


def test_a_score_beyond_100_is_answered_and_shown_clamped(tmp_path):
    pred, bench, _ = make_run(tmp_path)
    with open(pred, "a") as f:
        f.write(json.dumps({"setting": "text-normal", "id": "t1", "stage": "t1.jpg", "response": _answer(3, "772%")}) + "\n")
    row = {r.record.id: r for r in viewer.load(pred, [bench])}["t1"]
    assert row.kinds() == [] and not row.unparseable and row.score == 1.0  # answered, within 0.2 of 90%
    assert "- **Prediction:** ref 3, score 100.0% (answered 772%, clamped to 0..100%)" in viewer.describe(row)
    assert "answered" not in viewer.describe({r.record.id: r for r in viewer.load(pred, [bench])}["traj0"])


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (Debian: apt-get install chromium)")
def test_viewer_in_headless_chromium(tmp_path):
    pytest.importorskip("gradio", reason="gradio is in the test/tools extras")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
    from tools import results_viewer

    pred, bench, images = make_run(tmp_path)
    rows = viewer.load(pred, [bench])
    demo = results_viewer.build_app(rows, images)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)

    def choose(page, elem, option):
        page.click(f"#{elem} input")
        page.get_by_role("option", name=option, exact=True).click()

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        try:
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_text("Sample 1 of 6 (filtered from 6)").wait_for(timeout=30000)
            assert "make tea 0" in page.inner_text("#info")
            assert "**" not in page.inner_text("#info")  # markdown rendered
            assert not page.locator("#demo").is_visible()  # a text demo: no empty gallery
            page.click("#next")
            page.get_by_text("Sample 2 of 6").wait_for(timeout=20000)
            assert "none (missing)" in page.inner_text("#info")

            choose(page, "setting", "visual_same_view")
            page.get_by_text("Sample 1 of 3 (filtered from 6)").wait_for(timeout=20000)
            assert "stack block 0" in page.inner_text("#info")
            page.locator("#demo img").first.wait_for(timeout=20000)
            assert "2: f1.jpg (ground-truth ref)" in page.inner_text("#info")  # visible without the preview
            assert page.locator("#demo img").count() >= 3 and page.locator("#observation img").count() == 1
            assert "<score>52%</score>" in page.input_value("#response textarea")

            choose(page, "error", "wrong ref")
            page.get_by_text("Sample 1 of 1 (filtered from 6)").wait_for(timeout=20000)
            info = page.inner_text("#info")
            assert "traj1" in info and "ref 1, score 95.0%" in info and "wrong ref, score error" in info

            choose(page, "error", "missed n/a")  # none in the visual setting
            page.get_by_text("0 of 6 samples match").wait_for(timeout=20000)
        finally:
            browser.close()
            demo.close()


def test_a_missing_or_bad_predictions_file_is_one_line(tmp_path, capsys):
    from tools import results_viewer

    pred, bench, _ = make_run(tmp_path)
    with pytest.raises(SystemExit) as e:
        results_viewer.main(["--pred", str(tmp_path / "absent.jsonl"), "--bench", bench])
    assert e.value.code == 2 and f"--pred: no such file: {tmp_path / 'absent.jsonl'}" in capsys.readouterr().err
    with open(pred, "a") as f:
        f.write('{"setting": 3}\n{"setting": "x", "id": "y", "stage": "z", "score": 0.5}\n')
    with pytest.raises(SystemExit) as e:
        results_viewer.main(["--pred", pred, "--bench", bench])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"error: {pred}:6: key 'id'") and "Traceback" not in err
