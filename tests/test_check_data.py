"""tools/check_data.py on files with each defect: official skips, other bad lines, missing and broken
images, samples over the token / patch buckets, every file format; both ways of running it."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tools import check_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VIS = {"id": "t1", "task_goal": "stack the cups", "visual_demo": ["f0.jpg", "f1.jpg", "f2.jpg"], "total_steps": "2",
       "stage_to_estimate": ["o1.jpg"], "closest_idx": "2", "delta": "+5%", "progress_score": "60%"}
TXT = {"id": "t2", "task_goal": "open the drawer", "text_demo": ["grasp the handle", "pull"], "total_steps": 2,
       "stage_to_estimate": "o2.jpg", "closest_idx": 1, "progress_score": "50%"}
CHAT = {"messages": [{"role": "system", "content": "You estimate progress."},
                     {"role": "user", "content": "Demo <image> 0%\nNow <image>"},
                     {"role": "assistant", "content": "<score>50%</score>"}], "images": ["t1/f0.jpg", "t1/o1.jpg"]}


def write(path, lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return str(path)


@pytest.fixture
def root(tmp_path):
    rng = np.random.default_rng(0)
    for rel in ["t1/f0.jpg", "t1/f1.jpg", "t1/f2.jpg", "t1/o1.jpg", "t2/o2.jpg"]:
        p = tmp_path / "images" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)).save(p)
    return tmp_path / "images"


def run_json(*argv):
    proc = subprocess.run([sys.executable, "-m", "tools.check_data", "--json", *map(str, argv)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    return proc.returncode, json.loads(proc.stdout)["files"]


def test_records_official_skips_and_errors(tmp_path):
    bench = write(tmp_path / "b.jsonl", [
        VIS, "",  # a blank line: not counted
        dict(TXT, task_goal=""),  # skipped (official)
        dict(TXT, total_steps=3),  # skipped (official): 2 steps for total_steps 3
        {k: v for k, v in VIS.items() if k != "closest_idx"},  # skipped (official): missing field
        dict(VIS, closest_idx="7"),  # error: out of range
        "{broken",  # error: bad JSON
        TXT])
    rc, (f,) = run_json(bench)
    assert rc == 1
    assert (f["file"], f["format"], f["lines"], f["ok"]) == (bench, "bench", 7, 2)
    assert [s["line"] for s in f["skipped"]] == [3, 4, 5]
    assert "task_goal" in f["skipped"][0]["reason"] and "expected total_steps = 3" in f["skipped"][1]["reason"]
    assert "missing field(s) closest_idx" in f["skipped"][2]["reason"]
    assert [(e["line"], e["field"]) for e in f["errors"]] == [(6, "closest_idx"), (7, None)]
    assert "bad JSON" in f["errors"][1]["reason"]
    rc, (f,) = run_json(write(tmp_path / "ok.jsonl", [VIS, dict(TXT, task_goal="")]))
    assert rc == 0 and f["ok"] == 1 and f["errors"] == []  # official skips alone do not fail the check


def test_images_present_and_decodable(tmp_path, root):
    (root / "t2" / "o2.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    bench = write(tmp_path / "b.jsonl", [VIS, dict(VIS, stage_to_estimate=["gone.jpg"]), TXT])
    rc, (f,) = run_json(bench, "--image-root", root)
    assert rc == 1 and f["ok"] == 1
    (missing, broken) = f["errors"]
    assert missing["line"] == 2 and missing["field"] == "stage_to_estimate" and "gone.jpg" in missing["reason"]
    assert broken["line"] == 3 and "o2.jpg cannot be read" in broken["reason"]


def test_token_and_patch_buckets(tmp_path, root):
    long_steps = dict(TXT, text_demo=["move " * 300, "pull"])
    bench = write(tmp_path / "b.jsonl", [VIS, long_steps])
    rc, (f,) = run_json(bench, "--image-root", root, "--length-buckets", "256,512")
    assert rc == 1 and f["ok"] == 1
    (e,) = f["errors"]
    assert e["line"] == 2 and "more than the largest length bucket 512" in e["reason"]
    # 56x56 images: 4x4 patches each at these pixel limits; 4 images = 64 patches > 48
    rc, (f,) = run_json(bench, "--image-root", root, "--patch-buckets", "16,48")
    assert rc == 1 and [e["line"] for e in f["errors"]] == [1]
    assert "64 image patches, more than the largest patch bucket 48" in f["errors"][0]["reason"]
    rc, (f,) = run_json(bench, "--image-root", root, "--length-buckets", "4096", "--patch-buckets", "64")
    assert rc == 0 and f["ok"] == 2


def test_every_format(tmp_path, root):
    chat = write(tmp_path / "sft.jsonl", [CHAT, dict(CHAT, images=["t1/f0.jpg", "t1/nope.jpg"]),
                                          dict(CHAT, images=["t1/f0.jpg"])])
    preds = write(tmp_path / "pred.jsonl", [{"setting": "s", "id": "t1", "stage": "o1.jpg", "line": 1, "score": 0.5},
                                            {"setting": "s", "id": "t1", "stage": "o1.jpg", "line": 0, "score": 0.5}])
    results = write(tmp_path / "results.jsonl", [
        {"ref": "2", "score": "60%", "response": "x", "meta_data": {"id": "t1", "stage_to_estimate": "/d/t1/o1.jpg",
                                                                    "progress_score": 0.6, "closest_idx": 2}},
        {"response": "x", "meta_data": {"id": "t1", "stage_to_estimate": "/d/t1/o1.jpg"}}])
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + (json.dumps(VIS) + "\n").encode())
    rc, files = run_json(chat, preds, results, bom, "--image-root", root, "--length-buckets", "4096")
    assert rc == 1
    by_format = {f["format"]: f for f in files}
    assert set(by_format) == {"chat", "predictions", "results", "bench"}
    c = by_format["chat"]
    assert c["ok"] == 1 and [(e["line"], e["field"]) for e in c["errors"]] == [(2, "images"), (3, "images")]
    assert "nope.jpg" in c["errors"][0]["reason"] and "placeholders" in c["errors"][1]["reason"]
    p = by_format["predictions"]
    assert p["ok"] == 1 and [(e["line"], e["field"]) for e in p["errors"]] == [(2, "line")]
    r = by_format["results"]
    assert r["ok"] == 1 and r["errors"][0]["line"] == 2 and "score" in r["errors"][0]["reason"]
    assert by_format["bench"]["ok"] == 1 and by_format["bench"]["errors"] == []


def test_text_summary_and_script_invocation(tmp_path):
    bench = write(tmp_path / "b.jsonl", [VIS, dict(TXT, task_goal="")])
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "check_data.py"), bench, str(tmp_path / "x")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)  # from another directory
    assert proc.returncode == 1, proc.stderr
    assert f"{bench}: benchmark or RL training records, 2 lines, 1 ok, 1 skipped" in proc.stdout
    assert "line 2: skipped: field 'task_goal'" in proc.stdout
    assert "x: unknown, 0 lines" in proc.stdout and "no such file" in proc.stdout


def test_library_call(tmp_path):
    args = check_data.argparse.Namespace(image_root=None, length_buckets=None, patch_buckets=None, mode="think")
    summary = check_data.check_file(write(tmp_path / "b.jsonl", [VIS, TXT]), args)
    assert (summary["lines"], summary["ok"], summary["skipped"], summary["errors"]) == (2, 2, [], [])


def test_an_empty_file_and_a_directory_are_errors_named_as_such(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    rc, files = run_json(empty, tmp_path)
    assert rc == 1
    assert files[0]["errors"] == [{"line": 0, "field": None, "reason": "empty file: no records"}]
    assert files[1]["errors"] == [{"line": 0, "field": None, "reason": "a directory, not a JSONL file"}]


def test_training_files_are_named_and_their_sizes_summarised(tmp_path, root, capsys):
    """Per file: what it is (training files as such), images and tokens per sample (min, median, max)."""
    from data_pipeline.tokenizer import load_tokenizer

    answer = "<ref_think>a</ref_think><ref>2</ref><score_think>b</score_think><score>60%</score>"
    sft = write(tmp_path / "sft.jsonl", [dict(VIS, response=answer), dict(TXT, response=answer)])
    chat = write(tmp_path / "chat.jsonl", [CHAT])
    args = check_data.argparse.Namespace(image_root=str(root), length_buckets=(4096,), patch_buckets=None, mode="think")
    sizer, tokenizer = check_data._Sizer(3136, 12845056), load_tokenizer()
    summary = check_data.check_file(sft, args, tokenizer, sizer)
    assert summary["kind"] == "SFT training records (with responses)" and summary["errors"] == []
    assert summary["stats"]["images"] == {"min": 1, "median": 2.5, "max": 4}  # 3 frames + 1 observation; 1
    tokens = summary["stats"]["tokens"]
    assert 0 < tokens["min"] <= tokens["median"] <= tokens["max"] and tokens["min"] < tokens["max"]
    assert check_data.check_file(chat, args, tokenizer, sizer)["kind"] == "SFT training (chat)"
    args.image_root = None
    assert check_data.check_file(write(tmp_path / "rl.jsonl", [VIS]), args)["kind"] == "benchmark or RL training records"
    check_data._print(summary)
    out = capsys.readouterr().out
    assert out.startswith(f"{sft}: SFT training records (with responses), 2 lines, 2 ok")
    assert "  images per sample: min 1, median 2.5, max 4\n" in out and "  tokens per sample: min " in out
