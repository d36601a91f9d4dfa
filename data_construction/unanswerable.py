"""Unanswerable samples (paper appendix A; docs/data_construction.md): teacher object swaps in text
demos, teacher-proposed image edits, and the human review queue that decides which edited samples
enter the benchmark. Each teacher step has two protocols; "official" is the default.

Text swap, protocol "official" (eval/qwen25vl/codes/prompts/text_object_replacement_prompt.py, run by
run_text_object_replacement_single.py): one call per record; system prompt " ", then the
observation image and the prompt (prompt_texts.SWAP_PROMPT). The answer is kept when
`<edited_goal>` ("quotes" optional, no `<` or `"` inside) and `<edited_demo>` (a JSON list) parse,
nothing else is checked [parse_error]; the record is the text-normal one with the new goal and steps,
closest_idx / progress_score "n/a" and total_steps a string, in the key order of the official
text-unanswerable files.

Text swap, protocol "object_tags" (this project's earlier one, stricter): one call per trajectory,
the observation image of its first record and a prompt asking for

    <original_object>red cube</original_object><new_object>banana</new_object>
    <goal>...</goal><steps><step>...</step>...</steps>

An answer is kept only if (reject reason in brackets):
- every tag is there once and the steps are inside <steps> [xml_invalid]; as many steps as before [step_count];
- the original object (the phrase, matched as whole words, case-insensitive, plural -s/-es allowed)
  occurs in the original goal or a step [original_object_absent];
- the new object is a plausible short noun phrase: 1-4 words of letters (hyphen and apostrophe
  allowed), different from the original, with a different head noun (last word), not already named
  in the original texts, and in the allow-list when one is given [new_object_implausible];
- arm markers such as [left], [right], [towards] are the same, in the same order, in every text [markers_changed];
- every text that named the original object no longer names it and names the new one [object_not_replaced];
- nothing else changed: with the new object mapped back to the original, every text is at least
  90% similar to its original (difflib ratio, lower case) [unrelated_change].

Image edit, stage 1, protocol "official" (eval/qwen25vl/codes/prompts/adversarial_editing_prompt.py,
run by run_adversarial_editing_single.py): system prompt EDIT_SYSTEM, then the observation image and
the prompt naming the goal, the numbered steps (when known) and the matching step; the answer has
<strategy_think>, <strategy>, <prompt_think>, <prompt>, and is kept when <strategy> and <prompt> are
there [parse_error] (a prompt over 20 words is only counted, as the official runner does).
Protocol "strategy_tags" (the earlier one): <strategy>S</strategy><instruction>I</instruction>, S one
of STRATEGIES (case, spaces, hyphens and slashes are normalised: "color change" -> color_change)
[strategy_invalid], I one line of 1-20 words [instruction_invalid]. Stage 2 (image_edit.py) applies
it; the record becomes official visual-unanswerable (closest_idx, progress_score, delta "n/a",
observation "{stem}_edit.jpg"), and a review-queue line carries it to the review app.

Review. Decisions are JSONL lines {"key", "decision": "keep" | "discard", "time"}; the last
decision of a key wins. `apply_decisions` writes the kept records in queue order.
"""
from __future__ import annotations

import difflib
import json
import os
import re
import time
from dataclasses import dataclass

from data_pipeline import prompt_texts as texts
from data_construction.image_edit import EditError, EditProposal
from data_pipeline.jsonl import JsonlAppender, read_appended, write_jsonl
from data_pipeline.paths import atomic_output
from data_pipeline.prompts import progress_label
from data_pipeline.records import Record, record_image_path

PROTOCOLS = {"text": ("official", "object_tags"), "image": ("official", "strategy_tags")}
TEXT_REASONS = ("parse_error", "xml_invalid", "step_count", "original_object_absent", "new_object_implausible", "markers_changed",
                "object_not_replaced", "unrelated_change")
STRATEGIES = ("color_change", "object_replacement", "occlusion_removal")
IMAGE_REASONS = ("parse_error", "xml_invalid", "strategy_invalid", "instruction_invalid")
DECISIONS = ("keep", "discard")
MAX_INSTRUCTION_WORDS = 20
MAX_OBJECT_WORDS = 4
SIMILARITY = 0.9
_MARKER = re.compile(r"\[[^\[\]]+\]")
_OBJECT_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


