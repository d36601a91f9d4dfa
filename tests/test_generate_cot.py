"""Guided reasoning completion: the official CoT-generation prompt character for character (expected
texts written from eval/qwen25vl/codes/prompts/{visual,text}_demo_prompt_cot_gen.py of ProgressLM at
9945f00), the acceptance rules, the vLLM request layout (fake engine), SFT records read back by the SFT
loader, resume, engine errors, and the JAX backend on the tiny random model."""
import dataclasses
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from data_construction.teacher import VllmTeacher, check_cot, cot_prompt, run_guided_completion
from data_pipeline.image_processor import preprocess
from data_pipeline.prompts import render_text, tokenize_chat, tokenize_record
from data_pipeline.records import load_chat_records, load_records
from data_pipeline.tokenizer import load_tokenizer

GOAL = "put the red cube on the blue plate"
STEPS = ["[right] grasp the red cube", "[right] lift the red cube", "[right] put the red cube on the blue plate"]


def write_images(root, rid, names, size=56):
    os.makedirs(os.path.join(root, rid), exist_ok=True)
    for i, name in enumerate(names):
        color = (40 * i % 256, 200 - 30 * i % 200, 90)
        Image.new("RGB", (size, size), color).save(os.path.join(root, rid, name))


def make_bench(tmp_path):
    """Two visual records (one per trajectory), one visual n/a record and one text record, official layout."""
    root = str(tmp_path / "images")
    frames = [f"camera_front_{t:04d}.jpg" for t in (0, 10, 20, 30)]
    lines = []
    for rid, obs, closest, score in (("traj_a", "camera_front_0014.jpg", "2", "38%"),
                                     ("traj_b", "camera_front_0026.jpg", "4", "88.5%")):
        write_images(root, rid, frames + [obs])
        lines.append({"id": rid, "task_goal": GOAL, "visual_demo": frames, "total_steps": "3",
                      "stage_to_estimate": [obs], "closest_idx": closest, "delta": "+5%", "progress_score": score,
                      "data_source": "test"})
    write_images(root, "traj_c", frames + ["camera_front_0015_edit.jpg"])
    lines.append({"id": "traj_c", "task_goal": GOAL, "visual_demo": frames, "total_steps": "3",
                  "stage_to_estimate": ["camera_front_0015_edit.jpg"], "closest_idx": "n/a", "delta": "n/a",
                  "progress_score": "n/a"})
    write_images(root, "traj_t", ["camera_top_0005.jpg"])
    lines.append({"id": "traj_t", "task_goal": GOAL, "text_demo": STEPS, "total_steps": 3,
                  "stage_to_estimate": "camera_top_0005.jpg", "closest_idx": 1, "progress_score": "33%"})
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(path), root


def answer(ref, score, think="the gripper holds the cube"):
    return f"<ref_think>{think}</ref_think>\n<ref>{ref}</ref>\n<score_think>{think}</score_think>\n<score>{score}</score>"


@pytest.fixture()
def bench(tmp_path):
    path, root = make_bench(tmp_path)
    return load_records(path, image_root=root), root


PAD = "<|vision_start|><|image_pad|><|vision_end|>"
TRAIN = ("Given the below Task and the Ground-truth Partial Response, you only need to fill the content within "
         "<ref_think></ref_think> and <score_think></score_think> to complete the response and should not change "
         "the Ground-truth Partial Response's content within <ref></ref> and <score></score>. Note that you need to "
         "pretend you do not know the ground-truth answer and provide a coherent reasoning chain based on what is "
         "given.\n\nThe Task is:\n")
