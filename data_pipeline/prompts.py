"""Prompts in two layouts, rendered in the Qwen chat format, and their tokenization.

Layouts (docs/prompts.md): `interleaved`, the project's own (each demo frame or step next to its
progress); `official`, the ProgressLM release's prompts per stage: `eval` (its evaluation harness),
`sft` (LLaMA-Factory's converted chat data) and `rl` (EasyR1's prompts). A released checkpoint
expects `official`. The official texts are data in data_pipeline/prompt_texts.py.

Messages use the Hugging Face multimodal layout: content is a string or a list of
{"type": "text", "text": ...} / {"type": "image", "image": path} parts.

Tokenization encodes the pieces between image blocks separately. Every image block and
message header starts or ends with a special token, which the tokenizer splits on first, so
the ids equal those of the whole rendered string (tested against transformers' Qwen2-VL
processor). The answer is encoded on its own, as the model generates it after the header.

Over-long samples: tokens are removed from the middle of the longest user text run (for a
text demo that is the step list), then the next longest, and so on. System text, template
tokens, image tokens and the answer are never cut; if they alone exceed max_length the
sample is refused with an error naming it.
"""
from __future__ import annotations

import logging
import math
from typing import NamedTuple

import numpy as np

from data_pipeline import prompt_texts as T
from data_pipeline.parsing import MODES
from data_pipeline.records import IMAGE_PLACEHOLDER, ChatRecord, Record, record_image_path

logger = logging.getLogger(__name__)

LAYOUTS = ("official", "interleaved")
STAGES = ("eval", "sft", "rl")
MERGE_SIZE = 2
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"

DEFAULT_SYSTEM = T.DEFAULT_SYSTEM  # what the Qwen chat template inserts when no system message is given
SYSTEM_PROMPT = (
    "You are a progress estimator for robot manipulation tasks. You are given the goal of a task, "
    "a demonstration of the task in which every step is labelled with the progress it reaches, and "
    "one observation taken while the task is being carried out. You judge how far the task has "
    "progressed in the observation, or answer n/a when the observation does not fit the demonstrated task."
)
THINK_INSTRUCTIONS = (
    "Find the demonstration frame or step that is closest to the current observation, compare the two, and "
    "estimate the progress of the observation. Answer in exactly this format:\n"
    "<ref_think>which frame or step is closest and why</ref_think><ref>its number</ref>"
    "<score_think>how the observation differs from it and what that means for the progress</score_think>"
    "<score>the progress as a percentage</score>\n"
    "If the observation does not fit the demonstrated task, write n/a in both <ref> and <score>."
)
DIRECT_INSTRUCTIONS = (
    "Estimate the progress of the task in the current observation. Answer with the progress as a "
    "percentage only, for example 40%, or with n/a if the observation does not fit the demonstrated task."
)


def progress_label(step: int, total_steps: int) -> int:
    """Progress in percent of demo entry `step` of `total_steps`, rounded half up (12.5 -> 13) as the
    benchmark construction (data_construction.construct) rounds its labels."""
    return math.floor(100 * step / total_steps + 0.5)


def format_percent(progress: float | None) -> str:
    """0.33 -> '33%', 0.0141 -> '1.41%', None -> 'n/a'."""
    if progress is None:
        return "n/a"
    return f"{round(progress * 100, 2):g}%"


def official_percent(index: int, total_steps: int) -> int:
    """Progress label of the official prompts: Python's round(), half to even (12.5 -> 12, 37.5 -> 38)."""
    return round(index / total_steps * 100)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def check_layout(layout: str, stage: str, mode: str) -> None:
    """Errors name the config keys: data.prompt, data.mode."""
    _check_mode(mode)
    if layout not in LAYOUTS:
        raise ValueError(f"data.prompt must be one of {LAYOUTS}, got {layout!r}")
    if stage not in STAGES:
        raise ValueError(f"prompt stage must be one of {STAGES}, got {stage!r}")
    if layout == "official" and stage == "rl" and mode != "think":
        raise ValueError("data.prompt='official' has no direct-mode RL prompt (the official RL data is think "
                         "mode only); use data.mode='think' or data.prompt='interleaved'")


def record_images(record: Record, image_root: str | None = None) -> list[str]:
    """The record's images in prompt order: demo key frames, then the observation."""
    files = list(record.visual_demo or ()) + [record.observation]
    return [record_image_path(image_root, record, f) if image_root is not None else f for f in files]