class Rejected(ValueError):
    """A teacher answer that fails validation; `reason` is one of the documented codes."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


def _tags(text: str, name: str) -> list[str]:
    return [m.strip() for m in re.findall(rf"<{name}>(.*?)</{name}>", text, re.DOTALL)]


def _one_tag(text: str, name: str) -> str:
    found = _tags(text, name)
    if len(found) != 1:
        raise Rejected("xml_invalid", f"expected one <{name}>...</{name}>, found {len(found)}")
    return found[0]


# ---- official layouts ----

def _official_record(record: Record, **fields) -> dict:
    """The record as an official unanswerable JSONL object: the fields in the order of the released
    text-/visual-unanswerable files, total_steps a string, the answer fields n/a."""
    if record.kind == "text":
        obj = {"id": record.id, "task_goal": fields.get("task_goal", record.task_goal),
               "text_demo": list(fields.get("text_demo", record.text_demo)), "total_steps": str(record.total_steps),
               "stage_to_estimate": record.observation, "closest_idx": "n/a", "progress_score": "n/a"}
    else:
        obj = {"id": record.id, "task_goal": record.task_goal, "visual_demo": list(record.visual_demo),
               "total_steps": str(record.total_steps), "stage_to_estimate": [fields["stage_to_estimate"]],
               "closest_idx": "n/a", "delta": "n/a", "progress_score": "n/a"}
    if record.data_source is not None:
        obj["data_source"] = record.data_source
    if record.camera_combination is not None:
        obj["camera_combination"] = record.camera_combination
    return obj


def edit_file_name(observation: str) -> str:
    """camera_front_0223.jpg -> camera_front_0223_edit.jpg (always JPEG)."""
    return os.path.splitext(observation)[0] + "_edit.jpg"


def visual_unanswerable_record(record: Record) -> dict:
    return _official_record(record, stage_to_estimate=edit_file_name(record.observation))


# ---- text swap ----

@dataclass(frozen=True)
class TextSwap:
    original_object: str
    new_object: str
    goal: str
    steps: tuple[str, ...]


def _image_part(image_root: str | None, record: Record) -> dict:
    if image_root is None:
        raise ValueError("the teacher prompt shows the observation image: an image root is required")
    return {"type": "image", "image": record_image_path(image_root, record, record.observation)}


def official_swap_prompt(record: Record, image_root: str | None) -> list[dict]:
    """text_object_replacement_prompt.py: the steps as '["' + '", "'.join(steps) + '"]' (no escaping)."""
    steps = '["' + '", "'.join(record.text_demo) + '"]'
    text = texts.SWAP_PROMPT.format(goal=record.task_goal, steps=steps)
    return [{"role": "system", "content": texts.SWAP_SYSTEM},
            {"role": "user", "content": [_image_part(image_root, record), {"type": "text", "text": text}]}]


_EDITED_GOAL = re.compile(r'<edited_goal>\s*"?([^"<]+)"?\s*</edited_goal>', re.DOTALL)
_EDITED_DEMO = re.compile(r"<edited_demo>\s*(\[.*?\])\s*</edited_demo>", re.DOTALL)


def parse_official_swap(text: str) -> tuple[str, list]:
    """(goal, steps) as run_text_object_replacement_single.py reads them; Rejected("parse_error") when
    either is missing or the steps are not a JSON list (their items are not checked)."""
    goal = _EDITED_GOAL.search(text)
    demo = _EDITED_DEMO.search(text)
    if goal is None or demo is None:
        raise Rejected("parse_error", "no " + ("<edited_goal>" if goal is None else "<edited_demo> [...]"))
    try:
        steps = json.loads(demo.group(1).strip())
    except json.JSONDecodeError as e:
        raise Rejected("parse_error", f"<edited_demo> is not JSON: {e}") from None
    if not isinstance(steps, list):
        raise Rejected("parse_error", "<edited_demo> is not a list")
    return goal.group(1).strip(), steps


def text_swap_prompt(goal: str, steps, image: dict | None = None) -> list[dict]:
    """The object_tags protocol's prompt; `image` (an image part) is shown first when given."""
    listing = "\n".join(f"Step {k}: {s}" for k, s in enumerate(steps, start=1))
    text = (
        f"Task goal: {goal}\n\nSteps of the demonstration:\n{listing}\n\n"
        "Identify the object that the robot manipulates in this task, and replace it with a different, everyday "
        "object that does not appear in the task. Rewrite the goal and every step with the new object: keep the "
        "sentence structure, the verbs, every other object and every arm marker such as [left] or [right] exactly "
        "as they are; change only the words naming the manipulated object. Write the original object exactly as "
        "it is written in the text. Answer in exactly this format:\n"
        "<original_object>the object as written</original_object><new_object>the new object</new_object>"
        f"<goal>the rewritten goal</goal><steps>{'<step>...</step>' * 2}... one <step> per step, "
        f"{len(steps)} in all</steps>"
    )
    content = text if image is None else [image, {"type": "text", "text": text}]
    return [{"role": "system", "content": "You edit robot task descriptions precisely."},
            {"role": "user", "content": content}]