VISUAL_TASK = """Your task:
1. Check the current state image carefully.
2. Analyze the visual demonstration to understand how the task progresses from start to completion.
3. Identify the reference states from the visual demonstration that are most related to the current state image.
4. Compare the current state image with the chosen reference state, determining whether the image is behind or after the reference state.
5. Estimate the progress numerically as a floating-point value between 0% and 100%.
6. If you really cannot match the current state image to any of the states from demonstration, you need to explain the reason within `<ref_think></ref_think>` and output "n/a" within `<ref></ref>`, `<score_think></score_think>`, and `<score></score>`.

Your response **must** strictly follow this format:
<ref_think>Reason for choosing the most related state from the demonstration as the reference or explanation of why the current state image does not match the task goal or any steps from demonstration</ref_think>
<ref>which state from the visual demonstration is most related to the current state (output only the number of the state) or "n/a"</ref>
<score_think>Reason for comparing the current state image with the reference state or "n/a"</score_think>
<score>Your final estimated progress score or "n/a"</score>"""
TEXT_TASK = """Your task:
1. Read the task goal to understand the task objective and the entity being operated on.
2. Analyze the textual demonstration to understand how the task progresses from start to completion.
3. Examine the current state image carefully. If the target is incorrect (different from the object metioned in task goal) or you really cannot match the current image to any step in the demonstration, you must explain the reason within <ref_think></ref_think> and output “n/a” within <ref></ref>, <score_think></score_think>, and <score></score>.
4. If a match is possible, examine all steps in the textual demonstration, where each step represents an independent action. Identify the single step whose action is most closely related to the current state image. Then compare the current image with that reference step to determine whether it corresponds to an earlier or later stage, and finally estimate the overall progress as a floating-point value between 0% and 100%.

Your response **must** strictly follow this format:
<ref_think>
Explain the reason for selecting the most relevant step from the demonstration.
If the task target is incorrect, or the current state image cannot be matched to any demonstration step, explain why here.
</ref_think>

<ref>
If a valid matching step exists, output only the step number.
If the task target is incorrect or no step matches the current image, output only "n/a".
</ref>

<score_think>
If a valid matching step exists, explain how you compare the current image with that step to judge progress.
If the task target is incorrect or no step matches the current image, output only "n/a".
</score_think>

<score>
If a valid matching step exists, output the estimated progress (0%–100%).
If the task target is incorrect or no step matches the current image, output only "n/a".
</score>
"""
MUST = ("    You **must** only add content within <ref_think></ref_think> and <score_think></score_think> to the "
        "Ground-truth Partial Response and must not change what we already provided in the Ground-truth Partial "
        "Response. Then respond with the completed Ground-truth Response.\n")


def hint(ref, score):
    return (f"\n\nGround-truth Partial Response:\n\n    <ref_think></ref_think>\n    <ref>{ref}</ref>\n"
            f"    <score_think></score_think>\n    <score>{score}</score>\n\n\n" + MUST)


NEGA_VISUAL_TASK = """Your task:
1. Analyze the overall task goal and visual demonstration to understand how the task progresses from start to completion.
2. Check the current state image carefully.
3. Identify the reference states from the visual demonstration that are most related to the current state image.
4. Compare the current state image with the chosen reference state, determining whether the image is behind or after the reference state.
5. Estimate the progress numerically as a floating-point value between 0% and 100%.
6. If you really cannot match the current state image to any of the states from demonstration, you need to explain the reason within `<ref_think></ref_think>` and directly output "n/a" within `<ref></ref>`, `<score_think></score_think>`, and `<score></score>`.

Your response **must** strictly follow this format:
<ref_think>Reason for choosing the most related state from the demonstration as the reference or explanation of why the current state image does not match the task goal or any steps from demonstration</ref_think>
<ref>which state from the visual demonstration is most related to the current state (output only the number of the state) or directly output "n/a" with no other words if no match reference founded.</ref>
<score_think>Reason for comparing the current state image with the reference state or directly output "n/a" with no other words</score_think>
<score>Your final estimated progress score or directly output "n/a" with no other words</score>
"""
HEAD = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
TAIL = "<|im_end|>\n<|im_start|>assistant\n"
NA_HINT = ("\n\nGround-truth Partial Response:\n\n    <ref_think></ref_think>\n    <ref>n/a</ref>\n"
           "    <score_think>n/a</score_think>\n    <score>n/a</score>")


