"""Teacher models for data construction, and guided reasoning completion (paper appendix A).

A teacher is any callable `teacher(prompts) -> texts`: one prompt is a list of chat messages in
the Hugging Face multimodal layout (content a string or a list of {"type": "text"} /
{"type": "image", "image": path or PIL image} parts), one text comes back per prompt. Two
backends: `VllmTeacher` (offline vllm.LLM) and `JaxTeacher` (host batches for this project's
sampler; the device call is injected so that data_construction never imports JAX).

Guided completion (docs/data_construction.md): the teacher gets the official CoT-generation prompt
(eval/qwen25vl/codes/prompts/{visual,text}_demo_prompt_cot_gen.py, laid out as the 72B runner
run_*_demo_single_cot_gen.py sends it: no system message, one user message) with the "Ground-truth
Partial Response" hint that gives `<ref>` as a sentence ("The No. 3 demo image is the most relevant
frame") and the score; unanswerable records get the official nega prompts (visual_nega_prompt.py,
text_nega_prompt.py) whose hint is all n/a. The teacher fills in the think blocks. Acceptance rules
(`accept`):
- "official" (default): the runner's status "success": a `<score>` tag whose content is n/a / na
  (any case) or a number (an optional trailing %); nothing else is checked [parse_error];
- "match": official, and the ref and score the runner writes equal its ground-truth fields (what
  every line of the released CoT meta files shows) [ref_mismatch, score_mismatch];
- "strict": the project's own check against the ground truth: the four blocks exactly once each,
  `<ref>` digits equal to closest_idx (n/a when unanswerable), the score written with '%' and
  within 0.005 percentage points of the label [format_invalid, ref_mismatch, score_mismatch].
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from data_pipeline.image_processor import preprocess
from data_pipeline.jsonl import JsonlAppender, read_appended
from data_pipeline import prompt_texts as texts
from data_pipeline.parsing import NA, NUMBER, official_percent_text, official_runner_fields, read_ref, read_reward_score, strict_format_ok
from data_pipeline.prompts import build_messages, format_percent, official_percent, render_text, tokenize_messages
from data_pipeline.records import IMAGE_PLACEHOLDER, Record, record_image_path

logger = logging.getLogger(__name__)

SCORE_TOLERANCE = 0.005  # percentage points
ACCEPT_RULES = ("official", "match", "strict")
REJECT_REASONS = ("parse_error", "format_invalid", "ref_mismatch", "score_mismatch", "engine_error")
_PERCENT_SCORE = re.compile(r"<score>\s*[+-]?\d+(?:\.\d+)?\s*%\s*</score>")


# ---- backends ----

@dataclass(frozen=True)
class TeacherSampling:
    temperature: float = 0.6
    top_p: float = 0.9
    top_k: int = 50
    max_tokens: int = 4096
    seed: int = 0


def prompt_images(messages: list[dict]) -> list:
    """The image parts of a prompt in order (paths or PIL images, as given)."""
    return [part["image"] for m in messages if not isinstance(m["content"], str)
            for part in m["content"] if part["type"] == "image"]


def _pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    with Image.open(image) as f:
        return f.convert("RGB")


class VllmTeacher:
    """Offline vLLM: the Qwen chat string (one image pad per image, vLLM expands it) plus the images."""

    def __init__(self, llm, sampling_params):
        self.llm, self.sampling_params = llm, sampling_params

    @classmethod
    def load(cls, model: str, tensor_parallel_size: int = 1, max_images: int = 16,
             sampling: TeacherSampling = TeacherSampling(), **engine_kwargs) -> "VllmTeacher":
        try:
            import vllm
        except ImportError as e:
            raise ImportError("the vllm teacher needs vLLM: pip install -e .[tools]") from e
        llm = vllm.LLM(model=model, tensor_parallel_size=tensor_parallel_size,
                       limit_mm_per_prompt={"image": max_images}, seed=sampling.seed, **engine_kwargs)
        params = vllm.SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                                     max_tokens=sampling.max_tokens)  # the engine seed makes runs repeatable
        return cls(llm, params)

    def __call__(self, prompts: list[list[dict]]) -> list[str]:
        requests = []
        for messages in prompts:
            request = {"prompt": render_text(messages, add_generation_prompt=True)}
            images = prompt_images(messages)
            if images:
                request["multi_modal_data"] = {"image": [_pil(i) for i in images]}
            requests.append(request)
        outputs = self.llm.generate(requests, self.sampling_params, use_tqdm=False)
        if len(outputs) != len(requests):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(requests)} prompts")
        return [o.outputs[0].text for o in outputs]


class JaxTeacher:
    """Builds right-padded host batches (input_ids, attention_mask, pixel_values, image_grid_thw) with
    the training tokenization and image preprocessing, and hands them to `generate_fn(batch) -> texts`
    (progress_jax.sampling.generate wrapped by the tool)."""

    def __init__(self, generate_fn, tokenizer, max_prompt_length: int = 16384, min_pixels: int = 3136,
                 max_pixels: int = 12845056):
        self.generate_fn, self.tokenizer = generate_fn, tokenizer
        self.max_prompt_length, self.min_pixels, self.max_pixels = max_prompt_length, min_pixels, max_pixels

    def batch(self, prompts: list[list[dict]]) -> dict:
        rows, pixels, grids = [], [], []
        for i, messages in enumerate(prompts):
            images = prompt_images(messages)
            if images:
                pv, grid = preprocess(images, min_pixels=self.min_pixels, max_pixels=self.max_pixels)
                pixels.append(pv)
                grids.append(grid)
            else:
                grid = np.zeros((0, 3), np.int64)
            rows.append(tokenize_messages(self.tokenizer, messages, grid, self.max_prompt_length,
                                          add_generation_prompt=True, name=f"teacher prompt {i}").input_ids)
        L = max(len(r) for r in rows)
        ids = np.full((len(rows), L), self.tokenizer.pad_id, np.int32)
        mask = np.zeros((len(rows), L), np.int32)
        for b, r in enumerate(rows):
            ids[b, :len(r)], mask[b, :len(r)] = r, 1
        batch = {"input_ids": ids, "attention_mask": mask}
        if pixels:
            batch["pixel_values"] = np.concatenate(pixels).astype(np.float32)
            batch["image_grid_thw"] = np.concatenate(grids).astype(np.int32)
        return batch

    def __call__(self, prompts: list[list[dict]]) -> list[str]:
        texts = list(self.generate_fn(self.batch(prompts)))
        if len(texts) != len(prompts):
            raise RuntimeError(f"generate_fn returned {len(texts)} texts for {len(prompts)} prompts")
        return texts


# ---- resumable JSONL output ----

def sample_key(record: Record) -> str:
    """Stable key of a benchmark/RL sample across runs: file stem, trajectory id, observation."""
    return f"{record.source}|{record.id}|{record.observation}"


# ---- guided reasoning completion ----

def _answer_text(record: Record) -> tuple[str, str]:
    if not record.answerable:
        return "n/a", "n/a"
    return str(record.closest_idx), format_percent(record.progress)


def cot_prompt(record: Record, image_root: str | None, original_step: str = "") -> list[dict]:
    """The official CoT-generation prompt with its ground-truth hint (module docstring): the cot_gen
    prompt for an answerable record, the nega prompt for an unanswerable one (text: `original_step`
    is the step its unedited observation showed, "" when unknown, as the official builder defaults)."""
    def image(file: str) -> dict:
        return {"type": "image", "image": record_image_path(image_root, record, file) if image_root else file}

    def text(value: str) -> dict:
        return {"type": "text", "text": value}

    visual, nega = record.kind == "visual", not record.answerable
    train = texts.NEGA_TEXT_INSTRUCTION_TRAIN if nega and not visual else texts.COT_INSTRUCTION_TRAIN
    system = texts.VISUAL_SYSTEM if visual else texts.TEXT_SYSTEM
    goal = "\n\n" + texts.OUR_GOAL.format(goal=record.task_goal)
    parts = [text(train + system + goal), text(texts.DEMO_INTRO)]
    if visual:
        parts += [image(f) for f in record.visual_demo]
        shifts = " ".join(texts.SHIFT.format(percent=official_percent(i, record.total_steps))
                          for i in range(record.total_steps + 1))
        parts += [text(texts.VISUAL_SHIFTS.format(shifts=shifts)), text(texts.CURRENT_INTRO)]
    else:
        steps = "\n\n".join(texts.TEXT_STEP.format(index=i, step=step, percent=official_percent(i, record.total_steps))
                             for i, step in enumerate(record.text_demo, start=1))
        parts += [text(steps), text(texts.COT_TEXT_CURRENT)]
    parts.append(image(record.observation))
    if nega and visual:
        parts += [text(texts.NEGA_VISUAL_TASK), text(texts.NEGA_HINT_VISUAL)]
    elif nega:  # text_nega_prompt.py puts its hint before the instructions
        parts += [text(texts.NEGA_HINT_TEXT.format(original_step=original_step)), text(texts.COT_TEXT_TASK)]
    else:
        ref = (texts.COT_REF_VISUAL if visual else texts.COT_REF_TEXT).format(index=record.closest_idx)
        hint = texts.COT_HINT_VISUAL if visual else texts.COT_HINT_TEXT
        parts += [text(texts.COT_VISUAL_TASK if visual else texts.COT_TEXT_TASK),
                  text(hint.format(ref=ref, score=official_percent_text(record.progress)))]
    return [{"role": "user", "content": parts}]


def _check_official(record: Record, text: str, match: bool) -> str | None:
    ref, score, parsed = official_runner_fields(text)
    if not parsed:
        return "parse_error"
    if match:
        if ref != ("n/a" if record.closest_idx is None else str(record.closest_idx)):
            return "ref_mismatch"
        if score != ("n/a" if record.progress is None else official_percent_text(record.progress)):
            return "score_mismatch"
    return None


def _check_strict(record: Record, text: str) -> str | None:
    if not strict_format_ok(text):
        return "format_invalid"
    ref_status, ref = read_ref(text)
    if record.answerable:
        if ref_status != NUMBER or ref != record.closest_idx:
            return "ref_mismatch"
    elif ref_status != NA:
        return "ref_mismatch"
    score_status, score = read_reward_score(text)
    if record.answerable:
        if (score_status != NUMBER or not _PERCENT_SCORE.search(text)
                or abs(score - 100.0 * record.progress) > SCORE_TOLERANCE):
            return "score_mismatch"
    elif score_status != NA:
        return "score_mismatch"
    return None


def check_cot(record: Record, text: str, accept: str = "official") -> str | None:
    """None when the answer is kept under rule `accept`, else the reject reason (module docstring)."""
    if accept == "strict":
        return _check_strict(record, text)
    if accept not in ACCEPT_RULES:
        raise ValueError(f"unknown acceptance rule {accept!r}; expected one of {ACCEPT_RULES}")
    return _check_official(record, text, match=accept == "match")


def sft_chat_record(record: Record, answer: str) -> dict:
    """The SFT chat line read by records.load_chat_records: the normal think prompt (no hint), the
    answer, images relative to the image root ({id}/{file}), plus provenance under "meta"."""
    messages = []
    for m in build_messages(record, "think") + [{"role": "assistant", "content": answer}]:
        content = m["content"]
        if not isinstance(content, str):
            content = "".join(IMAGE_PLACEHOLDER if p["type"] == "image" else p["text"] for p in content)
        messages.append({"role": m["role"], "content": content})
    images = [f"{record.id}/{f}" for f in list(record.visual_demo or ()) + [record.observation]]
    ref, score = _answer_text(record)
    return {"messages": messages, "images": images,
            "meta": {"key": sample_key(record), "id": record.id, "ref": ref, "score": score}}



# ---- batched, resumable runs ----

class TeacherRun:
    """Calls a teacher batch by batch with a progress bar. A batch whose call raises counts as an
    engine error for each of its samples (they are retried by the next run); after
    `max_consecutive_errors` failing batches in a row the run stops, as the engine is likely broken."""

    def __init__(self, teacher, batch_size: int, total: int, desc: str, progress: bool = True,
                 max_consecutive_errors: int = 3):
        from tqdm import tqdm

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.teacher, self.batch_size, self.max_errors = teacher, batch_size, max_consecutive_errors
        self.bar = tqdm(total=total, desc=desc, disable=not progress)
        self._errors = 0

    def batches(self, items: list):
        """Yields (batch, texts, error): texts None and error a message when the call failed."""
        for start in range(0, len(items), self.batch_size):
            batch = items[start:start + self.batch_size]
            prompts = [prompt for _, prompt in batch]
            try:
                texts, error = self.teacher(prompts), None
                self._errors = 0
            except Exception as e:  # an engine failure must not lose the run; it is counted and logged
                logger.exception("teacher call failed for %d prompts", len(prompts))
                texts, error = None, f"{type(e).__name__}: {e}"
                self._errors += 1
            yield [item for item, _ in batch], texts, error
            self.bar.update(len(batch))
            if self._errors >= self.max_errors:
                raise RuntimeError(f"{self._errors} teacher batches failed in a row; last error: {error}")

    def close(self) -> None:
        self.bar.close()


def rejected_keys(rejects_path: str) -> set[str]:
    """Keys an earlier run rejected for a reason other than an engine error (those are retried). A
    half-written last line (killed run) is left out, so its sample is redone (data_pipeline/jsonl.py)."""
    return {obj["key"] for _, obj in read_appended(rejects_path, missing_ok=True) if obj.get("reason") != "engine_error"}


def done_keys(out_path: str, rejects_path: str | None, out_key) -> set[str]:
    """Keys already settled: written to the output (a half-written last line is not), or in rejected_keys."""
    keys = {out_key(obj) for _, obj in read_appended(out_path, missing_ok=True)}
    if rejects_path:
        keys |= rejected_keys(rejects_path)
    return keys


def rejects_path_for(out_path: str) -> str:
    return os.path.splitext(out_path)[0] + ".rejected.jsonl"


def run_guided_completion(records: list[Record], image_root: str | None, teacher, out_path: str,
                          batch_size: int = 8, rejects_path: str | None = None, progress: bool = True,
                          accept: str = "official", original_steps: dict[str, str] | None = None) -> dict:
    """Guided reasoning completion over records; appends kept SFT chat lines to out_path and rejected
    answers (key, reason, text) to rejects_path. original_steps: sample_key -> the step an unanswerable
    text record's unedited observation showed (the text nega hint). Returns counts: kept, one per reject reason, skipped
    (settled by an earlier run), duplicate (a key seen twice in the input)."""
    if accept not in ACCEPT_RULES:
        raise ValueError(f"unknown acceptance rule {accept!r}; expected one of {ACCEPT_RULES}")
    rejects_path = rejects_path or rejects_path_for(out_path)
    settled = done_keys(out_path, rejects_path, lambda obj: obj["meta"]["key"])
    counts = dict.fromkeys(("kept", *REJECT_REASONS, "skipped", "duplicate"), 0)
    todo, seen = [], set()
    for r in records:
        key = sample_key(r)
        if key in seen:
            counts["duplicate"] += 1
        elif key in settled:
            counts["skipped"] += 1
        else:
            todo.append((r, cot_prompt(r, image_root, (original_steps or {}).get(key, ""))))
        seen.add(key)
    run = TeacherRun(teacher, batch_size, len(todo), "guided CoT", progress)
    with JsonlAppender(out_path) as out, JsonlAppender(rejects_path) as rejects:
        try:
            for batch, answers, error in run.batches(todo):
                for i, record in enumerate(batch):
                    text = None if answers is None else answers[i].strip()
                    reason = "engine_error" if text is None else check_cot(record, text, accept)
                    if reason is None:
                        out.write(sft_chat_record(record, text))
                        counts["kept"] += 1
                    else:
                        rejects.write({"key": sample_key(record), "reason": reason, "text": text, "error": error})
                        counts[reason] += 1
                run.bar.set_postfix(kept=counts["kept"], rejected=sum(counts[r] for r in REJECT_REASONS))
        finally:
            run.close()
    return counts
