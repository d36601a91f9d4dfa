import hashlib

import numpy as np
import pytest

from data_pipeline import prompt_texts as T
from data_pipeline.prompts import (
    CHAT_TEMPLATE, build_messages, chat_messages, format_percent, official_percent, record_images, render_text,
    target_answer, tokenize_chat, tokenize_messages, tokenize_record,
)
from data_pipeline.records import ChatRecord, Record, parse_record
from data_pipeline.tokenizer import TINY_PATH, load_tokenizer

transformers = pytest.importorskip("transformers")

# The public Qwen2-VL chat template (image parts only), used as the independent reference rendering.
QWEN2_VL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

VISUAL = Record(source="visual_same_view", line=3, id="traj_1", task_goal="stack the blue block on the red block",
                visual_demo=("f0.jpg", "f1.jpg", "f2.jpg", "f3.jpg"), text_demo=None, total_steps=3,
                observation="obs.jpg", closest_idx=2, progress=0.4, delta=0.07)
TEXT = Record(source="text-normal", line=5, id="t9", task_goal="open the drawer",
              visual_demo=None, text_demo=("[left] reach the handle", "[left] pull the handle", "release it"),
              total_steps=3, observation="obs2.jpg", closest_idx=None, progress=None)
ANSWER = "<ref_think>The lid is half on.</ref_think><ref>2</ref><score_think>A bit further.</score_think><score>40%</score>"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(None)


@pytest.fixture(scope="module")
def hf():
    from tokenizers import Tokenizer as RawTokenizer

    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=RawTokenizer.from_file(TINY_PATH))
    hf_tok.chat_template = QWEN2_VL_TEMPLATE
    return hf_tok


def hf_grids(n, seed=0):
    """image_grid_thw from transformers' Qwen2-VL image processor for n random images of varied sizes."""
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    rng = np.random.default_rng(seed)
    sizes = [(56, 84), (84, 56), (112, 112), (70, 140), (60, 60)]
    images = [Image.fromarray(rng.integers(0, 255, sizes[i % len(sizes)] + (3,), dtype=np.uint8)) for i in range(n)]
    return np.asarray(Qwen2VLImageProcessorPil()(images, return_tensors="np")["image_grid_thw"])