def parse_text_swap(text: str) -> TextSwap:
    original, new, goal = (_one_tag(text, t) for t in ("original_object", "new_object", "goal"))
    steps_block = _one_tag(text, "steps")
    steps = tuple(_tags(steps_block, "step"))
    if not steps or len(_tags(text, "step")) != len(steps):
        raise Rejected("xml_invalid", "every <step> must be inside the one <steps> block")
    return TextSwap(original, new, goal, steps)


def _mentions(text: str, phrase: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(phrase)}(?:e?s)?(?![\w-])", text, re.IGNORECASE) is not None


def _head(phrase: str) -> str:
    return phrase.split()[-1].lower()


def validate_text_swap(goal: str, steps, swap: TextSwap, allowed_objects=None) -> None:
    """Raises Rejected with the first failing check (module docstring); returns None when kept."""
    steps = list(steps)
    if len(swap.steps) != len(steps):
        raise Rejected("step_count", f"{len(swap.steps)} steps, expected {len(steps)}")
    old_texts, new_texts = [goal] + steps, [swap.goal] + list(swap.steps)
    orig, new = " ".join(swap.original_object.split()), " ".join(swap.new_object.split())
    if not orig or not any(_mentions(t, orig) for t in old_texts):
        raise Rejected("original_object_absent", f"{orig!r} is not named in the goal or any step")
    words = new.split()
    if (not 1 <= len(words) <= MAX_OBJECT_WORDS or not all(_OBJECT_WORD.fullmatch(w) for w in words)
            or new.lower() == orig.lower() or _head(new) == _head(orig)
            or any(_mentions(t, new) for t in old_texts)
            or (allowed_objects is not None and new.lower() not in {a.lower() for a in allowed_objects})):
        raise Rejected("new_object_implausible", f"{new!r} (original {orig!r})")
    for i, (old, rewritten) in enumerate(zip(old_texts, new_texts)):
        where = "goal" if i == 0 else f"step {i}"
        if _MARKER.findall(old) != _MARKER.findall(rewritten):
            raise Rejected("markers_changed", f"{where}: {_MARKER.findall(old)} -> {_MARKER.findall(rewritten)}")
        if _mentions(old, orig) and (_mentions(rewritten, orig) or not _mentions(rewritten, new)):
            raise Rejected("object_not_replaced", f"{where}: {rewritten!r}")
        mapped = re.sub(rf"(?<![\w-]){re.escape(new)}(?![\w-])", orig, rewritten, flags=re.IGNORECASE)
        ratio = difflib.SequenceMatcher(None, old.lower(), mapped.lower()).ratio()
        if ratio < SIMILARITY:
            raise Rejected("unrelated_change", f"{where}: {old!r} -> {rewritten!r} (similarity {ratio:.2f})")


def text_unanswerable_record(record: Record, goal: str, steps) -> dict:
    return _official_record(record, task_goal=goal, text_demo=steps)


# ---- image edit strategy ----

