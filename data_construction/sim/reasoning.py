"""Rule-based four-block answers for sim training samples, written from the 3-D scene state.

<ref_think> compares the observation with the nearest demo entries, <ref> the closest one, <score_think>
places the observation inside the running action and <score> gives the progress (n/a when unanswerable).
"""
from __future__ import annotations

import numpy as np

from data_construction.construct import Sample, round_half_up
from data_construction.sim.scene import OPEN_WIDTH, drawer_handle

TABLE_EPS, NEAR = 0.006, 0.04


def _cm(x: float) -> int:
    return max(0, round_half_up(100 * x))


def _support(ep, state, key):
    """The item `key` rests on ("table" or an item), or None when it is in the air."""
    scene, item = ep.plan.scene, ep.plan.scene.item(key)
    c = state[f"pos:{key}"]
    bottom = c[2] - item.half[2]
    for other in scene.items:
        if other.key == key or other.kind == "mat":
            continue
        oc = state[f"pos:{other.key}"]
        if other.kind == "cabinet":
            drawer = float(state.get("drawer", [0.0])[0])
            oc = drawer_handle(other, oc, drawer) + [0, 0.018 + other.half[1] * 0.9, 0]
            top = state[f"pos:{other.key}"][2] - other.half[2] + 0.022
        else:
            top = oc[2] + other.top
        if np.linalg.norm(c[:2] - oc[:2]) < max(other.half[:2]) and abs(bottom - top) < TABLE_EPS:
            return other
    if bottom < TABLE_EPS:
        for other in scene.items:
            if other.kind == "mat" and np.all(np.abs(c[:2] - state[f"pos:{other.key}"][:2]) < other.half[:2]):
                return other
        return "table"
    return None


def _where(item) -> str:
    if item == "table":
        return "on the table"
    if item.kind == "cabinet":
        return "inside the drawer"
    return f"{'in' if item.kind in ('tray', 'mat') else 'on'} the {item.phrase}"


def _holder(ep, state, key):
    """The arm whose closed fingers are around the item, if any."""
    item = ep.plan.scene.item(key)
    for i in range(len(ep.plan.scene.arms)):
        reach = 0.01 + item.half[2] + 0.012 * (item.kind == "lid")  # a lid is held by its knob
        if (np.linalg.norm(state[f"grip:{i}"] - state[f"pos:{key}"]) < reach
                and state[f"width:{i}"][0] < 2 * max(item.half[:2]) + 0.01):
            return i
    return None


def movers(ep) -> list[str]:
    first, last = ep.plan.states[0], ep.plan.states[-1]
    return [it.key for it in ep.plan.scene.items
            if np.linalg.norm(first[f"pos:{it.key}"] - last[f"pos:{it.key}"]) > 1e-6]


def describe(ep, state) -> str:
    """What a person would say about this state: the moving objects, the drawer and the grippers."""
    scene, last = ep.plan.scene, ep.plan.states[-1]
    parts, held = [], set()
    for key in movers(ep):
        item = scene.item(key)
        sup, goal = _support(ep, state, key), _support(ep, last, key)
        dest = state[f"pos:{key}"][:2] - last[f"pos:{key}"][:2]
        dist = _cm(float(np.linalg.norm(dest)))
        arm = _holder(ep, state, key)
        who = f"the {scene.arms[arm].side + ' ' if scene.arms[arm].side else ''}gripper" if arm is not None else ""
        if arm is not None:
            held.add(arm)
        if arm is not None and sup is None:
            height = _cm(state[f"pos:{key}"][2] - item.half[2])
            there = "right above where it goes" if dist <= 3 else f"{dist} cm from where it goes"
            parts.append(f"{who} holds the {item.phrase} {height} cm above the table, {there}")
        elif arm is not None:
            target = "" if dist <= 1 and sup == goal else f", {dist} cm from its goal position"
            parts.append(f"{who} grips the {item.phrase}, which is {_where(sup)}{target}")
        elif sup is None:
            parts.append(f"the {item.phrase} is in the air")
        elif dist <= 1 and sup == goal:
            parts.append(f"the {item.phrase} is {_where(sup)}, where it belongs")
        else:
            target = f" {dist} cm from its goal position" if goal != sup else ""
            parts.append(f"the {item.phrase} is {_where(sup)}{target}")
    if "drawer" in state:
        opening = _cm(float(state["drawer"][0]))
        parts.append("the drawer is closed" if opening == 0 else f"the drawer is open by {opening} cm")
    for i, arm in enumerate(scene.arms):
        if i in held:
            continue
        who = f"the {arm.side + ' ' if arm.side else ''}gripper"
        g, w = state[f"grip:{i}"], state[f"width:{i}"][0]
        status = "open" if w > OPEN_WIDTH - 0.01 else ("partly closed" if w > 0.045 else "closed")
        near = min(scene.items, key=lambda it: np.linalg.norm(state[f"pos:{it.key}"][:2] - g[:2]))
        over = np.linalg.norm(state[f"pos:{near.key}"][:2] - g[:2]) < NEAR
        spot = f" over the {near.phrase}" if over else ""
        parts.append(f"{who} is {status}, {_cm(g[2])} cm above the table{spot}")
    return "; ".join(parts)


def _label(sample: Sample, index: int) -> str:
    """How the demo entry at key state `index` (0 .. T) is named in the prompt."""
    return f"step {index}" if sample.kind == "text" else f"demo frame {index + 1}"


def _pct(index: int, total: int) -> int:
    return round_half_up(100.0 * index / total)


