"""Decomposed GRPO rewards (format, ref, score) for progress answers, REFERENCE §5.

variant="paper" is the 3B recipe: format in {0, 1}; n/a table +0.7 / -1.0; linear distances;
overall = 0.1 format + 0.6 ref + 0.3 score.

variant="anti_hack" is the later public variant: overall = 0.2 format + 0.5 ref + 0.3 score;
ref reward 1 - err^2; n/a table: GT n/a & pred n/a +0.8, GT n/a & pred not n/a -0.3,
GT numeric & pred n/a -0.8, GT numeric & unparseable 0 (both for ref and score). Its format reward
is 0.4 strict + 0.3 na_consistency + 0.3 range_consistency, where (our definition, no GT involved):
- na_consistency = 1 when `<ref>` and `<score>` are both n/a or both numbers (a lone n/a with a
  number beside it is the "hedge" the variant was made against; an unreadable tag gives 0);
- range_consistency = 1 when the answer is a coherent claim: both n/a, or a ref in 1..num_demos
  and a score in [0, 100] percent.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from data_pipeline.parsing import NA, NUMBER, read_ref, read_reward_score, strict_format_ok

VARIANTS = ("paper", "anti_hack")
DEFAULT_WEIGHTS = {
    "paper": {"format": 0.1, "ref": 0.6, "score": 0.3},
    "anti_hack": {"format": 0.2, "ref": 0.5, "score": 0.3},
}
# (GT n/a & pred n/a, GT n/a & pred other, GT numeric & pred n/a, GT numeric & pred unparseable)
_NA_TABLE = {
    "paper": {"ref": (0.7, -1.0, 0.0, 0.0), "score": (0.7, -1.0, -1.0, -1.0)},
    "anti_hack": {"ref": (0.8, -0.3, -0.8, 0.0), "score": (0.8, -0.3, -0.8, 0.0)},
}


def _check_target(gt_ref, gt_score, num_demos) -> None:
    if isinstance(num_demos, bool) or not isinstance(num_demos, int) or num_demos < 1:
        raise ValueError(f"num_demos must be a positive int, got {num_demos!r}")
    if gt_ref is not None and (isinstance(gt_ref, bool) or not isinstance(gt_ref, int) or not 1 <= gt_ref <= num_demos):
        raise ValueError(f"gt_ref must be None (n/a) or an int in 1..{num_demos}, got {gt_ref!r}")
    if gt_score is not None and (isinstance(gt_score, bool) or not isinstance(gt_score, (int, float))
                                 or not 0.0 <= gt_score <= 1.0):
        raise ValueError(f"gt_score must be None (n/a) or in [0, 1], got {gt_score!r}")


def _weights(variant: str, weights: Mapping[str, float] | None) -> dict[str, float]:
    if variant not in VARIANTS:
        raise ValueError(f"unknown reward variant {variant!r}; expected one of {VARIANTS}")
    if weights is None:
        return DEFAULT_WEIGHTS[variant]
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


def progress_reward(response: str, gt_ref: int | None, gt_score: float | None, num_demos: int,
                    variant: str = "paper", weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """Rewards of one response. gt_ref 1-based or None (n/a); gt_score in [0, 1] or None (n/a)."""
    _check_target(gt_ref, gt_score, num_demos)
    w = _weights(variant, weights)
    ref_status, ref = read_ref(response)
    score_status, score_pct = read_reward_score(response)
    table = _NA_TABLE[variant]
    squared = variant == "anti_hack"

    def ref_distance(pred: int) -> float:
        err = min(abs(pred - gt_ref) / max(num_demos - 1, 1), 1.0)
        return 1.0 - (err * err if squared else err)

    def score_distance(pred_pct: float) -> float:
        return 1.0 - min(abs(pred_pct - 100.0 * gt_score) / 100.0, 1.0)

    r_ref = _component(table["ref"], gt_ref, ref_status, ref, ref_distance)
    r_score = _component(table["score"], gt_score, score_status, score_pct, score_distance)
    strict = 1.0 if strict_format_ok(response) else 0.0
    if variant == "paper":
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


def progress_rewards(responses: Sequence[str], gt_refs: Sequence[int | None], gt_scores: Sequence[float | None],
                     num_demos: Sequence[int], variant: str = "paper",
                     weights: Mapping[str, float] | None = None) -> list[dict[str, float]]:
    """progress_reward over parallel lists (e.g. n rollouts per prompt, targets repeated)."""
    n = len(responses)
    if not len(gt_refs) == len(gt_scores) == len(num_demos) == n:
        raise ValueError(f"length mismatch: {n} responses, {len(gt_refs)} gt_refs, "
                         f"{len(gt_scores)} gt_scores, {len(num_demos)} num_demos")
    return [progress_reward(r, g, s, d, variant, weights)
            for r, g, s, d in zip(responses, gt_refs, gt_scores, num_demos)]