def official_edit_prompt(record: Record, image_root: str, steps=None) -> list[dict]:
    """adversarial_editing_prompt.py. The matching step is closest_idx for a text record; for a visual
    record key frame k ends step k - 1, so step max(k - 1, 1). Without steps the official builder
    writes an empty list and "Unknown instruction"."""
    steps = list(steps or [])
    index = record.closest_idx if record.kind == "text" else max(record.closest_idx - 1, 1)
    if 0 < index <= len(steps):
        step = steps[index - 1]
    else:
        step = steps[0] if steps else texts.EDIT_UNKNOWN_STEP
    listing = "\n".join(f"{i}. {s}" for i, s in enumerate(steps, start=1))
    text = texts.EDIT_PROMPT.format(goal=record.task_goal, steps=listing, index=index, step=step)
    return [{"role": "system", "content": texts.EDIT_SYSTEM},
            {"role": "user", "content": [_image_part(image_root, record), {"type": "text", "text": text}]}]


_STRATEGY = re.compile(r"<strategy>(.*?)</strategy>", re.DOTALL)
_PROMPT = re.compile(r"<prompt>(.*?)</prompt>", re.DOTALL)


def _strategy_name(text: str) -> str:
    return re.sub(r"[\s/-]+", "_", text.lower())


def parse_official_edit(text: str) -> EditProposal:
    """As run_adversarial_editing_single.py reads it: the first <strategy> and <prompt>, stripped, both
    required [parse_error]; nothing else is checked. A strategy named in the prompt ("Color Change")
    is stored by its STRATEGIES name, any other as written."""
    strategy, prompt = _STRATEGY.search(text), _PROMPT.search(text)
    if strategy is None or prompt is None:
        raise Rejected("parse_error", "no <strategy>" if strategy is None else "no <prompt>")
    name = strategy.group(1).strip()
    return EditProposal(_strategy_name(name) if _strategy_name(name) in STRATEGIES else name, prompt.group(1).strip())