def response(sample: Sample, style: str = "full") -> str:
    """The answer: <ref_think>..</ref_think><ref>..</ref><score_think>..</score_think><score>..</score>.
    style "full": scene descriptions of the observation and the two bracketing demo entries;
    "brief": only the bracketing demo entries and the arithmetic; "observe": brief, preceded by a
    description of the observation (what the image shows, in words: the dense signal that teaches a
    model from scratch to see the scene, docs/learning.md); "passed": brief, preceded by a yes or no
    for each demo entry in turn, whether the observation has passed it (one comparison a token
    instead of the choice of a pair among all entries, docs/learning.md)."""
    ep = sample.episode
    brief = style != "full"
    if not sample.answerable:
        return _unanswerable(sample, brief)
    T, obs = sample.total_steps, sample.obs
    state = ep.state_at(obs.frame)
    c = sample.closest_idx if sample.kind == "text" else sample.closest_idx - 1  # key-state index of the answer
    k = obs.segment
    other = k + 1 if c == k else k
    view = ""
    if sample.demo_camera and sample.demo_camera != sample.obs_camera:
        view = (f" The demo is filmed by {sample.demo_camera.replace('_', ' ')} and the observation by "
                f"{sample.obs_camera.replace('_', ' ')}, so I match object positions rather than pixels.")
    if brief:
        seen = (f"In the current image {describe(ep, state)}. " if style == "observe"
                else _passed(sample, k) if style == "passed" else "")
        return _brief(sample, k, c, seen)
    lines = [f"Goal: {ep.goal}.{view} In the current image {describe(ep, state)}."]
    for idx in sorted({c, other}):
        key_state = ep.state_at(ep.key_frames[idx])
        if sample.kind == "text" and idx == 0:
            lines.append(f"Before step 1 (\"{ep.steps[0]}\") nothing has been done yet: {describe(ep, key_state)}.")
            continue
        said = f" (\"{ep.steps[idx - 1]}\")" if sample.kind == "text" else ""
        lines.append(f"At {_label(sample, idx)}{said}, {_pct(idx, T)}%: {describe(ep, key_state)}.")
    lines.append(f"The observation lies between {_label(sample, k) if k > 0 or sample.kind != 'text' else 'the start'} "
                 f"and {_label(sample, k + 1)} and is closer to {_label(sample, c)}.")
    ref_think = " ".join(lines)

    a, frac = ep.action_at(obs.frame)
    action = ep.plan.actions[a]
    first = ep.plan.step_ends[k - 1] + 1 if k > 0 else 0
    count = ep.plan.step_ends[k] - first + 1
    within = f" (action {a - first + 1} of {count} in step {k + 1})" if count > 1 else ""
    done = round_half_up(100 * obs.fraction)
    p = round_half_up(sample.progress)
    lo, hi = _pct(k, T), _pct(k + 1, T)
    score_think = (f"The robot is doing \"{action}\"{within}, {round_half_up(100 * frac)}% of that motion done, so "
                   f"step {k + 1} is about {done}% complete. Step {k + 1} spans {lo}% to {hi}%, so the progress is "
                   f"about {lo}% + {done}% of {hi - lo} points = {p}%.")
    return (f"<ref_think>{ref_think}</ref_think><ref>{sample.closest_idx}</ref>"
            f"<score_think>{score_think}</score_think><score>{p}%</score>")


def _brief(sample: Sample, k: int, c: int, seen: str = "") -> str:
    T, done, p = sample.total_steps, round_half_up(100 * sample.obs.fraction), round_half_up(sample.progress)
    lo, hi = _pct(k, T), _pct(k + 1, T)
    start = _label(sample, k) if k > 0 or sample.kind != "text" else "the start"
    ref_think = f"{seen}Between {start} and {_label(sample, k + 1)}, closer to {_label(sample, c)}."
    score_think = f"Step {k + 1} spans {lo}% to {hi}% and is {done}% done: {p}%."
    return (f"<ref_think>{ref_think}</ref_think><ref>{sample.closest_idx}</ref>"
            f"<score_think>{score_think}</score_think><score>{p}%</score>")


def _passed(sample: Sample, k: int) -> str:
    """Whether the observation, in segment k, has passed each demo entry: demo frames 1..k+1 (frame 1
    is the start), steps 1..k."""
    if sample.kind == "text":
        head, total, passed = "Done step", sample.total_steps, k
    else:
        head, total, passed = "Passed demo frame", sample.total_steps + 1, k + 1
    return f"{head}: " + " ".join(f"{i} {'yes' if i <= passed else 'no'}." for i in range(1, total + 1)) + " "


def _unanswerable(sample: Sample, brief: bool = False) -> str:
    ep = sample.episode
    if brief:
        mismatch = "The image does not match this task." if sample.edited else "The steps do not match this task."
        return (f"<ref_think>{mismatch}</ref_think><ref>n/a</ref>"
                f"<score_think>No matching step.</score_think><score>n/a</score>")
    state = ep.state_at(sample.obs.frame)
    manip = ep.plan.scene.item(ep.plan.manip)
    if sample.edited:
        _, change = ep.edited_scene(sample.obs_camera, sample.obs.frame)
        ref_think = (f"Goal: {ep.goal}. The demonstration is about the {manip.phrase}, but in the current image "
                     f"{change}. The observation does not show this task, so no demo frame matches it.")
    else:
        goal, _ = sample.goal_and_steps()
        ref_think = (f"Goal: {goal}. The steps talk about a {sample.replacement}, but the image shows no "
                     f"{sample.replacement}: {describe(ep, state)}. The demonstration does not describe this scene, "
                     f"so no step matches it.")
    score_think = "Without a matching demo step the progress cannot be estimated for this observation."
    return f"<ref_think>{ref_think}</ref_think><ref>n/a</ref><score_think>{score_think}</score_think><score>n/a</score>"
