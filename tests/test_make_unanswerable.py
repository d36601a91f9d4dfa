"""Unanswerable construction: text-swap XML parsing and validation, edit-strategy XML, resumable runs
with fake teachers, official layouts read back by the record loader, the command line."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from data_pipeline.records import load_records
from data_pipeline.unanswerable import (EditProposal, Rejected, load_queue, parse_edit_strategy, parse_text_swap,
                                        run_image_edits, run_text_swaps, validate_text_swap)
from tests.test_generate_cot import make_bench

GOAL = "stack the green cube on the purple cube"
STEPS = ["[right] move the gripper above the green cube", "[right] pick up the green cube",
         "[right] put the green cube on the purple cube, then [right] release the green cube and raise the gripper"]


def swap_xml(original="green cube", new="banana", goal=None, steps=None):
    goal = GOAL.replace("green cube", new) if goal is None else goal
    steps = [s.replace("green cube", new) for s in STEPS] if steps is None else steps
    body = "".join(f"<step>{s}</step>" for s in steps)
    return (f"Here you go:\n<original_object>{original}</original_object>\n<new_object>{new}</new_object>\n"
            f"<goal>{goal}</goal>\n<steps>\n{body}\n</steps>")


def reason(text, allowed=None):
    try:
        validate_text_swap(GOAL, STEPS, parse_text_swap(text), allowed)
    except Rejected as e:
        return e.reason
    return None


def test_text_swap_validation():
    assert reason(swap_xml()) is None
    swap = parse_text_swap(swap_xml(new="tennis ball"))
    assert swap.goal == "stack the tennis ball on the purple cube" and len(swap.steps) == 3
    assert reason(swap_xml(new="tennis ball")) is None
    assert reason(swap_xml(new="banana"), allowed=["Banana", "apple"]) is None
    assert reason(swap_xml(new="banana"), allowed=["apple"]) == "new_object_implausible"
    assert reason(swap_xml().replace("</goal>", "")) == "xml_invalid"
    assert reason(swap_xml() + "<goal>again</goal>") == "xml_invalid"
    assert reason(swap_xml(steps=[s.replace("green cube", "banana") for s in STEPS[:2]])) == "step_count"
    assert reason(swap_xml(original="red ball", new="banana")) == "original_object_absent"
    for bad in ("", "blue cube", "green cube", "purple cube", "a very large heavy banana", "cup<br>", "3 cups"):
        assert reason(swap_xml(new=bad)) == "new_object_implausible", bad
    moved = [s.replace("green cube", "banana") for s in STEPS]
    moved[2] = moved[2].replace("then [right]", "then [left]")
    assert reason(swap_xml(steps=moved)) == "markers_changed"
    kept_old = [s.replace("green cube", "banana") for s in STEPS]
    kept_old[1] = STEPS[1]
    assert reason(swap_xml(steps=kept_old)) == "object_not_replaced"
    half = [s.replace("green cube", "banana", 1) for s in STEPS]  # step 3 names it twice, one left
    assert reason(swap_xml(steps=half)) == "object_not_replaced"
    rewritten = [s.replace("green cube", "banana") for s in STEPS]
    rewritten[0] = "[right] carefully slide the whole arm over towards the banana"
    assert reason(swap_xml(steps=rewritten)) == "unrelated_change"


def test_edit_strategy_parsing():
    p = parse_edit_strategy("<strategy> Color change </strategy><instruction>Make the red cube blue.</instruction>")
    assert p == EditProposal("color_change", "Make the red cube blue.")
    assert parse_edit_strategy("<strategy>occlusion/removal</strategy><instruction>remove the cube</instruction>"
                               ).strategy == "occlusion_removal"
    for bad, why in (("<strategy>blur</strategy><instruction>blur it</instruction>", "strategy_invalid"),
                     ("<strategy>color_change</strategy><instruction></instruction>", "instruction_invalid"),
                     ("<strategy>color_change</strategy><instruction>" + "word " * 21 + "</instruction>",
                      "instruction_invalid"),
                     ("<strategy>color_change</strategy>", "xml_invalid")):
        with pytest.raises(Rejected) as e:
            parse_edit_strategy(bad)
        assert e.value.reason == why
    assert parse_edit_strategy("<strategy>object_replacement</strategy><instruction>" + "w " * 20
                               + "</instruction>").strategy == "object_replacement"


def write_text_records(tmp_path):
    lines = []
    for rid, goal, steps in (("t1", GOAL, STEPS), ("t2", "put the red cube on the mat", ["[left] grasp the red cube",
                                                                                        "[left] place it on the mat"])):
        for k, obs in enumerate(("camera_top_0004.jpg", "camera_top_0011.jpg"), start=1):
            lines.append({"id": rid, "task_goal": goal, "text_demo": steps, "total_steps": len(steps),
                          "stage_to_estimate": obs, "closest_idx": k, "progress_score": f"{50 * k}%"})
    path = tmp_path / "text-normal.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(path)


class FakeTeacher:
    def __init__(self, reply):
        self.reply, self.prompts = reply, []

    def __call__(self, prompts):
        self.prompts += prompts
        return [self.reply(p) for p in prompts]


def text_reply(prompt):
    text = prompt[-1]["content"]
    if "green cube" in text:
        return swap_xml()
    return swap_xml(original="red cube", new="apple", goal="put the apple on the mat",
                    steps=["[right] grasp the apple", "[left] place it on the mat"])  # marker changed


def test_run_text_swaps_layout_and_resume(tmp_path):
    records = load_records(write_text_records(tmp_path))
    out = str(tmp_path / "text-unanswerable.jsonl")
    teacher = FakeTeacher(text_reply)
    counts = run_text_swaps(records, teacher, out, batch_size=4, progress=False)
    assert len(teacher.prompts) == 2  # one call per trajectory
    assert counts["kept"] == 1 and counts["markers_changed"] == 1 and counts["records"] == 2
    got = load_records(out)  # the official loader reads the layout
    assert [(r.id, r.observation, r.answerable, r.task_goal) for r in got] == [
        ("t1", "camera_top_0004.jpg", False, "stack the banana on the purple cube"),
        ("t1", "camera_top_0011.jpg", False, "stack the banana on the purple cube")]
    raw = [json.loads(x) for x in open(out)]
    assert all(x["closest_idx"] == "n/a" and x["progress_score"] == "n/a" and isinstance(x["total_steps"], int)
               and isinstance(x["stage_to_estimate"], str) for x in raw)
    assert raw[0]["text_demo"][1] == "[right] pick up the banana"
    # An interrupted run wrote only the first record of t1: the resume completes t1 from the output.
    with open(out, "w") as f:
        f.write(json.dumps(raw[0]) + "\n")
    teacher = FakeTeacher(text_reply)
    counts = run_text_swaps(records, teacher, out, batch_size=4, progress=False)
    assert teacher.prompts == [] and counts["records"] == 1 and counts["skipped"] == 2
    assert [json.loads(x) for x in open(out)] == raw


def test_cli_text_and_image_with_fake_teacher(tmp_path, monkeypatch):
    from tools import make_unanswerable

    monkeypatch.setattr(make_unanswerable, "make_teacher", lambda args: FakeTeacher(text_reply))
    out = str(tmp_path / "tu.jsonl")
    counts = make_unanswerable.main(["text", "--records", write_text_records(tmp_path), "--out", out,
                                     "--backend", "vllm", "--no-progress"])
    assert counts["kept"] == 1 and len(load_records(out)) == 2

    path, root = make_bench(tmp_path)
    answerable = tmp_path / "visual.jsonl"
    answerable.write_text("".join(x for x in open(path) if '"n/a"' not in x and "visual_demo" in x))
    monkeypatch.setattr(make_unanswerable, "make_teacher", lambda args: FakeTeacher(
        lambda p: "<strategy>occlusion_removal</strategy><instruction>cover the cube with a cloth</instruction>"))
    monkeypatch.setattr(make_unanswerable, "make_editor", lambda args: invert_editor)
    queue, out = str(tmp_path / "queue.jsonl"), str(tmp_path / "vu.jsonl")
    counts = make_unanswerable.main(["image", "--records", str(answerable), "--image-root", root, "--queue", queue,
                                     "--out", out, "--backend", "vllm", "--no-progress"])
    assert counts["kept"] == 2
    assert [r.observation for r in load_records(out, image_root=root)] == ["camera_front_0014_edit.jpg",
                                                                           "camera_front_0026_edit.jpg"]


def invert_editor(record, image, proposal, key):
    if "fail" in proposal.instruction:
        from data_pipeline.image_edit import EditError
        raise EditError("not visible")
    return Image.fromarray(255 - np.asarray(image))


def test_run_image_edits_queue_layout_and_resume(tmp_path):
    path, root = make_bench(tmp_path)
    records = [r for r in load_records(path, image_root=root) if r.kind == "visual" and r.answerable]
    replies = iter(["<strategy>color_change</strategy><instruction>make the cube green</instruction>",
                    "<strategy>object_replacement</strategy><instruction>fail please</instruction>"])
    teacher = FakeTeacher(lambda p: next(replies))
    queue, out = str(tmp_path / "queue.jsonl"), str(tmp_path / "visual-unanswerable.jsonl")
    counts = run_image_edits(records, root, teacher, invert_editor, queue, out, {"traj_a": ["a", "b", "c"]},
                             batch_size=2, progress=False)
    assert counts["kept"] == 1 and counts["edit_failed"] == 1
    prompt = teacher.prompts[0][-1]["content"]
    assert prompt[0] == {"type": "image", "image": os.path.join(root, "traj_a", "camera_front_0014.jpg")}
    assert "Step 3: c" in prompt[1]["text"] and "key frame 2" in prompt[1]["text"] and ": a." in prompt[1]["text"]
    edited = os.path.join(root, "traj_a", "camera_front_0014_edit.jpg")
    original = np.asarray(Image.open(os.path.join(root, "traj_a", "camera_front_0014.jpg")), int)
    assert np.abs(np.asarray(Image.open(edited), int) - (255 - original)).max() <= 8  # JPEG
    (entry,) = load_queue(queue)
    assert entry["edited_image"] == edited and entry["strategy"] == "color_change" and entry["steps"] == ["a", "b", "c"]
    raw = [json.loads(x) for x in open(out)]
    assert raw == [entry["record"]]
    assert raw[0]["closest_idx"] == raw[0]["delta"] == raw[0]["progress_score"] == "n/a"
    assert raw[0]["stage_to_estimate"] == ["camera_front_0014_edit.jpg"] and raw[0]["total_steps"] == "3"
    (rec,) = load_records(out, image_root=root)
    assert not rec.answerable and rec.visual_demo == records[0].visual_demo
    # Resume: both samples are settled (kept, or rejected by the editor).
    teacher = FakeTeacher(lambda p: pytest.fail("no teacher call expected"))
    counts = run_image_edits(records, root, teacher, invert_editor, queue, out, batch_size=2, progress=False)
    assert counts["skipped"] == 2 and teacher.prompts == []


def test_inputs_of_the_wrong_kind_are_refused(tmp_path):
    path, root = make_bench(tmp_path)
    records = load_records(path)
    with pytest.raises(ValueError, match="train:3: image edits need answerable visual records"):
        run_image_edits(records, root, FakeTeacher(str), invert_editor, str(tmp_path / "q"), str(tmp_path / "o"))
    with pytest.raises(ValueError, match="train:1: text swaps need answerable text records"):
        run_text_swaps(records, FakeTeacher(str), str(tmp_path / "o"))