def edit_strategy_prompt(record: Record, image_root: str, steps=None) -> list[dict]:
    """Observation image, goal, steps (text steps when known, else the key-frame progress values) and the
    step the observation matches; asks for one edit in XML."""
    k = record.closest_idx
    if steps:
        listing = "\n".join(f"Step {i}: {s}" for i, s in enumerate(steps, start=1))
        matching = f"The observation is closest to key frame {k} of the demonstration"
        matching += f", the end of step {k - 1}: {steps[k - 2]}" if k >= 2 and k - 2 < len(steps) else ", the start"
    else:
        listing = "(only key frames, at " + ", ".join(f"{progress_label(i, record.total_steps)}%"
                                                      for i in range(record.num_demos)) + ")"
        matching = f"The observation is closest to key frame {k} of the demonstration"
    text = (
        f"\n\nTask goal: {record.task_goal}\n\nSteps of the demonstration:\n{listing}\n\n{matching}.\n\n"
        "Propose one edit of this image after which the image no longer fits the task (so its progress cannot be "
        "estimated) while still looking natural. Choose one strategy: color_change (change the color of the "
        "manipulated object), object_replacement (replace it by a different object) or occlusion_removal (hide "
        f"it or remove it). Write an image-editing instruction of at most {MAX_INSTRUCTION_WORDS} words. "
        "Answer in exactly this format:\n<strategy>the strategy</strategy><instruction>the instruction</instruction>"
    )
    image = record_image_path(image_root, record, record.observation)
    return [{"role": "system", "content": "You design image edits for a robot-manipulation benchmark."},
            {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]


def parse_edit_strategy(text: str) -> EditProposal:
    strategy = _strategy_name(_one_tag(text, "strategy"))
    if strategy not in STRATEGIES:
        raise Rejected("strategy_invalid", f"{strategy!r} is not one of {STRATEGIES}")
    instruction = " ".join(_one_tag(text, "instruction").split())
    n = len(instruction.split())
    if not 1 <= n <= MAX_INSTRUCTION_WORDS or "\n" in _one_tag(text, "instruction").strip() or "<" in instruction:
        raise Rejected("instruction_invalid", f"{n} words (1-{MAX_INSTRUCTION_WORDS}, one line, no tags): "
                                              f"{instruction!r:.200}")
    return EditProposal(strategy, instruction)


# ---- review queue and decisions ----

def queue_entry(key: str, record: Record, image_root: str, proposal: EditProposal, steps=None) -> dict:
    """One line of the review queue: what the reviewer sees, and the record the benchmark gets if kept."""
    return {"key": key, "record": visual_unanswerable_record(record),
            "original_image": record_image_path(image_root, record, record.observation),
            "edited_image": record_image_path(image_root, record, edit_file_name(record.observation)),
            "goal": record.task_goal, "steps": list(steps) if steps else [], "matching_step": record.closest_idx,
            "strategy": proposal.strategy, "instruction": proposal.instruction}


def _read_lines(path: str, required: tuple[str, ...]) -> list[dict]:
    # a half-written last line (killed writer) is left out: a decision there was not made
    out = []
    for n, obj in read_appended(path):
        for key in required:
            if key not in obj:
                raise ValueError(f"{path}:{n}: field '{key}' missing")
        out.append(obj)
    return out


def load_queue(path: str) -> list[dict]:
    entries = _read_lines(path, ("key", "record", "original_image", "edited_image", "strategy", "instruction"))
    seen = set()
    for e in entries:
        if e["key"] in seen:
            raise ValueError(f"{path}: key {e['key']!r} appears twice")
        seen.add(e["key"])
    return entries


def load_decisions(path: str) -> dict[str, str]:
    """key -> decision, the last line of a key winning; a missing file means no decisions yet."""
    if not os.path.exists(path):
        return {}
    decisions = {}
    for n, obj in enumerate(_read_lines(path, ("key", "decision")), start=1):
        if obj["decision"] not in DECISIONS:
            raise ValueError(f"{path}: decision {n}: field 'decision' must be one of {DECISIONS}, "
                             f"got {obj['decision']!r}")
        decisions[obj["key"]] = obj["decision"]
    return decisions


def decision_line(key: str, decision: str) -> dict:
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
    return {"key": key, "decision": decision, "time": time.time()}


def first_undecided(queue: list[dict], decisions: dict[str, str]) -> int | None:
    return next((i for i, e in enumerate(queue) if e["key"] not in decisions), None)


def apply_decisions(queue: list[dict], decisions: dict[str, str], out_path: str,
                    allow_undecided: bool = False) -> dict:
    """Writes the kept records in queue order; returns counts. Refuses while samples are undecided unless
    allow_undecided (they are then left out, and counted)."""
    keys = {e["key"] for e in queue}
    unknown = sorted(set(decisions) - keys)
    if unknown:
        raise ValueError(f"{len(unknown)} decisions name keys that are not in the queue, e.g. {unknown[:3]}")
    undecided = [e["key"] for e in queue if e["key"] not in decisions]
    if undecided and not allow_undecided:
        raise ValueError(f"{len(undecided)} of {len(queue)} samples are undecided (first: {undecided[0]!r}); "
                         "review them or pass allow_undecided")
    kept = [e["record"] for e in queue if decisions.get(e["key"]) == "keep"]
    write_jsonl(out_path, kept)
    return {"kept": len(kept), "discarded": sum(d == "discard" for d in decisions.values()),
            "undecided": len(undecided)}


# ---- batched, resumable runs ----

def _check_protocol(kind: str, protocol: str) -> None:
    if protocol not in PROTOCOLS[kind]:
        raise ValueError(f"unknown {kind} protocol {protocol!r}; expected one of {PROTOCOLS[kind]}")


def _text_normal(records: list[Record]) -> None:
    for r in records:
        if r.kind != "text" or not r.answerable:
            raise ValueError(f"{r.source}:{r.line}: text swaps need answerable text records (text-normal), "
                             f"id {r.id} is {'unanswerable' if not r.answerable else 'visual'}")


def run_text_swaps(records: list[Record], teacher, out_path: str, batch_size: int = 8,
                   rejects_path: str | None = None, allowed_objects=None, progress: bool = True,
                   image_root: str | None = None, protocol: str = "official") -> dict:
    """Text swaps over text-normal records under `protocol` (module docstring); appends official
    text-unanswerable lines to out_path and rejected answers to rejects_path; resumable.

    official: one call per record (its own observation image); counts kept / per reason, records
    written, skipped (settled by an earlier run), duplicate (an (id, observation) seen twice).
    object_tags: see _run_object_tag_swaps."""
    _check_protocol("text", protocol)
    _text_normal(records)
    if protocol == "object_tags":
        return _run_object_tag_swaps(records, teacher, out_path, batch_size, rejects_path, allowed_objects,
                                     progress, image_root)
    from data_construction.teacher import TeacherRun, rejected_keys, rejects_path_for, sample_key

    rejects_path = rejects_path or rejects_path_for(out_path)
    written = {(obj["id"], obj["stage_to_estimate"]) for _, obj in read_appended(out_path, missing_ok=True)}
    rejected = rejected_keys(rejects_path)
    counts = dict.fromkeys(("kept", "parse_error", "engine_error", "records", "skipped", "duplicate"), 0)
    todo, seen = [], set()
    for r in records:
        where = (r.id, r.observation)
        if where in seen:
            counts["duplicate"] += 1
        elif where in written or sample_key(r) in rejected:
            counts["skipped"] += 1
        else:
            todo.append((r, official_swap_prompt(r, image_root)))
        seen.add(where)
    run = TeacherRun(teacher, batch_size, len(todo), "text swaps", progress)
    with JsonlAppender(out_path) as out, JsonlAppender(rejects_path) as rejects:
        try:
            for batch, answers, error in run.batches(todo):
                for i, r in enumerate(batch):
                    text = None if answers is None else answers[i]
                    try:
                        if text is None:
                            raise Rejected("engine_error", error)
                        goal, steps = parse_official_swap(text)
                    except Rejected as e:
                        rejects.write({"key": sample_key(r), "reason": e.reason, "detail": str(e), "text": text})
                        counts[e.reason] += 1
                        continue
                    out.write(text_unanswerable_record(r, goal, steps))
                    counts["kept"] += 1
                    counts["records"] += 1
        finally:
            run.close()
    return counts


def _run_object_tag_swaps(records: list[Record], teacher, out_path: str, batch_size: int = 8,
                          rejects_path: str | None = None, allowed_objects=None, progress: bool = True,
                          image_root: str | None = None) -> dict:
    """One teacher call per trajectory (its first record's observation image shown) (text records grouped by id; they must share goal and steps), the
    same swap for all its records. Appends official text-unanswerable lines to out_path and rejected
    answers to rejects_path. A trajectory partly written by an interrupted run is completed with the
    swap already in the output. Counts: trajectories kept / per reason, records written, skipped."""
    from data_construction.teacher import TeacherRun, rejected_keys, rejects_path_for

    rejects_path = rejects_path or rejects_path_for(out_path)
    groups: dict[str, list[Record]] = {}
    for r in records:
        first = groups.setdefault(r.id, [r])[0]
        if r is not first:
            if (r.task_goal, r.text_demo) != (first.task_goal, first.text_demo):
                raise ValueError(f"{r.source}:{r.line}: id {r.id} has a different goal or steps than line {first.line}")
            groups[r.id].append(r)
    written: dict[str, dict] = {}
    for _, obj in read_appended(out_path, missing_ok=True):
        written.setdefault(obj["id"], {"swap": TextSwap("", "", obj["task_goal"], tuple(obj["text_demo"])),
                                       "stages": set()})["stages"].add(obj["stage_to_estimate"])
    rejected = rejected_keys(rejects_path)
    counts = dict.fromkeys(("kept", *TEXT_REASONS, "engine_error", "records", "skipped"), 0)

    with JsonlAppender(out_path) as out, JsonlAppender(rejects_path) as rejects:
        def emit(group: list[Record], swap: TextSwap, stages_done=frozenset()) -> None:
            for r in group:
                if r.observation not in stages_done:
                    out.write(text_unanswerable_record(r, swap.goal, swap.steps))
                    counts["records"] += 1

        todo = []
        for rid, group in groups.items():
            if rid in written:
                emit(group, written[rid]["swap"], written[rid]["stages"])
                counts["skipped"] += 1
            elif rid in rejected:
                counts["skipped"] += 1
            else:
                todo.append((group, text_swap_prompt(group[0].task_goal, group[0].text_demo,
                                                     _image_part(image_root, group[0]))))
        run = TeacherRun(teacher, batch_size, len(todo), "text swaps", progress)
        try:
            for batch, answers, error in run.batches(todo):
                for i, group in enumerate(batch):
                    first = group[0]
                    text = None if answers is None else answers[i]
                    try:
                        if text is None:
                            raise Rejected("engine_error", error)
                        swap = parse_text_swap(text)
                        validate_text_swap(first.task_goal, first.text_demo, swap, allowed_objects)
                    except Rejected as e:
                        rejects.write({"key": first.id, "reason": e.reason, "detail": str(e), "text": text})
                        counts[e.reason] += 1
                        continue
                    emit(group, swap)
                    counts["kept"] += 1
        finally:
            run.close()
    return counts


def run_image_edits(records: list[Record], image_root: str, teacher, editor, queue_path: str, out_path: str,
                    steps_by_id: dict | None = None, batch_size: int = 8, rejects_path: str | None = None,
                    progress: bool = True, protocol: str = "official") -> dict:
    """Stage 1 (teacher proposals) and stage 2 (editor) for answerable visual records. Each edited image
    is written to IMAGE_ROOT/{id}/{stem}_edit.jpg, then its review-queue line appended (fsync). At the end
    out_path is rewritten with every queued record (unreviewed, official visual-unanswerable layout).
    Editor failures (EditError) are rejects "edit_failed". Counts: kept, per reason, skipped, duplicate,
    and (official protocol) long_prompt: kept proposals over 20 words, counted as the official runner does."""
    _check_protocol("image", protocol)
    official = protocol == "official"
    make_prompt, parse = (official_edit_prompt, parse_official_edit) if official else (edit_strategy_prompt,
                                                                                       parse_edit_strategy)
    from PIL import Image

    from data_construction.teacher import TeacherRun, done_keys, rejects_path_for, sample_key

    rejects_path = rejects_path or rejects_path_for(queue_path)
    steps_by_id = steps_by_id or {}
    settled = done_keys(queue_path, rejects_path, lambda obj: obj["key"])
    counts = dict.fromkeys(("kept", *IMAGE_REASONS, "edit_failed", "engine_error", "skipped", "duplicate",
                            "long_prompt"), 0)
    todo, seen = [], set()
    for r in records:
        if r.kind != "visual" or not r.answerable:
            raise ValueError(f"{r.source}:{r.line}: image edits need answerable visual records, id {r.id} is "
                             f"{'unanswerable' if not r.answerable else 'text'}")
        key, where = sample_key(r), (r.id, r.observation)
        if where in seen:
            counts["duplicate"] += 1  # same edited file name: edit each observation once
        elif key in settled:
            counts["skipped"] += 1
        else:
            todo.append((r, make_prompt(r, image_root, steps_by_id.get(r.id))))
        seen.add(where)
    run = TeacherRun(teacher, batch_size, len(todo), "image edits", progress)
    with JsonlAppender(queue_path, fsync=True) as queue, JsonlAppender(rejects_path) as rejects:
        try:
            for batch, answers, error in run.batches(todo):
                for i, r in enumerate(batch):
                    key, text = sample_key(r), None if answers is None else answers[i]
                    try:
                        if text is None:
                            raise Rejected("engine_error", error)
                        proposal = parse(text)
                        src = record_image_path(image_root, r, r.observation)
                        with Image.open(src) as f:
                            image = f.convert("RGB")
                        try:
                            edited = editor(r, image, proposal, key)
                        except EditError as e:
                            raise Rejected("edit_failed", str(e)) from None
                    except Rejected as e:
                        rejects.write({"key": key, "reason": e.reason, "detail": str(e), "text": text})
                        counts[e.reason] += 1
                        continue
                    dst = record_image_path(image_root, r, edit_file_name(r.observation))
                    with atomic_output(dst, "wb") as dst_file:
                        edited.convert("RGB").save(dst_file, format="JPEG", quality=95)
                    queue.write(queue_entry(key, r, image_root, proposal, steps_by_id.get(r.id)))
                    counts["kept"] += 1
                    counts["long_prompt"] += len(proposal.instruction.split()) > MAX_INSTRUCTION_WORDS
        finally:
            run.close()
    write_jsonl(out_path, [e["record"] for e in load_queue(queue_path)])
    return counts
