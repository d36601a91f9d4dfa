"""Review app: decisions file semantics, applying decisions, and the Gradio app clicked through in
headless Chromium (Debian's chromium, driven by Playwright), including a restart mid-review."""
import json
import os
import shutil
import socket

import numpy as np
import pytest
from PIL import Image

from data_construction.unanswerable import apply_decisions, first_undecided, load_decisions, load_queue

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and os.path.exists(p)), None)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def make_queue(tmp_path, n=4):
    lines = []
    for i in range(n):
        d = tmp_path / "images" / f"traj_{i}"
        d.mkdir(parents=True)
        rgb = np.zeros((40, 40, 3), np.uint8)
        rgb[..., i % 3] = 200
        Image.fromarray(rgb).save(d / "camera_front_0010.jpg")
        Image.fromarray(255 - rgb).save(d / "camera_front_0010_edit.jpg")
        record = {"id": f"traj_{i}", "task_goal": f"goal number {i}", "visual_demo": ["a.jpg", "b.jpg"],
                  "total_steps": "1", "stage_to_estimate": ["camera_front_0010_edit.jpg"], "closest_idx": "n/a",
                  "delta": "n/a", "progress_score": "n/a"}
        lines.append({"key": f"bench|traj_{i}|camera_front_0010.jpg", "record": record,
                      "original_image": str(d / "camera_front_0010.jpg"),
                      "edited_image": str(d / "camera_front_0010_edit.jpg"), "goal": record["task_goal"],
                      "steps": [f"step one of {i}", f"step two of {i}"], "matching_step": 2,
                      "strategy": "color_change", "instruction": f"paint object {i} blue"})
    path = tmp_path / "queue.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(path), lines


def test_decisions_last_wins_and_apply(tmp_path):
    queue_path, lines = make_queue(tmp_path)
    queue = load_queue(queue_path)
    dec = tmp_path / "decisions.jsonl"
    dec.write_text("".join(json.dumps({"key": lines[i]["key"], "decision": d}) + "\n"
                           for i, d in ((0, "keep"), (1, "keep"), (1, "discard"))) + '{"key": "be')  # killed mid-line
    decisions = load_decisions(str(dec))
    assert decisions == {lines[0]["key"]: "keep", lines[1]["key"]: "discard"}
    assert first_undecided(queue, decisions) == 2
    out = str(tmp_path / "final.jsonl")
    with pytest.raises(ValueError, match="2 of 4 samples are undecided"):
        apply_decisions(queue, decisions, out)
    assert apply_decisions(queue, decisions, out, allow_undecided=True) == {"kept": 1, "discarded": 1, "undecided": 2}
    assert [json.loads(x) for x in open(out)] == [lines[0]["record"]]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"key": lines[0]["key"], "decision": "maybe"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl: decision 1: field 'decision'"):
        load_decisions(str(bad))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (Debian: apt-get install chromium)")
def test_click_through_in_headless_chromium_with_restart(tmp_path):
    pytest.importorskip("gradio", reason="gradio is in the test/tools extras")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
    from tools import review_app

    queue_path, lines = make_queue(tmp_path)
    decisions_path = str(tmp_path / "decisions.jsonl")
    keys = [e["key"] for e in lines]

    def serve():
        review = review_app.Review(queue_path, decisions_path)
        demo = review_app.build_app(review)
        port = _free_port()
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        return review, demo, f"http://127.0.0.1:{port}/"

    def click(page, button, expect_status):
        page.click(f"#{button}")
        page.get_by_text(expect_status).wait_for(timeout=20000)

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        review, demo, url = serve()
        try:
            page.goto(url)
            page.get_by_text("0 of 4 decided").wait_for(timeout=30000)
            assert keys[0] in page.inner_text("#info") and "paint object 0 blue" in page.inner_text("#info")
            assert page.locator("#original img").count() == 1 and page.locator("#edited img").count() == 1
            click(page, "keep", "1 of 4 decided (1 kept, 0 discarded)")
            assert keys[1] in page.inner_text("#info")
            click(page, "discard", "2 of 4 decided (1 kept, 1 discarded)")
            assert keys[2] in page.inner_text("#info")
        finally:
            demo.close()
            review.close()
        # Every click is on disk before the next sample is shown.
        assert load_decisions(decisions_path) == {keys[0]: "keep", keys[1]: "discard"}

        review, demo, url = serve()  # a restart opens at the first undecided sample
        try:
            page.goto(url)
            page.get_by_text("2 of 4 decided").wait_for(timeout=30000)
            assert keys[2] in page.inner_text("#info")
            click(page, "keep", "3 of 4 decided")
            click(page, "keep", "All samples are decided")
            assert page.locator("#keep").is_disabled()
        finally:
            demo.close()
            review.close()
            browser.close()

    assert review_app.main(["apply", "--queue", queue_path, "--decisions", decisions_path,
                            "--out", str(tmp_path / "final.jsonl")]) == {"kept": 3, "discarded": 1, "undecided": 0}
    assert [json.loads(x)["id"] for x in open(tmp_path / "final.jsonl")] == ["traj_0", "traj_2", "traj_3"]