def build_messages(record: Record, mode: str = "think", image_root: str | None = None,
                   layout: str = "interleaved", stage: str = "eval") -> list[dict]:
    """The prompt messages of a record in `layout`; `stage` (eval | sft | rl) matters for `official` only."""
    check_layout(layout, stage, mode)
    images = record_images(record, image_root)
    if layout == "official":
        return _official_messages(record, mode, stage, images)
    parts: list[dict] = []

    def text(s: str) -> None:
        if parts and parts[-1]["type"] == "text":
            parts[-1]["text"] += s
        else:
            parts.append({"type": "text", "text": s})

    text(f"Task goal: {record.task_goal}\n\n")
    if record.visual_demo is not None:
        text("Demonstration, key frames with the progress each one reaches:\n")
        for i in range(record.num_demos):
            text(f"Frame {i + 1}: ")
            parts.append({"type": "image", "image": images[i]})
            text(f" {progress_label(i, record.total_steps)}%\n")
    else:
        text("Demonstration, steps with the progress each one reaches:\n")
        for k, step in enumerate(record.text_demo, start=1):
            text(f"Step {k}: {step} ({progress_label(k, record.total_steps)}%)\n")
    text("\nCurrent observation: ")
    parts.append({"type": "image", "image": images[-1]})
    text("\n\n" + (THINK_INSTRUCTIONS if mode == "think" else DIRECT_INSTRUCTIONS))
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": parts}]


def _merged(parts: list) -> list[dict]:
    """Strings and {"type": "image"} parts -> content parts, adjacent strings joined: the chat text is
    the same, and one text run tokenizes as the processor tokenizes the whole string."""
    out: list[dict] = []
    for p in parts:
        if not isinstance(p, str):
            out.append(p)
        elif out and out[-1]["type"] == "text":
            out[-1]["text"] += p
        elif p:
            out.append({"type": "text", "text": p})
    return out


def _with_images(text: str, images: list[str], record: Record) -> list[dict]:
    """A user text with '<image>' tags -> content parts, the record's images in order (as LLaMA-Factory's
    mm_plugin and EasyR1's dataset place them)."""
    pieces = text.split(T.IMAGE_TAG)
    if len(pieces) != len(images) + 1:
        raise ValueError(f"{record.source}:{record.line} (id {record.id}): the official prompt has "
                         f"{len(pieces) - 1} '{T.IMAGE_TAG}' tags for {len(images)} images; the task goal or a "
                         "demo step contains the tag")
    parts: list = []
    for i, piece in enumerate(pieces):
        if i:
            parts.append({"type": "image", "image": images[i - 1]})
        parts.append(piece)
    return _merged(parts)


def _official_messages(record: Record, mode: str, stage: str, images: list[str]) -> list[dict]:
    """The official prompt of `stage` (see docs/prompts.md for each one's source and quirks)."""
    visual, think, total = record.visual_demo is not None, mode == "think", record.total_steps
    goal = record.task_goal
    shifts = " ".join(T.SHIFT.format(percent=official_percent(i, total)) for i in range(total + 1))
    steps = "\n\n".join(T.TEXT_STEP.format(index=k, step=step, percent=official_percent(k, total))
                         for k, step in enumerate(record.text_demo or (), start=1))
    observation = {"type": "image", "image": images[-1]}
    if stage == "eval":  # separate parts, no separators; the system prompt is also the first user part
        if visual:
            system = T.VISUAL_SYSTEM if think else T.VISUAL_SYSTEM_EVIDENCE
            head = [T.VISUAL_SYSTEM, T.EVAL_VISUAL_GOAL.format(goal=goal)] if think else []
            demo = [T.DEMO_INTRO] + [{"type": "image", "image": f} for f in images[:-1]] + [
                T.VISUAL_SHIFTS.format(shifts=shifts)]
            task = T.VISUAL_THINK_TASK if think else T.VISUAL_DIRECT_TASK
        else:
            system = T.TEXT_SYSTEM
            head = [T.TEXT_SYSTEM, T.GOAL.format(goal=goal)] if think else [T.OUR_GOAL.format(goal=goal)]
            demo = [T.TEXT_DEMO_INTRO_ARMS if think else T.DEMO_INTRO, steps]
            task = T.TEXT_THINK_TASK if think else T.TEXT_DIRECT_TASK
        user = _merged(head + demo + [T.CURRENT_INTRO, observation, task])
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]
    if stage == "sft":  # one user string, parts joined by "\n" (some start with "\n\n"); default system
        if visual:
            system, task = T.VISUAL_SYSTEM, T.VISUAL_THINK_TASK if think else T.SFT_VISUAL_DIRECT_TASK
        else:
            system, task = T.TEXT_SYSTEM, T.SFT_TEXT_THINK_TASK if think else T.SFT_TEXT_DIRECT_TASK
        text = "\n".join([system, "\n\n" + T.OUR_GOAL.format(goal=goal), "\n\n" + T.DEMO_INTRO,
                          shifts if visual else steps, "\n\n" + T.CURRENT_INTRO, T.IMAGE_TAG, "\n\n" + task])
    else:  # rl: sections joined by "\n\n\n"; EasyR1 adds no system message (its system_prompt is "")
        if visual:
            sections = [T.VISUAL_SYSTEM_EVIDENCE, T.GOAL.format(goal=goal), f"{T.DEMO_INTRO}\n{shifts}",
                        f"{T.CURRENT_INTRO}\n{T.IMAGE_TAG}", T.RL_VISUAL_THINK_TASK]
        else:
            sections = [T.RL_TEXT_SYSTEM, T.GOAL.format(goal=goal), f"{T.TEXT_DEMO_INTRO_ARMS}\n{steps}",
                        f"{T.CURRENT_INTRO}\n{T.IMAGE_TAG}", T.TEXT_THINK_TASK]
        text = "\n\n\n".join(sections)
    return [{"role": "user", "content": _with_images(text, images, record)}]


