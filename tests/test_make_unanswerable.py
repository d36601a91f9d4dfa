"""Unanswerable construction: the official prompts character for character (expected texts written from
eval/qwen25vl/codes/prompts/text_object_replacement_prompt.py and adversarial_editing_prompt.py of
ProgressLM at 9945f00) and their answer reads; the earlier object_tags / strategy_tags protocols; resumable
runs with fake teachers, official layouts read back by the record loader, the command line."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from data_construction.unanswerable import (EditProposal, Rejected, load_queue, official_edit_prompt, official_swap_prompt,
                                            parse_edit_strategy, parse_official_edit, parse_official_swap, parse_text_swap,
                                            run_image_edits, run_text_swaps, validate_text_swap)
from data_pipeline.records import load_records
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
    text = prompt[-1]["content"][-1]["text"]
    if "green cube" in text:
        return swap_xml()
    return swap_xml(original="red cube", new="apple", goal="put the apple on the mat",
                    steps=["[right] grasp the apple", "[left] place it on the mat"])  # marker changed


def test_run_text_swaps_layout_and_resume(tmp_path):
    records = load_records(write_text_records(tmp_path))
    out = str(tmp_path / "text-unanswerable.jsonl")
    teacher = FakeTeacher(text_reply)
    counts = run_text_swaps(records, teacher, out, batch_size=4, progress=False, image_root="IMG",
                            protocol="object_tags")
    assert len(teacher.prompts) == 2  # one call per trajectory
    assert teacher.prompts[0][-1]["content"][0] == {"type": "image", "image": os.path.join("IMG", "t1",
                                                                                         "camera_top_0004.jpg")}
    assert counts["kept"] == 1 and counts["markers_changed"] == 1 and counts["records"] == 2
    got = load_records(out)  # the official loader reads the layout
    assert [(r.id, r.observation, r.answerable, r.task_goal) for r in got] == [
        ("t1", "camera_top_0004.jpg", False, "stack the banana on the purple cube"),
        ("t1", "camera_top_0011.jpg", False, "stack the banana on the purple cube")]
    raw = [json.loads(x) for x in open(out)]
    assert all(x["closest_idx"] == "n/a" and x["progress_score"] == "n/a" and x["total_steps"] == "3"
               and isinstance(x["stage_to_estimate"], str) for x in raw)
    assert raw[0]["text_demo"][1] == "[right] pick up the banana"
    # An interrupted run wrote only the first record of t1: the resume completes t1 from the output.
    with open(out, "w") as f:
        f.write(json.dumps(raw[0]) + "\n")
    teacher = FakeTeacher(text_reply)
    counts = run_text_swaps(records, teacher, out, batch_size=4, progress=False, image_root="IMG",
                            protocol="object_tags")
    assert teacher.prompts == [] and counts["records"] == 1 and counts["skipped"] == 2
    assert [json.loads(x) for x in open(out)] == raw


def test_cli_text_and_image_with_fake_teacher(tmp_path, monkeypatch):
    from tools import make_unanswerable

    monkeypatch.setattr(make_unanswerable, "make_teacher", lambda args: FakeTeacher(official_text_reply))
    out = str(tmp_path / "tu.jsonl")
    counts = make_unanswerable.main(["text", "--records", write_text_records(tmp_path), "--image-root", "IMG",
                                     "--out", out, "--backend", "vllm", "--no-progress"])
    assert counts["kept"] == 2 and counts["parse_error"] == 2 and len(load_records(out)) == 2

    path, root = make_bench(tmp_path)
    answerable = tmp_path / "visual.jsonl"
    answerable.write_text("".join(x for x in open(path) if '"n/a"' not in x and "visual_demo" in x))
    monkeypatch.setattr(make_unanswerable, "make_teacher", lambda args: FakeTeacher(
        lambda p: "<strategy>Occlusion/Removal</strategy>\n<prompt>Cover the cube with a cloth.</prompt>"))
    monkeypatch.setattr(make_unanswerable, "make_editor", lambda args: invert_editor)
    queue, out = str(tmp_path / "queue.jsonl"), str(tmp_path / "vu.jsonl")
    counts = make_unanswerable.main(["image", "--records", str(answerable), "--image-root", root, "--queue", queue,
                                     "--out", out, "--backend", "vllm", "--no-progress"])
    assert counts["kept"] == 2
    assert [r.observation for r in load_records(out, image_root=root)] == ["camera_front_0014_edit.jpg",
                                                                           "camera_front_0026_edit.jpg"]


def invert_editor(record, image, proposal, key):
    if "fail" in proposal.instruction:
        from data_construction.image_edit import EditError
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
                             batch_size=2, progress=False, protocol="strategy_tags")
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
    counts = run_image_edits(records, root, teacher, invert_editor, queue, out, batch_size=2, progress=False,
                             protocol="strategy_tags")
    assert counts["skipped"] == 2 and teacher.prompts == []


def test_inputs_of_the_wrong_kind_are_refused(tmp_path):
    path, root = make_bench(tmp_path)
    records = load_records(path)
    with pytest.raises(ValueError, match="train:3: image edits need answerable visual records"):
        run_image_edits(records, root, FakeTeacher(str), invert_editor, str(tmp_path / "q"), str(tmp_path / "o"))
    with pytest.raises(ValueError, match="train:1: text swaps need answerable text records"):
        run_text_swaps(records, FakeTeacher(str), str(tmp_path / "o"))


# ---- the official protocols --------------------------------------------------------------------

SWAP_TEXT = (
    "Task: Modify the Task Goal and Step-by-step Instructions to make the Current Image does not match the Task "
    "Goal or any Step-by-step Instructions.\n\n    Input Information:\n"
    "    - Task Goal: put the red cube on the mat\n"
    '    - Step-by-step Instructions: ["[left] grasp the red cube", "[left] place it on the mat"]\n'
    "    - Current Image: [The provided image]\n\n    Editing Guidelines:\n"
    "    1. Keep the original sentence format and structure - ONLY replace the object name\n"
    "    2. For each step in Step-by-step Instructions, preserve ALL markers like [right], [left], [towards], etc. "
    "in their EXACT original positions\n\n    Output Format:\n"
    '    <edited_goal> "put your edited task goal here" </edited_goal>\n\n    <edited_demo>\n'
    '    ["your edited step 1", "your edited step 2", "your edited step 3", ..., "your edited step n"]\n'
    "    </edited_demo>")


def test_official_swap_prompt_is_the_official_text(tmp_path):
    record = load_records(write_text_records(tmp_path))[2]
    assert official_swap_prompt(record, "IMG") == [
        {"role": "system", "content": " "},
        {"role": "user", "content": [{"type": "image", "image": os.path.join("IMG", "t2", "camera_top_0004.jpg")},
                                     {"type": "text", "text": SWAP_TEXT}]}]
    with pytest.raises(ValueError, match="image root is required"):
        official_swap_prompt(record, None)


@pytest.mark.parametrize("text, parsed", [
    ('<edited_goal> "put the apple on the mat" </edited_goal>\n<edited_demo>\n["a", "b"]\n</edited_demo>',
     ("put the apple on the mat", ["a", "b"])),
    ("<edited_goal>no quotes</edited_goal><edited_demo>[]</edited_demo>", ("no quotes", [])),
    ('<edited_goal>"x"</edited_goal><edited_demo>["a]b", 3]</edited_demo>', ("x", ["a]b", 3])),  # items unchecked
    ('<edited_goal>"put the "red" apple"</edited_goal><edited_demo>["a"]</edited_demo>', "parse_error"),  # a quote
    ('<edited_goal>""</edited_goal><edited_demo>["a"]</edited_demo>', "parse_error"),  # empty goal
    ('<edited_demo>["a"]</edited_demo>', "parse_error"),
    ('<edited_goal>g</edited_goal><edited_demo>["a",]</edited_demo>', "parse_error"),  # not JSON
    ('<edited_goal>g</edited_goal><edited_demo>{"a": 1}</edited_demo>', "parse_error"),  # no [...]
    ("<edited_goal>g</edited_goal>", "parse_error"),
])
def test_parse_official_swap(text, parsed):
    if parsed == "parse_error":
        with pytest.raises(Rejected) as e:
            parse_official_swap(text)
        assert e.value.reason == "parse_error"
    else:
        assert parse_official_swap(text) == parsed


def official_text_reply(prompt):
    text = prompt[-1]["content"][-1]["text"]
    if "put the red cube on the mat" in text:
        return "<edited_goal>put the cup on the mat</edited_goal>"  # no <edited_demo>
    return ('<edited_goal> "stack the banana on the purple cube" </edited_goal>\n<edited_demo>\n'
            + json.dumps([s.replace("green cube", "banana") for s in STEPS]) + "\n</edited_demo>")


def test_run_text_swaps_official(tmp_path):
    records = load_records(write_text_records(tmp_path))
    out = str(tmp_path / "text-unanswerable.jsonl")
    teacher = FakeTeacher(official_text_reply)
    counts = run_text_swaps(records + records[:1], teacher, out, batch_size=3, progress=False, image_root="IMG")
    assert len(teacher.prompts) == 4  # one call per record, each with its own image
    assert [p[-1]["content"][0]["image"] for p in teacher.prompts] == [
        os.path.join("IMG", r.id, r.observation) for r in records]
    assert (counts["kept"], counts["parse_error"], counts["records"], counts["duplicate"]) == (2, 2, 2, 1)
    raw = [json.loads(x) for x in open(out)]
    assert raw[0] == {"id": "t1", "task_goal": "stack the banana on the purple cube",
                      "text_demo": [s.replace("green cube", "banana") for s in STEPS], "total_steps": "3",
                      "stage_to_estimate": "camera_top_0004.jpg", "closest_idx": "n/a", "progress_score": "n/a"}
    assert list(raw[0]) == ["id", "task_goal", "text_demo", "total_steps", "stage_to_estimate", "closest_idx",
                            "progress_score"]
    assert [r.observation for r in load_records(out)] == ["camera_top_0004.jpg", "camera_top_0011.jpg"]
    # Resume: kept and rejected samples are settled.
    teacher = FakeTeacher(official_text_reply)
    counts = run_text_swaps(records, teacher, out, progress=False, image_root="IMG")
    assert teacher.prompts == [] and counts["skipped"] == 4
    with pytest.raises(ValueError, match="unknown text protocol"):
        run_text_swaps(records, teacher, out, progress=False, image_root="IMG", protocol="tags")


EDIT_TAIL = (
    "Your Task:\nYou are given an image that corresponds to a specific step in a multi-step robotic manipulation "
    "task. Your goal is to edit this image to make it no longer align with the corresponding instruction, causing "
    "the task to fail.\n\nEditing Guidelines:\n\nModify key objects or elements in the image using one of the "
    "following strategies:\n1. Color Change: Alter the color of critical objects (e.g., change a red apple to "
    "green)\n2. Object Replacement: Replace the target object with a different object (e.g., replace an egg with "
    "an orange)\n3. Occlusion/Removal: Hide or remove key objects from the scene\n\n\n\nRequirements:\n\n"
    "1. The edited image should clearly violate the corresponding instruction\n2. IMPORTANT: Maintain visual "
    "realism and coherence - the edited image must look natural and believable\n3. Ensure the edit would cause "
    "the overall task goal to fail\n4. The modification should be semantically meaningful (not just noise or "
    "blur)\n\nOutput Format:\n<strategy_think>\nAnalyze the current instruction and image content. Think step "
    "by step about which editing strategy would most effectively violate this instruction while maintaining "
    "realism. Consider the key objects involved and how modifying them would break the instruction.\n"
    "</strategy_think>\n\n<strategy> State the single strategy you selected from the editing guidelines (e.g., "
    '"Object Replacement" or "Color Change") </strategy>\n\n<prompt_think>\nThink step by step about how to '
    "formulate a clear and effective image editing prompt. Consider: What specific change to make? Which objects "
    "to target? What details are needed for realism?\n</prompt_think>\n\n<prompt> Write a concise image "
    "editing prompt (maximum 20 words) that clearly instructs the editing model what to change in the image. "
    "</prompt>")
EDIT_SYSTEM = ("You are an expert at adversarial image editing for instruction following tasks. Your goal is to "
               "analyze robotic manipulation tasks and strategically edit images to make them violate specific "
               "instructions while maintaining visual realism.")


def test_official_edit_prompt_is_the_official_text(tmp_path):
    path, root = make_bench(tmp_path)
    a, b, _, text = load_records(path, image_root=root)
    head = "Task: Adversarial Image Editing for Instruction Following\nInput Information:\n\nTask Goal: put the red " \
           "cube on the blue plate\nStep-by-step Instructions:\n"
    # visual key frame 2 ends step 1
    got = official_edit_prompt(a, root, ["s1", "s2", "s3"])
    assert got[0] == {"role": "system", "content": EDIT_SYSTEM}
    assert got[1]["content"][0] == {"type": "image", "image": os.path.join(root, "traj_a", "camera_front_0014.jpg")}
    assert got[1]["content"][1]["text"] == head + (
        '1. s1\n2. s2\n3. s3\nCurrent Image: [The provided image]\nCorresponding Instruction: Step 1 - "s1"\n\n'
        + EDIT_TAIL)
    assert 'Step 3 - "s3"' in official_edit_prompt(b, root, ["s1", "s2", "s3"])[1]["content"][1]["text"]
    # no steps known: the official builder's empty list and "Unknown instruction"
    assert official_edit_prompt(a, root)[1]["content"][1]["text"] == head + (
        '\nCurrent Image: [The provided image]\nCorresponding Instruction: Step 1 - "Unknown instruction"\n\n'
        + EDIT_TAIL)
    # a text record: its closest_idx is the step
    assert 'Step 1 - "[right] grasp the red cube"' in official_edit_prompt(text, root, text.text_demo)[1]["content"][1]["text"]


@pytest.mark.parametrize("text, proposal", [
    ("<strategy_think>t</strategy_think>\n<strategy> Color Change </strategy>\n<prompt_think>p</prompt_think>\n"
     "<prompt> Make the cube green. </prompt>", EditProposal("color_change", "Make the cube green.")),
    ("<strategy>Occlusion/Removal</strategy><prompt>Remove the cube</prompt>",
     EditProposal("occlusion_removal", "Remove the cube")),
    ('<strategy>"Blur it"</strategy><prompt></prompt>', EditProposal('"Blur it"', "")),   # nothing else checked
    ("<strategy>Color Change</strategy>", "parse_error"),
    ("<prompt>Make it green</prompt>", "parse_error"),
    ("<strategy>Color Change</strategy><instruction>Make it green</instruction>", "parse_error"),
])
def test_parse_official_edit(text, proposal):
    if proposal == "parse_error":
        with pytest.raises(Rejected) as e:
            parse_official_edit(text)
        assert e.value.reason == "parse_error"
    else:
        assert parse_official_edit(text) == proposal


def test_run_image_edits_official(tmp_path):
    path, root = make_bench(tmp_path)
    records = [r for r in load_records(path, image_root=root) if r.kind == "visual" and r.answerable]
    replies = iter(["<strategy>Color Change</strategy><prompt>" + "very " * 20 + "green cube</prompt>",
                    "<strategy>Object Replacement</strategy>"])
    teacher = FakeTeacher(lambda p: next(replies))
    queue, out = str(tmp_path / "queue.jsonl"), str(tmp_path / "visual-unanswerable.jsonl")
    counts = run_image_edits(records, root, teacher, invert_editor, queue, out, batch_size=2, progress=False)
    assert (counts["kept"], counts["parse_error"], counts["long_prompt"]) == (1, 1, 1)
    assert teacher.prompts[0][0] == {"role": "system", "content": EDIT_SYSTEM}
    (entry,) = load_queue(queue)
    assert entry["strategy"] == "color_change" and entry["instruction"].endswith("green cube")
    raw = json.loads(open(out).readline())
    assert list(raw) == ["id", "task_goal", "visual_demo", "total_steps", "stage_to_estimate", "closest_idx", "delta",
                         "progress_score", "data_source"]


def test_queue_killed_mid_line_is_left_out_by_readers_and_redone(tmp_path):
    """The one rule for a half-written last line (data_pipeline/jsonl.py): readers leave it out and never
    change the file (the review app reads the queue while it grows); the resumed run redoes that sample
    and cuts the line off. A bad line elsewhere is an error naming file and line."""
    path, root = make_bench(tmp_path)
    records = [r for r in load_records(path, image_root=root) if r.kind == "visual" and r.answerable]
    reply = "<strategy>color_change</strategy><instruction>make the cube green</instruction>"
    queue, out = str(tmp_path / "queue.jsonl"), str(tmp_path / "vu.jsonl")
    run_image_edits(records, root, FakeTeacher(lambda p: reply), invert_editor, queue, out, batch_size=2,
                    progress=False, protocol="strategy_tags")
    complete = load_queue(queue)
    assert len(complete) == 2
    killed = open(queue, "rb").read()[:-40]  # the writer died inside the second entry
    with open(queue, "wb") as f:
        f.write(killed)
    assert load_queue(queue) == complete[:1]
    assert open(queue, "rb").read() == killed
    teacher = FakeTeacher(lambda p: reply)
    counts = run_image_edits(records, root, teacher, invert_editor, queue, out, batch_size=2, progress=False,
                             protocol="strategy_tags")
    assert len(teacher.prompts) == 1 and counts["skipped"] == 1 and counts["kept"] == 1
    assert load_queue(queue) == complete
    assert [json.loads(x) for x in open(out)] == [e["record"] for e in complete]
    with open(queue, "wb") as f:
        f.write(killed[:-10] + b"\n" + json.dumps(complete[1]).encode() + b"\n")
    with pytest.raises(ValueError, match=r"queue.jsonl:2: bad JSON"):
        load_queue(queue)


def test_steps_file_errors_name_file_and_line(tmp_path):
    from tools.make_unanswerable import _read_steps

    path = tmp_path / "steps.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": 7, "steps": ["a", "b"]}\n\n{"id": "t", "text_demo": ["c"]}\n')
    assert _read_steps(str(path)) == {"7": ["a", "b"], "t": ["c"]}  # byte-order mark and blank line as the loader
    for bad, reason in ((b'{"id": "t", "steps": ["a"]', "bad JSON"), (b'["a"]\n', "expected fields 'id' and 'steps'"),
                        (b'{"id": "t", "steps": "a"}\n', "expected fields"), (b'{"id": "\xff"}\n', "not UTF-8")):
        path.write_bytes(b'{"id": "s", "steps": []}\n' + bad)
        with pytest.raises(SystemExit, match=f"steps.jsonl:2: {reason}"):
            _read_steps(str(path))