def test_visual_cot_prompt_is_the_official_text(bench):
    records, root = bench
    a, _, na, _ = records
    body = ("You are a progress estimator that evaluates the progress of the current state during an ongoing "
            "task based on a visual demonstration. The demonstration consists of a sequence of vision-based states "
            "and their corresponding progress value (ranging from 0% to 100%), showing how the task evolves from "
            "start to completion.\n\nOur goal is put the red cube on the blue plate."
            "Here is the demonstration:" + PAD * 4 +
            "The progress shifts across all given visual demos is: <image> 0% <image> 33% <image> 67% <image> 100%"
            "Here is the current state that you need to estimate:" + PAD)
    assert render_text(cot_prompt(a, root), add_generation_prompt=True) == (
        HEAD + TRAIN + body + VISUAL_TASK + hint("The No. 2 demo image is the most relevant frame", "38%") + TAIL)
    images = [p["image"] for p in cot_prompt(a, root)[0]["content"] if p["type"] == "image"]
    assert images == [os.path.join(root, "traj_a", f) for f in a.visual_demo] + [os.path.join(root, "traj_a", a.observation)]
    # unanswerable: visual_nega_prompt.py
    nega_hint = NA_HINT + (
        "\n\n\n    You **must** only add content within <ref_think></ref_think> and must not change what we already "
        "provided in the Ground-truth Partial Response.\n    When filling in <ref_think>, base your reasoning on what "
        "you can independently observe and infer from the state, rather than referencing this description as given "
        "information. Your reasoning should appear as your own discovery, not as something taken from an external "
        "hint.\n")
    assert render_text(cot_prompt(na, root), add_generation_prompt=True) == (
        HEAD + TRAIN + body + NEGA_VISUAL_TASK + nega_hint + TAIL)


def test_text_nega_prompt_is_the_official_text(bench):
    records, root = bench
    text = dataclasses.replace(records[3], closest_idx=None, progress=None)
    steps = ("Step 1. [right] grasp the red cube\nThe Progress for now is 33%.\n\n"
             "Step 2. [right] lift the red cube\nThe Progress for now is 67%.\n\n"
             "Step 3. [right] put the red cube on the blue plate\nThe Progress for now is 100%.")
    train = ("Given the below Task, the Ground-truth Partial Response, and the Additional Hint, you only need to fill "
             "the content within <ref_think></ref_think> and <score_think></score_think> to complete the response and "
             "should not change the Ground-truth Partial Response's content within <ref></ref> and <score></score>. "
             "Note that you need to pretend you do not know the ground-truth answer and provide a coherent reasoning "
             "chain based on what is given.\n\nThe Task is:\n")
    nega_hint = NA_HINT + (
        '\n    Additional Hint: The current state image shows the step of "[left] pour the water", which obviously '
        "does not match the current task goal (mostly because the object has been replaced) or any steps from the "
        "demonstration.\n\n    You **must** only add content within <ref_think></ref_think> and "
        "<score_think></score_think> to the Ground-truth Partial Response and must not change what we already "
        "provided in the Ground-truth Partial Response. Then respond with the completed Ground-truth Response. Do "
        "not modify anything else already provided in the Ground-truth Partial Response.\n    The visual state "
        "depicts a situation that does not align with the current task goal or with any of the demonstration steps. "
        "When filling in <ref_think>, base your reasoning on what you can independently observe and infer from the "
        "state, rather than referencing this description as given information. Your reasoning should appear as your "
        "own discovery, not as something taken from an external hint.\n")
    want = (HEAD + train + "You are a progress estimator that evaluates the progress of the current state during an "
            "ongoing task based on a textual demonstration. The demonstration consists of a sequence of text-based "
            "steps and their corresponding progress value (ranging from 0% to 100%), showing how the task evolves "
            "from start to completion.\n\nOur goal is put the red cube on the blue plate.Here is the demonstration:"
            + steps + "Here is the image of the current state that you need to estimate:" + PAD + nega_hint
            + TEXT_TASK + TAIL)   # the hint comes before the instructions here
    assert render_text(cot_prompt(text, root, "[left] pour the water"), add_generation_prompt=True) == want
    assert 'shows the step of ""' in render_text(cot_prompt(text, root))


def test_text_cot_prompt_is_the_official_text(bench):
    records, root = bench
    text = records[3]
    steps = ("Step 1. [right] grasp the red cube\nThe Progress for now is 33%.\n\n"
             "Step 2. [right] lift the red cube\nThe Progress for now is 67%.\n\n"
             "Step 3. [right] put the red cube on the blue plate\nThe Progress for now is 100%.")
    extra = ("    Additional Hint: all the cases you meet now is all normal cases, never mistake them to n/a!\n"
             "    When filling in <ref_think> and <score_think>, base your reasoning on what you can independently "
             "observe and infer from the state, rather than referencing this description as given information. Your "
             "reasoning should appear as your own discovery, not as something taken from an external hint.\n\n")
    want = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n" + TRAIN +
            "You are a progress estimator that evaluates the progress of the current state during an ongoing task "
            "based on a textual demonstration. The demonstration consists of a sequence of text-based steps and their "
            "corresponding progress value (ranging from 0% to 100%), showing how the task evolves from start to "
            "completion.\n\nOur goal is put the red cube on the blue plate.Here is the demonstration:" + steps +
            "Here is the image of the current state that you need to estimate:" + PAD + TEXT_TASK +
            hint("The No. 1 text demo is the most relevant one", "33%") + extra +
            "<|im_end|>\n<|im_start|>assistant\n")
    assert render_text(cot_prompt(text, root), add_generation_prompt=True) == want


