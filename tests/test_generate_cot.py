"""Guided reasoning completion: answer checks, the vLLM request layout (fake engine), SFT records read
back by the SFT loader, resume, engine errors, and the JAX backend on the tiny random model."""
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from data_pipeline.image_processor import preprocess
from data_pipeline.prompts import tokenize_chat, tokenize_record
from data_pipeline.records import load_chat_records, load_records
from data_pipeline.teacher import VllmTeacher, check_cot, run_guided_completion
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


def test_check_cot_rules(bench):
    records, _ = bench
    a, b, na, text = records
    assert check_cot(a, answer(2, "38%")) is None
    assert check_cot(a, "  " + answer(2, "38.0 %") + "\n") is None  # equal at two decimals, whitespace allowed
    assert check_cot(b, answer(4, "88.5%")) is None
    assert check_cot(b, answer(4, "88%")) == "score_mismatch"  # exact to 0.005 points, no rounding
    assert check_cot(a, answer(2, "38")) == "score_mismatch"  # '%' required
    assert check_cot(a, answer(3, "38%")) == "ref_mismatch"
    assert check_cot(a, answer("n/a", "n/a")) == "ref_mismatch"
    assert check_cot(a, "Sure! " + answer(2, "38%")) == "format_invalid"
    assert check_cot(a, answer(2, "38%").replace("<score_think>", "")) == "format_invalid"
    assert check_cot(na, answer("N/A", "n/a")) is None
    assert check_cot(na, answer("n/a", "0%")) == "score_mismatch"
    assert check_cot(na, answer(1, "n/a")) == "ref_mismatch"
    assert check_cot(text, answer(1, "33%")) is None


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
    """The correct answer read off the hint sentence of the prompt; traj_b's answer is wrong on purpose."""
    p = request["prompt"]
    if "must be n/a" in p:
        return answer("n/a", "n/a")
    ref = p.split("closest demonstration step is step ")[1].split(" ")[0]
    score = p.split("progress of the observation is ")[1].split(".")[0].rstrip()
    if score == "88.5%":
        return answer(ref, "89%")
    return "\n" + answer(ref, score) + "\n"


def test_vllm_requests_and_sft_records(bench, tmp_path):
    records, root = bench
    llm = FakeLLM(oracle_reply)
    out = str(tmp_path / "sft.jsonl")
    counts = run_guided_completion(records, root, VllmTeacher(llm, "PARAMS"), out, batch_size=3, progress=False)
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
        assert "correct answer is known" not in line["messages"][1]["content"]
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


def test_engine_error_is_counted_and_retried_and_truncated_tail_redone(bench, tmp_path):
    records, root = bench
    out = str(tmp_path / "sft.jsonl")
    llm = FakeLLM(oracle_reply, fail_calls={1})
    counts = run_guided_completion(records, root, VllmTeacher(llm, None), out, batch_size=2, progress=False)
    assert counts["engine_error"] == 2 and counts["kept"] == 2  # batch 1 (traj_a, traj_b) failed
    # A crash in the middle of writing the last line (traj_t): it is cut off and its sample redone.
    data = open(out, "rb").read()
    with open(out, "wb") as f:
        f.write(data[: len(data) - 40])
    llm = FakeLLM(oracle_reply)
    counts = run_guided_completion(records, root, VllmTeacher(llm, None), out, batch_size=2, progress=False)
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
    assert counts["kept"] + counts["format_invalid"] + counts["ref_mismatch"] + counts["score_mismatch"] == 2
    rejected = [json.loads(x) for x in open(tmp_path / "cot.rejected.jsonl")]
    assert len(rejected) == 2 - counts["kept"]
    assert all(isinstance(r["text"], str) for r in rejected)
    # 12 random tokens cannot hold the four blocks: every answer is rejected for its format.
    assert all(r["reason"] == "format_invalid" and "</score>" not in r["text"] for r in rejected)