def target_answer(record: Record, mode: str) -> str | None:
    """Training target: the record's four-block response (think) or its score (direct)."""
    _check_mode(mode)
    return record.response if mode == "think" else format_percent(record.progress)


def chat_messages(chat: ChatRecord) -> list[dict]:
    """ChatRecord -> messages, each '<image>' placeholder becoming an image part (images in order)."""
    images = iter(chat.images)
    messages = []
    for role, content in chat.messages:
        pieces = content.split(IMAGE_PLACEHOLDER)
        if len(pieces) == 1:
            messages.append({"role": role, "content": content})
            continue
        parts = []
        for i, piece in enumerate(pieces):
            if i:
                parts.append({"type": "image", "image": next(images)})
            if piece:
                parts.append({"type": "text", "text": piece})
        messages.append({"role": role, "content": parts})
    return messages


def _parts(content) -> list[dict]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _with_system(messages: list[dict]) -> list[dict]:
    if messages and messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": DEFAULT_SYSTEM}] + list(messages)


# Qwen2.5-VL-Instruct's chat template (the Hub's chat_template.json), which render_text implements;
# the export writes it beside the built-in model (tests/test_prompts.py renders it with jinja).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)


def render_text(messages: list[dict], image_grid_thw=None, add_generation_prompt: bool = False) -> str:
    """The Qwen chat string; one image pad per image, or t*h*w/4 of them when grids are given."""
    out, image_idx = [], 0
    for msg in _with_system(messages):
        out.append(f"{IM_START}{msg['role']}\n")
        for part in _parts(msg["content"]):
            if part["type"] == "image":
                n = 1 if image_grid_thw is None else _image_tokens(image_grid_thw[image_idx])
                out.append(VISION_START + IMAGE_PAD * n + VISION_END)
                image_idx += 1
            else:
                out.append(part["text"])
        out.append(f"{IM_END}\n")
    if add_generation_prompt:
        out.append(f"{IM_START}assistant\n")
    return "".join(out)


def _image_tokens(grid_row) -> int:
    t, h, w = (int(x) for x in grid_row)
    return t * h * w // (MERGE_SIZE * MERGE_SIZE)


class Tokenized(NamedTuple):
    input_ids: np.ndarray  # int32 [L]
    loss_mask: np.ndarray  # int32 [L], 1 on answer tokens and their closing <|im_end|>
    truncated: int  # number of prompt text tokens removed to fit max_length