def test_check_cot_rules(bench):
    records, _ = bench
    a, b, na, text = records
    # official: only the score has to parse
    assert check_cot(a, answer(2, "38%")) is None
    assert check_cot(a, "Sure! " + answer(7, "90")) is None
    assert check_cot(a, "<score>n/a</score>") is None
    assert check_cot(a, answer(2, "about 38%")) == "parse_error"
    assert check_cot(na, answer("n/a (no valid reference found)", "n/a (no valid progress estimation)")) == "parse_error"
    # match: the runner's ref and score equal the ground truth fields
    assert check_cot(a, answer("The No. 2 demo image is the most relevant frame", "38%"), "match") is None
    assert check_cot(b, answer(4, "88%"), "match") is None            # 0.885 -> "88%" on both sides
    assert check_cot(b, answer(4, "88.5%"), "match") is None
    assert check_cot(b, answer(4, "89%"), "match") == "score_mismatch"
    assert check_cot(a, answer(3, "38%"), "match") == "ref_mismatch"
    assert check_cot(na, answer("na", "N/A"), "match") is None
    assert check_cot(na, answer("n/a", "0%"), "match") == "score_mismatch"
    assert check_cot(a, answer(2, "x"), "match") == "parse_error"
    # strict: the project's own check
    assert check_cot(a, answer(2, "38%"), "strict") is None
    assert check_cot(a, "  " + answer(2, "38.0 %") + "\n", "strict") is None
    assert check_cot(b, answer(4, "88.5%"), "strict") is None
    assert check_cot(b, answer(4, "88%"), "strict") == "score_mismatch"
    assert check_cot(a, answer(2, "38"), "strict") == "score_mismatch"
    assert check_cot(a, answer(3, "38%"), "strict") == "ref_mismatch"
    assert check_cot(a, answer("n/a", "n/a"), "strict") == "ref_mismatch"
    assert check_cot(a, "Sure! " + answer(2, "38%"), "strict") == "format_invalid"
    assert check_cot(a, answer("The No. 2 demo image is the most relevant frame", "38%"), "strict") == "format_invalid"
    assert check_cot(na, answer("N/A", "n/a"), "strict") is None
    assert check_cot(na, answer(1, "n/a"), "strict") == "ref_mismatch"
    assert check_cot(text, answer(1, "33%"), "strict") is None
    with pytest.raises(ValueError, match="unknown acceptance rule"):
        check_cot(a, answer(2, "38%"), "loose")


class FakeLLM:
    """Mimics vllm.LLM.generate: one RequestOutput per request, text at outputs[0].text."""

    def __init__(self, reply, fail_calls=()):
        self.reply, self.fail_calls, self.calls = reply, set(fail_calls), []

    def generate(self, requests, sampling_params, use_tqdm=True):
        self.calls.append(requests)
        if len(self.calls) in self.fail_calls:
            raise RuntimeError("CUDA out of memory (fake)")
        return [SimpleNamespace(prompt=r["prompt"], outputs=[SimpleNamespace(text=self.reply(r))]) for r in requests]


def oracle_reply(request):
    """The answer read off the hint of the prompt; traj_b's score is wrong on purpose."""
    p = request["prompt"].split("Ground-truth Partial Response:")[1]
    if "<ref>n/a</ref>" in p:
        return answer("n/a", "n/a")
    ref = p.split("<ref>The No. ")[1].split(" ")[0]
    score = p.split("<score>")[1].split("</score>")[0]
    if score == "88%":
        return answer(ref, "89%")
    return "\n" + answer(ref, score) + "\n"


