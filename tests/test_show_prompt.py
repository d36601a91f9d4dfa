import json
import os
import subprocess
import sys

import pytest

from data_pipeline import prompt_texts as T
from data_pipeline.prompts import build_messages, render_text
from data_pipeline.records import load_records
from tools.show_prompt import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMG = "<|vision_start|><|image_pad|><|vision_end|>"
HUMAN = {"id": "human/dishwasher_bowl", "task_goal": "taking a bowl out of the dishwasher",
         "visual_demo": ["0.jpg", "7.jpg", "24.jpg"], "total_steps": 2, "stage_to_estimate": "7.jpg",
         "closest_idx": 2, "progress_score": "50%", "data_source": "human",
         "response": "<ref_think>a</ref_think><ref>2</ref><score_think>b</score_think><score>50%</score>"}
TEXT = {"id": "t/1", "task_goal": "open the drawer", "text_demo": ["reach", "pull"], "total_steps": "2",
        "stage_to_estimate": ["o.jpg"], "closest_idx": "n/a", "progress_score": "n/a"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """Line 1 visual, 2 blank, 3 text, 4 an empty task_goal (skipped by the official loaders and ours)."""
    path = tmp_path_factory.mktemp("show") / "bench.jsonl"
    path.write_text("\n".join([json.dumps(HUMAN), "", json.dumps(TEXT), json.dumps(dict(TEXT, task_goal=""))]) + "\n")
    return str(path)


def run(*args, module=False, cwd="/"):
    cmd = [sys.executable, "-m", "tools.show_prompt"] if module else [sys.executable, os.path.join(ROOT, "tools",
                                                                                                 "show_prompt.py")]
    env = dict(os.environ, PYTHONPATH=ROOT if module else "")
    return subprocess.run(cmd + list(args), capture_output=True, text=True, cwd=ROOT if module else cwd, env=env)


def call(capsys, *args):
    """In process (fast); the two tests above run the tool as a script and as a module."""
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_script_prints_the_official_eval_prompt(bench):
    # as run_visual_demo.py builds it: system prompt as system message and first user part, no separators
    vs = T.VISUAL_SYSTEM
    want = (f"<|im_start|>system\n{vs}<|im_end|>\n<|im_start|>user\n{vs}The overall task goal is taking a bowl out "
            f"of the dishwasherHere is the demonstration:{IMG * 3}The progress shifts across all given visual demos "
            f"is: <image> 0% <image> 50% <image> 100%Here is the current state that you need to estimate:{IMG}"
            f"{T.VISUAL_THINK_TASK}<|im_end|>\n<|im_start|>assistant\n")
    out = run("--bench", bench, "--line", "1", "--layout", "official")  # from another directory, as a script
    assert out.returncode == 0, out.stderr
    assert out.stdout == want


def test_module_json_several_lines_and_stages(bench):
    out = run("--bench", bench, "--line", "3", "--line", "1", "--stage", "sft", "--mode", "direct", "--json",
              "--config", "configs/sft.py:paper", module=True)  # the paper variant's layout: official
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    records = {r.line: r for r in load_records(bench, strict=False)}
    assert [g["line"] for g in got] == [3, 1]
    for g, answer in zip(got, ["n/a", "50%"]):
        messages = build_messages(records[g["line"]], "direct", layout="official", stage="sft")
        assert g["text"] == render_text(messages + [{"role": "assistant", "content": answer}])
        assert g["text"].endswith(f"<|im_start|>assistant\n{answer}<|im_end|>\n")


def test_several_lines_interleaved(bench, capsys):
    records = {r.line: r for r in load_records(bench, strict=False)}
    rc, out, _ = call(capsys, "--bench", bench, "--line", "3", "--line", "1", "--layout", "interleaved")
    texts = [render_text(build_messages(records[n], "think"), add_generation_prompt=True) for n in (3, 1)]
    assert rc == 0 and out == "".join(f"==> {bench}:{n} <==\n{t}" for n, t in zip((3, 1), texts))


def test_bad_lines(bench, capsys, tmp_path):
    official = ("--layout", "official")
    rc, _, err = call(capsys, "--bench", bench, "--line", "4", *official)
    assert rc == 2 and f"{bench}:4: field 'task_goal'" in err
    rc, _, err = call(capsys, "--bench", bench, "--line", "2", *official)
    assert rc == 2 and f"{bench}:2: no record on this line" in err
    rc, _, err = call(capsys, "--bench", bench, "--line", "3", "--stage", "rl", "--mode", "direct", *official)
    assert rc == 2 and "data.mode='think'" in err
    for n in ("0", "-1"):
        with pytest.raises(SystemExit) as e:
            call(capsys, "--bench", bench, "--line", n, *official)
        assert e.value.code == 2 and f"--line: line numbers start at 1, got {n}" in capsys.readouterr().err
    # A line that is not JSON refuses that line only, in one line; the others are shown.
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps(TEXT) + "\n{not json\n")
    rc, out, _ = call(capsys, "--bench", str(mixed), "--line", "1", *official)
    assert rc == 0 and out.startswith("<|im_start|>system")
    rc, _, err = call(capsys, "--bench", str(mixed), "--line", "2", *official)
    assert rc == 2 and err.startswith(f"bad line: {mixed}:2: bad JSON") and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as e:
        call(capsys, "--bench", str(tmp_path), "--line", "1", *official)
    assert e.value.code == 2 and f"--bench: {tmp_path} is a directory" in capsys.readouterr().err


def test_the_layout_is_given_or_the_configs(bench, capsys):
    with pytest.raises(SystemExit) as e:
        call(capsys, "--bench", bench, "--line", "1")
    assert e.value.code == 2 and "--layout official|interleaved is required" in capsys.readouterr().err
    records = {r.line: r for r in load_records(bench, strict=False)}
    for config, layout in (("configs/sft.py", "interleaved"), ("configs/eval.py:paper", "official")):
        rc, out, _ = call(capsys, "--bench", bench, "--line", "1", "--config", os.path.join(ROOT, config))
        assert rc == 0 and out == render_text(build_messages(records[1], "think", layout=layout),
                                              add_generation_prompt=True)


def test_chat_file_line_as_it_stands(tmp_path, capsys):
    path = tmp_path / "sft.jsonl"
    line = {"messages": [{"role": "user", "content": "Look: <image> now"}, {"role": "assistant", "content": "40%"}],
            "images": ["a/b.jpg"]}
    path.write_text(json.dumps(line) + "\n")
    rc, out, _ = call(capsys, "--bench", str(path), "--line", "1", "--layout", "official", "--stage", "rl")
    assert rc == 0 and out == (f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nLook: {IMG} "
                          "now<|im_end|>\n<|im_start|>assistant\n40%<|im_end|>\n")


def test_help_names_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    options = " ".join(out.split("options:")[1].split())
    for flag in ("--bench", "--line", "--mode", "--layout", "--config", "--stage", "--json"):
        assert flag in options
    assert "default think" in options and "required unless --config" in options and "default eval" in options