def hf_ids(hf, messages, grids, add_generation_prompt):
    """Reference ids as Qwen2VLProcessor makes them: render with the template, expand image pads, tokenize."""
    text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    pieces = text.split("<|image_pad|>")
    assert len(pieces) == len(grids) + 1
    expanded = pieces[0] + "".join("<|image_pad|>" * (int(np.prod(g)) // 4) + p for g, p in zip(grids, pieces[1:]))
    return hf(expanded, add_special_tokens=False)["input_ids"]


def test_percent_labels_and_layout():
    msgs = build_messages(VISUAL, "think", image_root="/data")
    assert msgs[0]["role"] == "system" and msgs[1]["role"] == "user"
    parts = msgs[1]["content"]
    images = [p["image"] for p in parts if p["type"] == "image"]
    assert images == ["/data/traj_1/f0.jpg", "/data/traj_1/f1.jpg", "/data/traj_1/f2.jpg", "/data/traj_1/f3.jpg",
                      "/data/traj_1/obs.jpg"]
    assert images == record_images(VISUAL, "/data")
    flat = "".join("<image>" if p["type"] == "image" else p["text"] for p in parts)
    # frame i of 3 steps stands for round(100 i / 3)%: 0, 33, 67, 100
    assert "Frame 1: <image> 0%\nFrame 2: <image> 33%\nFrame 3: <image> 67%\nFrame 4: <image> 100%\n" in flat
    assert flat.startswith("Task goal: stack the blue block on the red block\n\n")
    sections = flat.split("\n\n")
    assert sections[-2].endswith("<image>") and "<ref_think>" in sections[-1] and "n/a" in sections[-1]

    text_flat = build_messages(TEXT, "direct")[1]["content"]
    text_flat = "".join("<image>" if p["type"] == "image" else p["text"] for p in text_flat)
    assert "Step 1: [left] reach the handle (33%)\nStep 2: [left] pull the handle (67%)\nStep 3: release it (100%)\n" \
        in text_flat
    assert text_flat.count("<image>") == 1 and "<ref_think>" not in text_flat and "percentage" in text_flat
    assert record_images(TEXT) == ["obs2.jpg"]
    # 8 steps: step 1 is 12.5%, rounded half up as the benchmark labels are
    eight = Record(**{**TEXT.__dict__, "text_demo": tuple(f"s{k}" for k in range(8)), "total_steps": 8})
    eight_flat = build_messages(eight, "direct")[1]["content"][0]["text"]
    assert "Step 1: s0 (13%)\nStep 2: s1 (25%)\nStep 3: s2 (38%)\n" in eight_flat
    with pytest.raises(ValueError, match="mode"):
        build_messages(TEXT, "cot")


def test_answers():
    assert format_percent(0.33) == "33%" and format_percent(0.0141) == "1.41%" and format_percent(None) == "n/a"
    assert format_percent(0.07) == "7%" and format_percent(1.0) == "100%"
    assert target_answer(VISUAL, "direct") == "40%" and target_answer(TEXT, "direct") == "n/a"
    assert target_answer(VISUAL, "think") is None
    assert target_answer(Record(**{**VISUAL.__dict__, "response": ANSWER}), "think") == ANSWER


@pytest.mark.parametrize("record, mode", [(VISUAL, "think"), (TEXT, "direct"), (TEXT, "think"), (VISUAL, "direct")])
def test_matches_qwen_template_and_processor(tok, hf, record, mode):
    grids = hf_grids(len(record_images(record)))
    messages = build_messages(record, mode)
    assert render_text(messages, add_generation_prompt=True) == hf.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)

    prompt = tokenize_record(tok, record, grids, mode)
    ref_prompt = hf_ids(hf, messages, grids, add_generation_prompt=True)
    assert prompt.input_ids.dtype == np.int32 and prompt.input_ids.tolist() == ref_prompt
    assert prompt.loss_mask.sum() == 0 and prompt.truncated == 0
    assert tok.decode(prompt.input_ids[-3:]) == "<|im_start|>assistant\n"
    n_pad = sum(int(np.prod(g)) // 4 for g in grids)
    assert (prompt.input_ids == tok.image_pad_id).sum() == n_pad

    answer = ANSWER if mode == "think" else "40%"
    full = tokenize_record(tok, record, grids, mode, answer=answer)
    ref_full = hf_ids(hf, messages + [{"role": "assistant", "content": answer}], grids, add_generation_prompt=False)
    assert full.input_ids.tolist() == ref_full
    # the target is the answer and its <|im_end|>: it starts right after the prompt
    answer_ids = hf(answer, add_special_tokens=False)["input_ids"] + [hf.convert_tokens_to_ids("<|im_end|>")]
    start = len(ref_prompt)
    expected = np.zeros(len(ref_full), np.int32)
    expected[start:start + len(answer_ids)] = 1
    np.testing.assert_array_equal(full.loss_mask, expected)
    assert ref_full[start:start + len(answer_ids)] == answer_ids


def test_chat_record(tok, hf):
    chat = ChatRecord(source="sft", line=2, images=("a.jpg", "b.jpg"), messages=(
        ("user", "Demo: <image> 0%\n\nNow: <image>\nHow far?"), ("assistant", "50%"),
        ("user", "Sure?"), ("assistant", "<score>55%</score>")))
    messages = chat_messages(chat)
    assert [p.get("image") for p in messages[0]["content"] if p["type"] == "image"] == ["a.jpg", "b.jpg"]
    grids = hf_grids(2, seed=1)
    out = tokenize_chat(tok, chat, grids)
    ref = hf_ids(hf, messages, grids, add_generation_prompt=False)  # the template adds the default system message
    assert out.input_ids.tolist() == ref
    masked = out.input_ids[out.loss_mask == 1]
    assert tok.decode(masked) == "50%<|im_end|><score>55%</score><|im_end|>"
    # a generation prompt: everything before the last answer, then the assistant header
    prompt = tokenize_chat(tok, chat, grids, with_answer=False)
    assert prompt.input_ids.tolist() == hf_ids(hf, messages[:-1], grids, add_generation_prompt=True)


def test_truncation_cuts_user_text_only(tok):
    long_text = Record(**{**TEXT.__dict__, "text_demo": tuple(f"move the cup a little step number {k}" * 5
                                                              for k in range(30)), "total_steps": 30})
    grids = np.array([[1, 4, 6]])
    answer = "<score>n/a</score>"
    full = tokenize_record(tok, long_text, grids, "think", answer=answer, max_length=100_000)
    short = tokenize_record(tok, long_text, grids, "think", answer=answer, max_length=len(full.input_ids) - 300)
    assert len(short.input_ids) == len(full.input_ids) - 300 and short.truncated == 300
    assert (short.input_ids == tok.image_pad_id).sum() == 6
    assert tok.decode(short.input_ids[short.loss_mask == 1]) == answer + "<|im_end|>"
    text = tok.decode(short.input_ids)
    assert "Task goal: open the drawer" in text and "step number 0" in text and "step number 29" in text
    assert "step number 15" not in text  # the middle of the step list went
    assert text.endswith("<score>n/a</score><|im_end|>\n")
    assert full.truncated == 0


def test_overlong_images_refused(tok):
    grids = np.array([[1, 40, 40]])  # 400 image tokens
    with pytest.raises(ValueError, match=r"text-normal:5 \(id t9, obs2.jpg\).*image tokens alone \(402\)"):
        tokenize_record(tok, TEXT, grids, "direct", max_length=300)
    with pytest.raises(ValueError, match="even with all user text removed"):
        tokenize_record(tok, TEXT, grids, "direct", max_length=410)
    with pytest.raises(ValueError, match="image_grid_thw rows"):
        tokenize_messages(tok, build_messages(TEXT), np.array([[1, 2, 2], [1, 2, 2]]), 1000)


# ---- the official layout (docs/prompts.md) ---------------------------------------------------------------
# Expected chat texts are written here by reading the official builders of ProgressLM/ProgressLM:
# eval/qwen25vl/codes/prompts/*.py with run_*_demo*.py and core/model.py (system message = the system
# prompt, which is also the first user part; parts concatenated by the chat template with no separator),
# LLaMA-Factory/our_scripts/data_convert/convert_*.py ("\n".join of parts, some starting with "\n\n";
# template qwen2_vl: default system), EasyR1/progresslm/data_preprocess/build_prompts_general.py
# ("\n\n\n".join of sections, system_prompt "" so the Qwen template's default system). The long
# instruction blocks come from data_pipeline/prompt_texts.py, checked here against the length and
# SHA-256 of the strings in the official files.

OFFICIAL_SHA256 = {  # name: (length, sha256[:16]) of the official string
    "VISUAL_SYSTEM": (318, "c2d70d21a58013c5"),
    "VISUAL_SYSTEM_EVIDENCE": (349, "efd9bf9e024eeb5b"),
    "TEXT_SYSTEM": (316, "30caf8d8859a4586"),
    "RL_TEXT_SYSTEM": (401, "74a3b08eab0c50c6"),
    "TEXT_DEMO_INTRO_ARMS": (152, "b2c2a4a389db3513"),
    "VISUAL_THINK_TASK": (1332, "d6fcf542a2d23e39"),
    "VISUAL_DIRECT_TASK": (729, "1286730175a18438"),
    "TEXT_THINK_TASK": (1904, "27b5562df86c2466"),
    "TEXT_DIRECT_TASK": (257, "029556c222c84a48"),
    "SFT_TEXT_THINK_TASK": (1778, "abfa6925c41b91cf"),
    "SFT_VISUAL_DIRECT_TASK": (718, "43c786ef76c78ab9"),
    "SFT_TEXT_DIRECT_TASK": (698, "d7e7ea66837afec2"),
    "RL_VISUAL_THINK_TASK": (1502, "fd1e3fdf4534ffdb"),
}
IMG = "<|vision_start|><|image_pad|><|vision_end|>"
HEAD = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
GEN = "<|im_end|>\n<|im_start|>assistant\n"
RESPONSE = "<ref_think>Frame 2 matches.</ref_think><ref>2</ref><score_think>A bit past it.</score_think><score>8%</score>"

# Lines in each official file format (values as the files write them: strings, one-element lists).
SAME_VIEW = {"id": "h5_franka_3rgb/stick_blue/1016_181228", "task_goal": "place the blue block on the table",
             "visual_demo": ["camera_top_0000.jpg", "camera_top_0047.jpg", "camera_top_0056.jpg",
                             "camera_top_0064.jpg", "camera_top_0080.jpg"], "total_steps": "4",
             "stage_to_estimate": ["camera_top_0015.jpg"], "closest_idx": "1", "delta": "+7%",
             "progress_score": "8%", "data_source": "h5_franka_3rgb"}
CROSS_VIEW = {"id": "h5_franka_3rgb/eight/1", "task_goal": "sort the blocks",
              "visual_demo": [f"camera_top_{i:04d}.jpg" for i in range(9)], "total_steps": "8",
              "stage_to_estimate": ["camera_left_0100.jpg"], "closest_idx": "3", "delta": "+2%",
              "progress_score": "27%", "data_source": "h5_franka_3rgb"}
TEXT_NORMAL = {"id": "h5_agilex_3rgb/drawer/7", "task_goal": "open the drawer",
               "text_demo": ["[left] reach the handle", "[left] pull the handle", "release it"],
               "total_steps": "3", "stage_to_estimate": "camera_front_0010.jpg", "closest_idx": "2",
               "progress_score": "67%", "data_source": "h5_agilex_3rgb"}
TEXT_UNANSWERABLE = {"id": "h5_agilex_3rgb/27_carrot/2024", "task_goal": "Put the bowl on the table and place the apple in the bowl.",
                     "text_demo": ["[left] picks up the green bowl", "[left] places the green bowl on the table",
                                   "[right] picks up the apple", "[right] places the apple in the bowl",
                                   "[right] moves away from the apple"], "total_steps": "5",
                     "stage_to_estimate": "camera_front_0114.jpg", "closest_idx": "n/a", "progress_score": "n/a",
                     "data_source": "h5_agilex_3rgb"}
VISUAL_UNANSWERABLE = {"id": "h5_agilex_3rgb/8_appleblueplate_2/2024_09_27", "task_goal": "place the apple on the plate",
                       "visual_demo": [f"camera_front_{i:04d}.jpg" for i in range(9)], "total_steps": "8",
                       "stage_to_estimate": ["camera_front_0223_edit.jpg"], "closest_idx": "n/a", "delta": "n/a",
                       "progress_score": "n/a", "data_source": "robomind_h5_agilex_3rgb"}
HUMAN = {"id": "human/dishwasher_bowl", "task_goal": "taking a bowl out of the dishwasher",
         "visual_demo": ["0.jpg", "7.jpg", "24.jpg"], "total_steps": 2, "stage_to_estimate": "7.jpg",
         "closest_idx": 2, "progress_score": "50%", "data_source": "human"}
RL_VISUAL = {"id": "h5_franka_3rgb/place_in_plate/1014", "task_goal": "placing a block into a container",
             "visual_demo": ["camera_top_0000.jpg", "camera_top_0281.jpg", "camera_top_0335.jpg", "camera_top_0388.jpg"],
             "total_steps": "3", "stage_to_estimate": ["camera_top_0093.jpg"], "closest_idx": "1", "delta": "+11%",
             "progress_score": "11%", "data_source": "h5_franka_3rgb"}
RL_TEXT = {"id": "h5_franka_3rgb/place_in_shape/0924", "task_goal": "sorting colorful blocks into plates",
           "text_demo": ["pick up an orange block", "place it in the blue plate", "pick up a red block",
                         "place it in the purple plate", "pick up a blue block", "place it in the purple plate"],
           "total_steps": "6", "stage_to_estimate": ["camera_top_0331.jpg"], "closest_idx": 3, "progress_score": "50%",
           "data_source": "h5_franka_3rgb"}


def rec(obj, name="bench", **extra):
    return parse_record(dict(obj, **extra), name, f"{name}.jsonl", 1)


def text_of(record, mode, stage, answer=None):
    messages = build_messages(record, mode, layout="official", stage=stage)
    if answer is not None:
        return render_text(messages + [{"role": "assistant", "content": answer}])
    return render_text(messages, add_generation_prompt=True)


def test_official_texts_are_the_released_strings():
    for name, (length, digest) in OFFICIAL_SHA256.items():
        value = getattr(T, name)
        assert (len(value), hashlib.sha256(value.encode()).hexdigest()[:16]) == (length, digest), name
    assert T.DEMO_INTRO == "Here is the demonstration:"
    assert T.CURRENT_INTRO == "Here is the current state that you need to estimate:"
    assert T.TEXT_THINK_TASK.endswith("output only \"n/a\".\n</score>\n")  # ends with a newline
    assert "“n/a”" in T.SFT_TEXT_THINK_TASK and "metioned" in T.TEXT_THINK_TASK


def test_banker_rounding():
    assert [official_percent(i, 8) for i in range(9)] == [0, 12, 25, 38, 50, 62, 75, 88, 100]
    assert [official_percent(i, 3) for i in range(4)] == [0, 33, 67, 100]


# (fixture, mode, stage) -> expected chat text, derived by hand from the official builders
def _expected():
    vs, vse, ts = T.VISUAL_SYSTEM, T.VISUAL_SYSTEM_EVIDENCE, T.TEXT_SYSTEM
    cur = "Here is the current state that you need to estimate:"
    demo = "Here is the demonstration:"
    return {
        # run_visual_demo.py: the eval goal has no final period
        ("same_view", "think", "eval"):
            f"<|im_start|>system\n{vs}<|im_end|>\n<|im_start|>user\n{vs}The overall task goal is place the blue "
            f"block on the table{demo}{IMG * 5}The progress shifts across all given visual demos is: <image> 0% "
            f"<image> 25% <image> 50% <image> 75% <image> 100%{cur}{IMG}{T.VISUAL_THINK_TASK}{GEN}",
        # run_visual_demo_nothink.py: other system prompt, no goal at all; banker's rounding of k/8
        ("cross_view", "direct", "eval"):
            f"<|im_start|>system\n{vse}<|im_end|>\n<|im_start|>user\n{demo}{IMG * 9}The progress shifts across all "
            f"given visual demos is: <image> 0% <image> 12% <image> 25% <image> 38% <image> 50% <image> 62% "
            f"<image> 75% <image> 88% <image> 100%{cur}{IMG}{T.VISUAL_DIRECT_TASK}{GEN}",
        ("visual_unanswerable", "think", "eval"):
            f"<|im_start|>system\n{vs}<|im_end|>\n<|im_start|>user\n{vs}The overall task goal is place the apple "
            f"on the plate{demo}{IMG * 9}The progress shifts across all given visual demos is: <image> 0% <image> 12% "
            f"<image> 25% <image> 38% <image> 50% <image> 62% <image> 75% <image> 88% <image> 100%{cur}{IMG}"
            f"{T.VISUAL_THINK_TASK}{GEN}",
        ("visual_unanswerable", "direct", "sft"):
            f"{HEAD}{vs}\n\n\nOur goal is place the apple on the plate.\n\n\n{demo}\n{IMG} 0% {IMG} 12% {IMG} 25% "
            f"{IMG} 38% {IMG} 50% {IMG} 62% {IMG} 75% {IMG} 88% {IMG} 100%\n\n\n{cur}\n{IMG}\n\n\n"
            f"{T.SFT_VISUAL_DIRECT_TASK}<|im_end|>\n<|im_start|>assistant\nn/a<|im_end|>\n",
        ("human", "think", "eval"):
            f"<|im_start|>system\n{vs}<|im_end|>\n<|im_start|>user\n{vs}The overall task goal is taking a bowl out "
            f"of the dishwasher{demo}{IMG * 3}The progress shifts across all given visual demos is: <image> 0% "
            f"<image> 50% <image> 100%{cur}{IMG}{T.VISUAL_THINK_TASK}{GEN}",
        # run_text_demo.py: 2/3 -> 67 (the builder's docstring says 66)
        ("text_normal", "think", "eval"):
            f"<|im_start|>system\n{ts}<|im_end|>\n<|im_start|>user\n{ts}The overall task goal is open the drawer."
            f"{T.TEXT_DEMO_INTRO_ARMS}Step 1. [left] reach the handle\nThe Progress for now is 33%.\n\nStep 2. "
            f"[left] pull the handle\nThe Progress for now is 67%.\n\nStep 3. release it\nThe Progress for now is "
            f"100%.{cur}{IMG}{T.TEXT_THINK_TASK}{GEN}",
        # run_text_demo_nothink.py: "Our goal is ...." keeps the goal's own period
        ("text_unanswerable", "direct", "eval"):
            f"<|im_start|>system\n{ts}<|im_end|>\n<|im_start|>user\nOur goal is Put the bowl on the table and "
            f"place the apple in the bowl..{demo}Step 1. [left] picks up the green bowl\nThe Progress for now is "
            f"20%.\n\nStep 2. [left] places the green bowl on the table\nThe Progress for now is 40%.\n\nStep 3. "
            f"[right] picks up the apple\nThe Progress for now is 60%.\n\nStep 4. [right] places the apple in the "
            f"bowl\nThe Progress for now is 80%.\n\nStep 5. [right] moves away from the apple\nThe Progress for "
            f"now is 100%.{cur}{IMG}{T.TEXT_DIRECT_TASK}{GEN}",
        # build_prompts_general.py
        ("rl_visual", "think", "rl"):
            f"{HEAD}{vse}\n\n\nThe overall task goal is placing a block into a container.\n\n\n{demo}\n{IMG} 0% "
            f"{IMG} 33% {IMG} 67% {IMG} 100%\n\n\n{cur}\n{IMG}\n\n\n{T.RL_VISUAL_THINK_TASK}{GEN}",
        ("rl_text", "think", "rl"):
            f"{HEAD}{T.RL_TEXT_SYSTEM}\n\n\nThe overall task goal is sorting colorful blocks into plates.\n\n\n"
            f"{T.TEXT_DEMO_INTRO_ARMS}\nStep 1. pick up an orange block\nThe Progress for now is 17%.\n\nStep 2. "
            f"place it in the blue plate\nThe Progress for now is 33%.\n\nStep 3. pick up a red block\nThe Progress "
            f"for now is 50%.\n\nStep 4. place it in the purple plate\nThe Progress for now is 67%.\n\nStep 5. pick "
            f"up a blue block\nThe Progress for now is 83%.\n\nStep 6. place it in the purple plate\nThe Progress "
            f"for now is 100%.\n\n\n{cur}\n{IMG}\n\n\n{T.TEXT_THINK_TASK}{GEN}",
        # convert_visual_demo.py: "\n".join of parts that start with "\n\n" -> three newlines
        ("same_view", "think", "sft"):
            f"{HEAD}{vs}\n\n\nOur goal is place the blue block on the table.\n\n\n{demo}\n{IMG} 0% {IMG} 25% {IMG} "
            f"50% {IMG} 75% {IMG} 100%\n\n\n{cur}\n{IMG}\n\n\n{T.VISUAL_THINK_TASK}<|im_end|>\n<|im_start|>assistant\n"
            f"{RESPONSE}<|im_end|>\n",
        # convert_text_demo_simple.py: the answer is the score
        ("text_normal", "direct", "sft"):
            f"{HEAD}{ts}\n\n\nOur goal is open the drawer.\n\n\n{demo}\nStep 1. [left] reach the handle\nThe "
            f"Progress for now is 33%.\n\nStep 2. [left] pull the handle\nThe Progress for now is 67%.\n\nStep 3. "
            f"release it\nThe Progress for now is 100%.\n\n\n{cur}\n{IMG}\n\n\n{T.SFT_TEXT_DIRECT_TASK}"
            f"<|im_end|>\n<|im_start|>assistant\n67%<|im_end|>\n",
        ("text_unanswerable", "think", "sft"):
            f"{HEAD}{ts}\n\n\nOur goal is Put the bowl on the table and place the apple in the bowl..\n\n\n{demo}\n"
            f"Step 1. [left] picks up the green bowl\nThe Progress for now is 20%.\n\nStep 2. [left] places the "
            f"green bowl on the table\nThe Progress for now is 40%.\n\nStep 3. [right] picks up the apple\nThe "
            f"Progress for now is 60%.\n\nStep 4. [right] places the apple in the bowl\nThe Progress for now is "
            f"80%.\n\nStep 5. [right] moves away from the apple\nThe Progress for now is 100%.\n\n\n{cur}\n{IMG}"
            f"\n\n\n{T.SFT_TEXT_THINK_TASK}<|im_end|>\n<|im_start|>assistant\n{RESPONSE}<|im_end|>\n",
        ("cross_view", "direct", "sft"):
            f"{HEAD}{vs}\n\n\nOur goal is sort the blocks.\n\n\n{demo}\n{IMG} 0% {IMG} 12% {IMG} 25% {IMG} 38% "
            f"{IMG} 50% {IMG} 62% {IMG} 75% {IMG} 88% {IMG} 100%\n\n\n{cur}\n{IMG}\n\n\n{T.SFT_VISUAL_DIRECT_TASK}"
            f"<|im_end|>\n<|im_start|>assistant\n27%<|im_end|>\n",
    }


FIXTURES = {"same_view": SAME_VIEW, "cross_view": CROSS_VIEW, "visual_unanswerable": VISUAL_UNANSWERABLE, "human": HUMAN, "text_normal": TEXT_NORMAL,
            "text_unanswerable": TEXT_UNANSWERABLE, "rl_visual": RL_VISUAL, "rl_text": RL_TEXT}
CASES = sorted(_expected())


@pytest.mark.parametrize("name, mode, stage", CASES)
def test_official_chat_text(name, mode, stage):
    record = rec(FIXTURES[name], response=RESPONSE)
    answer = target_answer(record, mode) if stage == "sft" else None
    assert text_of(record, mode, stage, answer) == _expected()[(name, mode, stage)]


def test_official_images_in_order():
    record = rec(HUMAN)
    for stage in ("eval", "sft", "rl"):
        msgs = build_messages(record, "think", image_root="/data", layout="official", stage=stage)
        images = [p["image"] for m in msgs if not isinstance(m["content"], str) for p in m["content"]
                  if p["type"] == "image"]
        assert images == [f"/data/human/dishwasher_bowl/{f}" for f in ("0.jpg", "7.jpg", "24.jpg", "7.jpg")]


def test_official_rl_has_no_direct_mode_and_bad_layouts_are_named():
    with pytest.raises(ValueError, match="data.mode='think'"):
        build_messages(rec(RL_VISUAL), "direct", layout="official", stage="rl")
    with pytest.raises(ValueError, match="data.prompt must be one of"):
        build_messages(rec(RL_VISUAL), "think", layout="paper")
    with pytest.raises(ValueError, match=r"bench:1 \(id .*\): the official prompt has 2 '<image>' tags for 1"):
        build_messages(rec(TEXT_NORMAL, task_goal="look at <image>"), "think", layout="official", stage="rl")


def test_sft_chat_file_line_equals_official_sft_layout():
    """A line of LLaMA-Factory's converted data (convert_visual_demo.py writes it) renders as the record does."""
    record = rec(SAME_VIEW, response=RESPONSE)
    user = "\n".join([T.VISUAL_SYSTEM, "\n\nOur goal is place the blue block on the table.",
                      "\n\nHere is the demonstration:", "<image> 0% <image> 25% <image> 50% <image> 75% <image> 100%",
                      "\n\nHere is the current state that you need to estimate:", "<image>",
                      "\n\n" + T.VISUAL_THINK_TASK])
    images = tuple(f"{record.id}/{f}" for f in SAME_VIEW["visual_demo"] + ["camera_top_0015.jpg"])
    chat = ChatRecord(source="sft", line=1, messages=(("user", user), ("assistant", RESPONSE)), images=images)
    assert render_text(chat_messages(chat)) == _expected()[("same_view", "think", "sft")]


def _official_reference_messages(name, mode, stage):
    """The messages the official code hands to apply_chat_template: eval as its separate parts, sft/rl
    as one user text split on '<image>' (EasyR1's _build_messages; LLaMA-Factory's mm_plugin is equivalent)."""
    r = FIXTURES[name]
    if stage == "eval" and name == "same_view":
        vs = T.VISUAL_SYSTEM
        parts = ([{"type": "text", "text": vs}, {"type": "text", "text": f"The overall task goal is {r['task_goal']}"},
                  {"type": "text", "text": "Here is the demonstration:"}] + [{"type": "image"}] * 5
                 + [{"type": "text", "text": "The progress shifts across all given visual demos is: <image> 0% "
                                             "<image> 25% <image> 50% <image> 75% <image> 100%"},
                    {"type": "text", "text": "Here is the current state that you need to estimate:"},
                    {"type": "image"}, {"type": "text", "text": T.VISUAL_THINK_TASK}])
        return [{"role": "system", "content": vs}, {"role": "user", "content": parts}]
    text = _expected()[(name, mode, stage)]
    user = text[len(HEAD):text.index(GEN)].replace(IMG, "<image>")
    content = []
    for i, piece in enumerate(user.split("<image>")):
        if i:
            content.append({"type": "image"})
        if piece:
            content.append({"type": "text", "text": piece})
    return [{"role": "user", "content": content}]


@pytest.mark.parametrize("name, mode, stage", [("same_view", "think", "eval"), ("rl_visual", "think", "rl"),
                                               ("rl_text", "think", "rl"), ("cross_view", "direct", "sft")])
def test_official_token_ids_match_transformers(tok, name, mode, stage):
    from tokenizers import Tokenizer as RawTokenizer

    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=RawTokenizer.from_file(TINY_PATH))
    hf.chat_template = CHAT_TEMPLATE
    record = rec(FIXTURES[name], response=RESPONSE)
    grids = hf_grids(len(record_images(record)), seed=3)
    messages = _official_reference_messages(name, mode, stage)
    assert hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == text_of(record, mode, stage)
    ref = hf_ids(hf, messages, grids, add_generation_prompt=True)
    got = tokenize_record(tok, record, grids, mode, layout="official", stage=stage)
    assert got.input_ids.tolist() == ref
    if stage == "sft":
        answer = target_answer(record, mode)
        full = tokenize_record(tok, record, grids, mode, answer=answer, layout="official", stage=stage)
        ref_full = hf_ids(hf, messages + [{"role": "assistant", "content": answer}], grids, add_generation_prompt=False)
        assert full.input_ids.tolist() == ref_full
        assert tok.decode(full.input_ids[full.loss_mask == 1]) == answer + "<|im_end|>"