def test_vllm_requests_and_sft_records(bench, tmp_path):
    records, root = bench
    llm = FakeLLM(oracle_reply)
    out = str(tmp_path / "sft.jsonl")
    counts = run_guided_completion(records, root, VllmTeacher(llm, "PARAMS"), out, batch_size=3, progress=False,
                                   accept="match")
    assert counts["kept"] == 3 and counts["score_mismatch"] == 1 and counts["engine_error"] == 0
    assert [len(c) for c in llm.calls] == [3, 1]
    for request, record in zip(llm.calls[0] + llm.calls[1], records):
        images = request.get("multi_modal_data", {}).get("image", [])
        n = record.num_demos + 1 if record.kind == "visual" else 1
        assert len(images) == n and all(isinstance(i, Image.Image) and i.size == (56, 56) for i in images)
        assert request["prompt"].count("<|vision_start|><|image_pad|><|vision_end|>") == n
        assert request["prompt"].startswith("<|im_start|>system\n") and request["prompt"].endswith(
            "<|im_start|>assistant\n")
    # The SFT loader reads the output; tokenized, each line equals the normal prompt plus the answer.
    chats = load_chat_records(out, image_root=root)
    assert len(chats) == 3
    tok = load_tokenizer(None)
    kept = [r for r in records if r.id != "traj_b"]
    lines = [json.loads(x) for x in open(out)]
    for chat, record, line in zip(chats, kept, lines):
        assert "Ground-truth Partial Response" not in line["messages"][1]["content"]
        assert line["messages"][-1]["content"] == line["messages"][-1]["content"].strip()
        _, grids = preprocess(list(chat.images))
        got = tokenize_chat(tok, chat, grids)
        want = tokenize_record(tok, record, grids, "think", line["messages"][-1]["content"])
        np.testing.assert_array_equal(got.input_ids, want.input_ids)
        np.testing.assert_array_equal(got.loss_mask, want.loss_mask)
    rejected = [json.loads(x) for x in open(tmp_path / "sft.rejected.jsonl")]
    assert [(r["key"], r["reason"]) for r in rejected] == [("train|traj_b|camera_front_0026.jpg", "score_mismatch")]

    # Resume: everything is settled, the engine gets nothing.
    again = FakeLLM(oracle_reply)
    counts = run_guided_completion(records, root, VllmTeacher(again, "PARAMS"), out, batch_size=3, progress=False)
    assert again.calls == [] and counts["skipped"] == 4 and counts["kept"] == 0
    # The official rule keeps traj_b's answer as well: only its score has to parse.
    counts = run_guided_completion(records, root, VllmTeacher(FakeLLM(oracle_reply), None), str(tmp_path / "o.jsonl"),
                                   batch_size=4, progress=False)
    assert counts["kept"] == 4 and counts["score_mismatch"] == 0


def test_engine_error_is_counted_and_retried_and_truncated_tail_redone(bench, tmp_path):
    records, root = bench
    out = str(tmp_path / "sft.jsonl")
    llm = FakeLLM(oracle_reply, fail_calls={1})
    counts = run_guided_completion(records, root, VllmTeacher(llm, None), out, batch_size=2, progress=False,
                                   accept="match")
    assert counts["engine_error"] == 2 and counts["kept"] == 2  # batch 1 (traj_a, traj_b) failed
    # A crash in the middle of writing the last line (traj_t): it is cut off and its sample redone.
    data = open(out, "rb").read()
    with open(out, "wb") as f:
        f.write(data[: len(data) - 40])
    llm = FakeLLM(oracle_reply)
    counts = run_guided_completion(records, root, VllmTeacher(llm, None), out, batch_size=2, progress=False,
                                   accept="match")
    assert [len(c) for c in llm.calls] == [2, 1]
    assert counts["kept"] == 2 and counts["score_mismatch"] == 1 and counts["skipped"] == 1
    assert sorted(json.loads(x)["meta"]["id"] for x in open(out)) == ["traj_a", "traj_c", "traj_t"]


def test_consecutive_engine_errors_stop_the_run(bench, tmp_path):
    records, root = bench
    llm = FakeLLM(oracle_reply, fail_calls={1, 2, 3, 4})
    with pytest.raises(RuntimeError, match="3 teacher batches failed in a row"):
        run_guided_completion(records, root, VllmTeacher(llm, None), str(tmp_path / "o.jsonl"), batch_size=1,
                              progress=False)


