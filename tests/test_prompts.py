import numpy as np
import pytest

from data_pipeline.prompts import (
    build_messages, chat_messages, format_percent, record_images, render_text, target_answer, tokenize_chat,
    tokenize_messages, tokenize_record,
)
from data_pipeline.records import ChatRecord, Record
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