def tokenize_messages(tokenizer, messages: list[dict], image_grid_thw, max_length: int,
                      add_generation_prompt: bool = False, name: str = "sample") -> Tokenized:
    """Token ids and loss mask of a conversation; assistant messages are the targets."""
    grids = np.asarray(image_grid_thw, dtype=np.int64).reshape(-1, 3)
    pieces: list[tuple[list[int], str]] = []  # (ids, kind): kind in fixed | cut | image | target
    image_idx = 0
    for msg in _with_system(messages):
        role = msg["role"]
        is_target = role == "assistant"
        header: str | None = f"{IM_START}{role}\n"
        for part in _parts(msg["content"]):
            if part["type"] == "image":
                if image_idx >= len(grids):
                    raise ValueError(f"{name}: more images in the prompt than image_grid_thw rows ({len(grids)})")
                n = _image_tokens(grids[image_idx])
                image_idx += 1
                if header is not None:
                    pieces.append((tokenizer.encode(header), "fixed"))
                    header = None
                pieces.append(([tokenizer.vision_start_id] + [tokenizer.image_pad_id] * n
                               + [tokenizer.vision_end_id], "image"))
            elif header is not None and not is_target:
                # Header and text encoded together: a leading newline in the text merges as in the full string.
                joint, head = tokenizer.encode(header + part["text"]), tokenizer.encode(header)
                if joint[: len(head)] == head:
                    pieces += [(head, "fixed"), (joint[len(head):], "cut" if role == "user" else "fixed")]
                else:
                    pieces.append((joint, "fixed"))
                header = None
            else:
                if header is not None:
                    pieces.append((tokenizer.encode(header), "fixed"))
                    header = None
                kind = "target" if is_target else ("cut" if role == "user" else "fixed")
                pieces.append((tokenizer.encode(part["text"]), kind))
        if header is not None:
            pieces.append((tokenizer.encode(header), "fixed"))
        pieces.append(([tokenizer.eos_id], "target" if is_target else "fixed"))
        pieces.append((tokenizer.encode("\n"), "fixed"))
    if image_idx != len(grids):
        raise ValueError(f"{name}: {image_idx} images in the prompt but {len(grids)} image_grid_thw rows")
    if add_generation_prompt:
        pieces.append((tokenizer.encode(f"{IM_START}assistant\n"), "fixed"))

    truncated = _truncate(pieces, max_length, name)
    ids = np.fromiter((i for p, _ in pieces for i in p), dtype=np.int32)
    mask = np.fromiter((int(k == "target") for p, k in pieces for _ in p), dtype=np.int32)
    return Tokenized(ids, mask, truncated)


def _truncate(pieces: list[tuple[list[int], str]], max_length: int, name: str) -> int:
    """Cut user text from the middle of its longest runs until the sample fits; returns tokens removed."""
    excess = sum(len(p) for p, _ in pieces) - max_length
    if excess <= 0:
        return 0
    image_tokens = sum(len(p) for p, k in pieces if k == "image")
    if image_tokens > max_length:
        raise ValueError(f"{name}: its image tokens alone ({image_tokens}) exceed max_length {max_length}")
    uncuttable = sum(len(p) for p, k in pieces if k != "cut")
    if uncuttable > max_length:
        raise ValueError(f"{name}: {uncuttable} tokens of images, template, system text and answer exceed "
                         f"max_length {max_length} even with all user text removed")
    removed = excess
    while excess > 0:
        idx = max((i for i, (_, k) in enumerate(pieces) if k == "cut"), key=lambda i: len(pieces[i][0]))
        ids = pieces[idx][0]
        n = min(excess, len(ids))
        start = (len(ids) - n) // 2
        pieces[idx] = (ids[:start] + ids[start + n:], "cut")
        excess -= n
    logger.warning("%s: removed %d prompt text tokens to fit max_length %d", name, removed, max_length)
    return removed


def tokenize_record(tokenizer, record: Record, image_grid_thw, mode: str = "think", answer: str | None = None,
                    max_length: int = 8192, layout: str = "interleaved", stage: str | None = None) -> Tokenized:
    """A record's prompt plus `answer` as the target; with answer=None the prompt ends with the assistant header.
    stage None: "sft" with an answer, else "eval"."""
    if stage is None:
        stage = "eval" if answer is None else "sft"
    messages = build_messages(record, mode, layout=layout, stage=stage)
    name = f"{record.source}:{record.line} (id {record.id}, {record.observation})"
    if answer is None:
        return tokenize_messages(tokenizer, messages, image_grid_thw, max_length, add_generation_prompt=True, name=name)
    messages.append({"role": "assistant", "content": answer})
    return tokenize_messages(tokenizer, messages, image_grid_thw, max_length, name=name)


def tokenize_chat(tokenizer, chat: ChatRecord, image_grid_thw, max_length: int = 8192,
                  with_answer: bool = True) -> Tokenized:
    """An SFT chat record; every assistant message is a target. with_answer=False: a generation
    prompt, the conversation before its last (assistant) message followed by the assistant header."""
    messages, name = chat_messages(chat), f"{chat.source}:{chat.line}"
    if with_answer:
        return tokenize_messages(tokenizer, messages, image_grid_thw, max_length, name=name)
    last = messages[-1]
    if last["role"] != "assistant" or not isinstance(last["content"], str):
        raise ValueError(f"{name}: a generation prompt drops the last message, which must be the assistant's "
                         f"answer without images")
    return tokenize_messages(tokenizer, messages[:-1], image_grid_thw, max_length, add_generation_prompt=True,
                             name=name)