def test_jax_backend_tiny_random_model(tmp_path):
    """The real sampler behind the tool: every sample is settled, kept lines really reach the ground truth."""
    from tools import generate_cot

    path, root = make_bench(tmp_path)
    out = str(tmp_path / "cot.jsonl")
    counts = generate_cot.main(["--records", path, "--image-root", root, "--out", out, "--backend", "jax",
                                "--batch-size", "2", "--max-tokens", "12", "--limit", "2", "--no-progress"])
    assert counts["engine_error"] == 0
    assert counts["kept"] + counts["parse_error"] == 2
    rejected = [json.loads(x) for x in open(tmp_path / "cot.rejected.jsonl")]
    assert len(rejected) == 2 - counts["kept"]
    assert all(isinstance(r["text"], str) for r in rejected)
    # 12 random tokens cannot hold a readable <score>: every answer is rejected by the official rule.
    assert all(r["reason"] == "parse_error" and "</score>" not in r["text"] for r in rejected)


def test_cli_text_nega_hint_names_the_original_step(tmp_path, monkeypatch):
    """As text_nega_dataset.py: the hint's step is the line's raw_text_demo[rank]."""
    from tools import generate_cot

    root = str(tmp_path / "images")
    write_images(root, "traj_n", ["camera_top_0005.jpg"])
    line = {"id": "traj_n", "task_goal": "put the banana on the plate", "text_demo": ["grasp the banana", "place it"],
            "total_steps": "2", "stage_to_estimate": "camera_top_0005.jpg", "closest_idx": "n/a",
            "progress_score": "n/a", "raw_text_demo": ["grasp the cube", "place it"], "rank": 0}
    path = tmp_path / "text-nega.jsonl"
    path.write_text("\n" + json.dumps(line) + "\n" + json.dumps(dict(line, rank=5)) + "\n")
    prompts = []

    def teacher(batch):
        prompts.extend(batch)
        return [answer("n/a", "n/a") for _ in batch]

    monkeypatch.setattr(generate_cot, "make_teacher", lambda args: teacher)
    args = ["--records", str(path), "--image-root", root, "--out", str(tmp_path / "o.jsonl"), "--backend", "vllm",
            "--accept", "match", "--no-progress"]
    with pytest.raises(SystemExit, match=r"text-nega.jsonl:3: field 'rank' 5 is outside raw_text_demo"):
        generate_cot.main(args)
    path.write_text("\n" + json.dumps(line) + "\n")
    assert generate_cot.main(args)["kept"] == 1
    assert 'shows the step of "grasp the cube"' in prompts[0][0]["content"][-2]["text"]


def test_original_steps_read_with_the_record_loader_rules(tmp_path):
    """raw_text_demo[rank] is found on the line the record loader numbered, also after a byte-order mark
    and blank lines (the loader skips both)."""
    from data_pipeline.records import load_records
    from data_construction.teacher import sample_key
    from tools.generate_cot import original_steps

    line = {"id": "traj_n", "task_goal": "put the banana on the plate", "text_demo": ["grasp the banana", "place it"],
            "total_steps": "2", "stage_to_estimate": "camera_top_0005.jpg", "closest_idx": "n/a",
            "progress_score": "n/a", "raw_text_demo": ["grasp the cube", "place it"], "rank": 1}
    path = tmp_path / "text-nega.jsonl"
    path.write_text("\ufeff" + json.dumps(dict(line, rank=0)) + "\n\n" + json.dumps(dict(line, id="traj_m")) + "\n",
                    encoding="utf-8")
    records = load_records(str(path))
    assert [r.line for r in records] == [1, 3]
    assert original_steps(str(path), records) == {sample_key(records[0]): "grasp the cube",
                                                  sample_key(records[1]): "place it"}


def test_settled_keys_leave_a_half_written_line_out(tmp_path):
    from data_construction.teacher import done_keys

    out, rejects = tmp_path / "o.jsonl", tmp_path / "o.rejected.jsonl"
    assert done_keys(str(out), str(rejects), lambda obj: obj["k"]) == set()  # nothing written yet
    out.write_text('{"k": "a"}\n{"k": "b"}')  # a complete last line whose newline was not written
    rejects.write_text('{"key": "c", "reason": "parse_error"}\n{"key": "d", "reason": "engine_error"}\n'
                       '{"key": "e", "reason": "pars')  # killed mid-line: e is redone
    assert done_keys(str(out), str(rejects), lambda obj: obj["k"]) == {"a", "b", "c"}
    rejects.write_text('{"key": "c", "reason": "parse_error"}\n["c"]\n')
    with pytest.raises(ValueError, match=r"o.rejected.jsonl:2: expected a JSON object"):
        done_keys(str(out), str(rejects), lambda obj: obj["k"])
