"""GRPO rewards for progress answers. Every rule and its source: docs/rewards.md.

REWARDS maps a reward name to fn(responses, targets) -> one dict per response, each with "overall"
(the scalar GRPO uses) and its parts; a target is a Record or the official ground-truth payload.
- "paper": the official EasyR1/progresslm/reward/visual_demo_reward.py (0.1 format + 0.6 ref +
  0.3 score), the 3B recipe's reward (configs/visual_demo_grpo.yaml names it);
- "anti_hack": the official EasyR1/progresslm/reward/progresslm_reward.py (0.2 / 0.5 / 0.3, format
  with n/a and ground-truth-dependent think consistency);
- "paper_lenient", "anti_hack_gt_free": the project's earlier readings (lenient tag reads, a stricter
  one-tag-each format; anti_hack's consistency terms without ground truth), kept under their own names.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

from data_pipeline.parsing import (NA, NUMBER, anti_hack_format_ok, anti_hack_ref_text, anti_hack_ref_value,
                                   anti_hack_score_text, anti_hack_score_think, anti_hack_score_value,
                                   paper_format_ok, paper_read_ref, paper_read_score, read_ref,
                                   read_reward_score, strict_format_ok)
from data_pipeline.records import Record


# ---- ground truth ------------------------------------------------------------------------------

def ground_truth(record: Record) -> dict:
    """The ground-truth payload the official RL data builder (build_prompts_general.py,
    build_answer_payload) writes for a record: either value n/a makes both "n/a"; otherwise the ref
    as a string and the score as a string of round(progress * 100), Python's banker's rounding."""
    if record.closest_idx is None or record.progress is None:
        return {"ref": "n/a", "score_percent": "n/a", "demo_count": record.num_demos}
    return {"ref": str(int(record.closest_idx)), "score_percent": str(round(record.progress * 100)),
            "demo_count": record.num_demos}


def _payload(target) -> Mapping:
    """A Record, or the official payload as a dict or its JSON string (as the official reward reads it)."""
    if isinstance(target, Record):
        return ground_truth(target)
    if isinstance(target, Mapping):
        payload = target
    elif isinstance(target, str):
        try:
            payload = json.loads(target)
        except json.JSONDecodeError as e:
            raise ValueError(f"ground truth string is not JSON: {target!r:.200} ({e})") from None
    else:
        raise TypeError(f"ground truth must be a Record, a dict or a JSON string, got {type(target).__name__}")
    if not isinstance(payload, Mapping):
        raise TypeError(f"ground truth JSON must be an object, got {payload!r:.200}")
    for key in ("ref", "score_percent"):
        if key not in payload:
            raise ValueError(f"ground truth {dict(payload)!r:.200} has no key {key!r}")
    return payload


def _gt_number(payload: Mapping, key: str, convert, default=None):
    value = payload.get(key, default)
    try:
        return convert(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int() of inf (JSON 1e400)
        raise ValueError(f"ground truth key {key!r}: cannot read {value!r} as {convert.__name__}") from None


def _demo_count(payload: Mapping) -> int:
    return max(_gt_number(payload, "demo_count", int, 1), 1)


def _finite_gt(score: float | None) -> float | None:
    """A ground-truth percentage of NaN or +-inf ("nan", "inf", JSON NaN: float() reads them all) is
    bad data: an error here; the official code gives NaN rewards (NaN GT; inf GT against a predicted
    number that overflows to inf) or scores every numeric answer 0."""
    if score is not None and not math.isfinite(score):
        raise ValueError(f"ground truth key 'score_percent': {score!r} is not a finite percentage")
    return score


def _ref_error(pred: int, gt: int, demos: int) -> float:
    """min(|pred - gt| / max(demos - 1, 1), 1), the official ref error, without dividing a huge int:
    a ref of 309 digits or more overflows the float division (the official code raises there)."""
    offset = max(demos - 1, 1)
    diff = abs(pred - gt)
    return 1.0 if diff >= offset else diff / offset


# ---- paper: visual_demo_reward.py --------------------------------------------------------------

def paper_reward(response: str, target) -> dict[str, float]:
    gt = _payload(target)
    # Ground truth: exactly the string "n/a", else int() / float() of the value, each on its own.
    gt_ref_na, gt_score_na = gt["ref"] == "n/a", gt["score_percent"] == "n/a"
    gt_ref = None if gt_ref_na else _gt_number(gt, "ref", int)
    gt_score = None if gt_score_na else _finite_gt(_gt_number(gt, "score_percent", float))
    demos = _demo_count(gt)
    ref_status, ref = paper_read_ref(response)
    score_status, score = paper_read_score(response)

    if gt_ref_na:
        ref_r, ref_err = (0.7, 0.0) if ref_status == NA else (-1.0, 1.0)
    elif ref_status != NUMBER:  # n/a or nothing readable
        ref_r, ref_err = 0.0, 1.0
    else:
        ref_err = _ref_error(ref, gt_ref, demos)
        ref_r = max(1.0 - ref_err, 0.0)
    if gt_score_na:
        score_r, score_err = (0.7, 0.0) if score_status == NA else (-1.0, 1.0)
    elif score_status != NUMBER:
        score_r, score_err = -1.0, 1.0
    else:
        score_err = min(abs(score - gt_score) / 100.0, 1.0)
        score_r = max(1.0 - score_err, 0.0)
    fmt = 1.0 if paper_format_ok(response) else 0.0
    return {"overall": 0.1 * fmt + 0.6 * ref_r + 0.3 * score_r, "format": fmt, "accuracy": score_r,
            "score": score_r, "ref": ref_r, "ref_error": ref_err, "score_error": score_err}


# ---- anti_hack: progresslm_reward.py -----------------------------------------------------------

def anti_hack_reward(response: str, target) -> dict[str, float]:
    gt = _payload(target)
    gt_ref_na, gt_ref = anti_hack_ref_value(gt["ref"])
    gt_score_na, gt_score = anti_hack_score_value(gt["score_percent"])
    gt_score = _finite_gt(gt_score)
    demos = _demo_count(gt)
    ref_text, score_text = anti_hack_ref_text(response), anti_hack_score_text(response)
    ref_na, ref = anti_hack_ref_value(ref_text) if ref_text is not None else (False, None)
    score_na, score = anti_hack_score_value(score_text) if score_text is not None else (False, None)
    if score is not None and not math.isfinite(score):
        # "nan" (float() reads it) would make the official reward NaN and poison the group's
        # advantages: read as no number, as a float() guard would. For +-inf ("inf", "1e999") the
        # official value is the same as for no number: error 1, score 0 (docs/rewards.md).
        score = None

    base = 1.0 if anti_hack_format_ok(response) else 0.0
    na_consistency = 1.0 if ref_na == score_na else 0.0
    think_na = anti_hack_score_think(response).lower() == "n/a"
    think_consistency = 1.0 if think_na == gt_score_na else 0.0  # n/a exactly when the GT score is n/a
    fmt = 0.4 * base + 0.3 * na_consistency + 0.3 * think_consistency

    if gt_ref_na:
        ref_r, ref_err = (0.8, 0.0) if ref_na else (-0.3, 1.0)
    elif ref_na:
        ref_r, ref_err = -0.8, 1.0
    elif ref is not None and gt_ref is not None:
        ref_err = _ref_error(ref, gt_ref, demos)
        ref_r = max(1.0 - ref_err ** 2, 0.0)
    else:
        ref_r, ref_err = 0.0, 1.0
    if gt_score_na:
        score_r, score_err = (0.8, 0.0) if score_na else (-0.3, 1.0)
    elif score_na:
        score_r, score_err = -0.8, 1.0
    elif score is not None and gt_score is not None:
        score_err = min(abs(score - gt_score) / 100.0, 1.0)
        score_r = max(1.0 - score_err, 0.0)
    else:
        score_r, score_err = 0.0, 1.0
    return {"overall": 0.2 * fmt + 0.5 * ref_r + 0.3 * score_r, "format": fmt, "format_base": base,
            "format_na_consistency": na_consistency, "format_think_consistency": think_consistency,
            "accuracy": score_r, "score": score_r, "ref": ref_r, "ref_error": ref_err,
            "score_error": score_err, "hack_detected": 1.0 if ref_na and not score_na else 0.0}


# ---- the project's earlier readings (paper_lenient, anti_hack_gt_free) -------------------------

LENIENT_WEIGHTS = {
    "paper_lenient": {"format": 0.1, "ref": 0.6, "score": 0.3},
    "anti_hack_gt_free": {"format": 0.2, "ref": 0.5, "score": 0.3},
}
# (GT n/a & pred n/a, GT n/a & pred other, GT numeric & pred n/a, GT numeric & pred unparseable)
_LENIENT_NA_TABLE = {
    "paper_lenient": {"ref": (0.7, -1.0, 0.0, 0.0), "score": (0.7, -1.0, -1.0, -1.0)},
    "anti_hack_gt_free": {"ref": (0.8, -0.3, -0.8, 0.0), "score": (0.8, -0.3, -0.8, 0.0)},
}


def _check_target(gt_ref, gt_score, num_demos) -> None:
    if isinstance(num_demos, bool) or not isinstance(num_demos, int) or num_demos < 1:
        raise ValueError(f"num_demos must be a positive int, got {num_demos!r}")
    if gt_ref is not None and (isinstance(gt_ref, bool) or not isinstance(gt_ref, int) or not 1 <= gt_ref <= num_demos):
        raise ValueError(f"gt_ref must be None (n/a) or an int in 1..{num_demos}, got {gt_ref!r}")
    if gt_score is not None and (isinstance(gt_score, bool) or not isinstance(gt_score, (int, float))
                                 or not 0.0 <= gt_score <= 1.0):
        raise ValueError(f"gt_score must be None (n/a) or in [0, 1], got {gt_score!r}")


def _lenient_weights(variant: str, weights: Mapping[str, float] | None) -> dict[str, float]:
    if variant not in LENIENT_WEIGHTS:
        raise ValueError(f"unknown lenient reward variant {variant!r}; expected one of {tuple(LENIENT_WEIGHTS)}")
    if weights is None:
        return LENIENT_WEIGHTS[variant]
    if set(weights) != {"format", "ref", "score"}:
        raise ValueError(f"reward weights need exactly the keys format, ref, score; got {sorted(weights)}")
    return {k: float(v) for k, v in weights.items()}


def _component(table, gt, status, value, distance) -> float:
    gt_na_pred_na, gt_na_pred_other, gt_num_pred_na, gt_num_unparseable = table
    if gt is None:
        return gt_na_pred_na if status == NA else gt_na_pred_other
    if status == NA:
        return gt_num_pred_na
    if status != NUMBER:
        return gt_num_unparseable
    return distance(value)


def lenient_reward(response: str, gt_ref: int | None, gt_score: float | None, num_demos: int,
                   variant: str = "paper_lenient", weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """One response under an earlier reading. gt_ref 1-based or None (n/a); gt_score in [0, 1] or None.

    paper_lenient: the paper's table and weights; `n/a`/`na` in any case, a sign and spaces in a
    number, the first `<score>` tag whatever it holds; format = every block exactly once, in order.
    anti_hack_gt_free: anti_hack's table, weights and 1 - err^2; format = 0.4 strict + 0.3
    na_consistency (both n/a or both numbers) + 0.3 range_consistency (both n/a, or a ref in
    1..num_demos and a score in [0, 100] percent): no ground truth in the format term.
    """
    _check_target(gt_ref, gt_score, num_demos)
    w = _lenient_weights(variant, weights)
    ref_status, ref = read_ref(response)
    score_status, score_pct = read_reward_score(response)
    table = _LENIENT_NA_TABLE[variant]
    squared = variant == "anti_hack_gt_free"

    def ref_distance(pred: int) -> float:
        err = _ref_error(pred, gt_ref, num_demos)
        return 1.0 - (err * err if squared else err)

    def score_distance(pred_pct: float) -> float:
        return 1.0 - min(abs(pred_pct - 100.0 * gt_score) / 100.0, 1.0)

    r_ref = _component(table["ref"], gt_ref, ref_status, ref, ref_distance)
    r_score = _component(table["score"], gt_score, score_status, score_pct, score_distance)
    strict = 1.0 if strict_format_ok(response) else 0.0
    if not squared:
        r_format = strict
    else:
        both_na = ref_status == NA and score_status == NA
        both_num = ref_status == NUMBER and score_status == NUMBER
        na_consistency = 1.0 if both_na or both_num else 0.0
        in_range = both_num and 1 <= ref <= num_demos and 0.0 <= score_pct <= 100.0
        range_consistency = 1.0 if both_na or in_range else 0.0
        r_format = 0.4 * strict + 0.3 * na_consistency + 0.3 * range_consistency
    overall = w["format"] * r_format + w["ref"] * r_ref + w["score"] * r_score
    return {"overall": overall, "format": r_format, "ref": r_ref, "score": r_score}


def _lenient_target(target) -> tuple[int | None, float | None, int]:
    if isinstance(target, Record):
        return target.closest_idx, target.progress, target.num_demos
    gt = _payload(target)
    na = gt["ref"] == "n/a" or gt["score_percent"] == "n/a"
    ref = None if na else _gt_number(gt, "ref", int)
    score = None if na else _gt_number(gt, "score_percent", float) / 100.0
    return ref, score, _demo_count(gt)


# ---- the registry ------------------------------------------------------------------------------

def _batch(one, name):
    def rewards(responses: Sequence[str], targets: Sequence) -> list[dict[str, float]]:
        if len(responses) != len(targets):
            raise ValueError(f"length mismatch: {len(responses)} responses, {len(targets)} targets")
        return [one(r, t) for r, t in zip(responses, targets)]
    rewards.__name__ = rewards.__qualname__ = f"{name}_rewards"
    return rewards


def _lenient(variant):
    def one(response, target):
        return lenient_reward(response, *_lenient_target(target), variant=variant)
    return _batch(one, variant)


REWARDS = {
    "paper": _batch(paper_reward, "paper"),
    "anti_hack": _batch(anti_hack_reward, "anti_hack"),
    "paper_lenient": _lenient("paper_lenient"),
    "anti_hack_gt_free": _lenient("anti_hack_gt_free"),
}


def progress_rewards(responses: Sequence[str], gt_refs: Sequence[int | None], gt_scores: Sequence[float | None],
                     num_demos: Sequence[int], variant: str = "paper") -> list[dict[str, float]]:
    """REWARDS[variant] over parallel lists (gt_score a fraction in [0, 1]), the form the GRPO trainer
    has called so far; each target becomes the payload ground_truth() writes."""
    if variant not in REWARDS:
        raise ValueError(f"unknown reward {variant!r}; expected one of {tuple(REWARDS)}")
    n = len(responses)
    if not len(gt_refs) == len(gt_scores) == len(num_demos) == n:
        raise ValueError(f"length mismatch: {n} responses, {len(gt_refs)} gt_refs, "
                         f"{len(gt_scores)} gt_scores, {len(num_demos)} num_demos")
    if variant in LENIENT_WEIGHTS:  # the earlier readings take the fraction itself, unrounded
        return [lenient_reward(*args, variant=variant) for args in zip(responses, gt_refs, gt_scores, num_demos)]
    targets = []
    for ref, score, demos in zip(gt_refs, gt_scores, num_demos):
        _check_target(ref, score, demos)
        if ref is None or score is None:
            targets.append({"ref": "n/a", "score_percent": "n/a", "demo_count": demos})
        else:
            targets.append({"ref": str(ref), "score_percent": str(round(score * 100)), "demo_count": demos})
    return REWARDS[variant](responses, targets)
