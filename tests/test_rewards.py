"""Rewards against the 3B recipe of REFERENCE §5 (hand-computed values) and the anti-hack variant."""
import pytest

from progress_jax.rewards import progress_reward, progress_rewards


def four(ref="2", score="45%"):
    return f"<ref_think>r</ref_think>\n<ref>{ref}</ref>\n<score_think>s</score_think>\n<score>{score}</score>"


NUM_DEMOS = 5  # a vision demo of total_steps 4


# The n/a table of the paper recipe: (gt_ref, gt_score, response) -> (ref reward, score reward).
@pytest.mark.parametrize("gt_ref, gt_score, response, ref_r, score_r", [
    (None, None, four("n/a", "n/a"), 0.7, 0.7),           # GT n/a, pred n/a
    (None, None, four("3", "40%"), -1.0, -1.0),           # GT n/a, pred numbers
    (None, None, four("three", "lots"), -1.0, -1.0),      # GT n/a, unparseable
    (None, None, "nothing here", -1.0, -1.0),             # GT n/a, tags missing
    (None, None, four("n/a", "40%"), 0.7, -1.0),          # GT n/a, mixed
    (3, 0.5, four("n/a", "n/a"), 0.0, -1.0),              # GT numeric, pred n/a
    (3, 0.5, four("x", "y"), 0.0, -1.0),                  # GT numeric, unparseable
    (3, 0.5, "no tags", 0.0, -1.0),                       # GT numeric, tags missing
])
def test_paper_na_table(gt_ref, gt_score, response, ref_r, score_r):
    r = progress_reward(response, gt_ref, gt_score, NUM_DEMOS)
    assert r["ref"] == pytest.approx(ref_r)
    assert r["score"] == pytest.approx(score_r)
    assert r["overall"] == pytest.approx(0.1 * r["format"] + 0.6 * ref_r + 0.3 * score_r)


@pytest.mark.parametrize("pred_ref, gt_ref, num_demos, expected", [
    (3, 3, 5, 1.0), (4, 3, 5, 1 - 1 / 4), (1, 5, 5, 0.0), (9, 1, 5, 0.0),   # capped at error 1
    (2, 1, 2, 0.0), (1, 1, 1, 1.0), (7, 2, 11, 1 - 5 / 10),
])
def test_paper_ref_distance(pred_ref, gt_ref, num_demos, expected):
    r = progress_reward(four(str(pred_ref), "50%"), gt_ref, 0.5, num_demos)
    assert r["ref"] == pytest.approx(expected)


@pytest.mark.parametrize("score_text, gt_score, expected", [
    ("45%", 0.45, 1.0), ("45", 0.45, 1.0), ("30%", 0.45, 0.85), ("30", 0.45, 0.85),
    ("0.45", 0.45, 1 - 44.55 / 100),   # a bare number is percent in the reward: 0.45 means 0.45%
    ("100%", 0.0, 0.0), ("250", 0.0, 0.0), ("12.5%", 0.2, 1 - 0.075),
])
def test_paper_score_distance(score_text, gt_score, expected):
    r = progress_reward(four("2", score_text), 2, gt_score, NUM_DEMOS)
    assert r["score"] == pytest.approx(expected)


def test_paper_overall_weights_and_format():
    r = progress_reward(four("4", "30%"), 3, 0.45, NUM_DEMOS)
    assert r["format"] == 1.0
    assert r["overall"] == pytest.approx(0.1 * 1 + 0.6 * 0.75 + 0.3 * 0.85)
    # same answer with text outside the blocks: tags still read, format 0
    r2 = progress_reward("Sure! " + four("4", "30%"), 3, 0.45, NUM_DEMOS)
    assert (r2["format"], r2["ref"], r2["score"]) == (0.0, 0.75, pytest.approx(0.85))
    assert r2["overall"] == pytest.approx(0.6 * 0.75 + 0.3 * 0.85)


def test_malformed_outputs():
    for response in ["", "45%", "<score>45%", "<ref_think>only thinking", "<ref></ref><score></score>"]:
        r = progress_reward(response, 2, 0.25, NUM_DEMOS)
        assert (r["format"], r["ref"], r["score"]) == (0.0, 0.0, -1.0)
        assert r["overall"] == pytest.approx(-0.3)


def test_custom_weights():
    r = progress_reward(four("3", "50%"), 3, 0.5, NUM_DEMOS, weights={"format": 1, "ref": 1, "score": 1})
    assert r["overall"] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="format, ref, score"):
        progress_reward(four(), 3, 0.5, NUM_DEMOS, weights={"format": 1.0})


@pytest.mark.parametrize("gt_ref, gt_score, response, ref_r, score_r", [
    (None, None, four("n/a", "n/a"), 0.8, 0.8),
    (None, None, four("3", "40%"), -0.3, -0.3),
    (None, None, "garbage", -0.3, -0.3),
    (3, 0.5, four("n/a", "n/a"), -0.8, -0.8),
    (3, 0.5, four("x", "y"), 0.0, 0.0),
    (3, 0.5, four("5", "20%"), 1 - (2 / 4) ** 2, 0.7),
    (3, 0.5, four("4", "50"), 1 - (1 / 4) ** 2, 1.0),
])
def test_anti_hack_table_and_distances(gt_ref, gt_score, response, ref_r, score_r):
    r = progress_reward(response, gt_ref, gt_score, NUM_DEMOS, variant="anti_hack")
    assert r["ref"] == pytest.approx(ref_r)
    assert r["score"] == pytest.approx(score_r)
    assert r["overall"] == pytest.approx(0.2 * r["format"] + 0.5 * ref_r + 0.3 * score_r)


@pytest.mark.parametrize("response, expected_format", [
    (four("2", "40%"), 1.0),                 # strict, both numbers, in range
    (four("n/a", "n/a"), 1.0),               # strict, both n/a
    (four("n/a", "40%"), 0.4),               # the hedge: strict but inconsistent
    (four("9", "40%"), 0.4 + 0.3),           # ref outside 1..5
    (four("2", "140%"), 0.4 + 0.3),          # score outside [0, 100]
    ("ok " + four("2", "40%"), 0.6),         # not strict, consistent
    ("<ref>2</ref>", 0.0),                   # score missing
])
def test_anti_hack_format_terms(response, expected_format):
    r = progress_reward(response, 2, 0.4, NUM_DEMOS, variant="anti_hack")
    assert r["format"] == pytest.approx(expected_format)


def test_batched_matches_single_and_checks_lengths():
    responses = [four("1", "0%"), four("n/a", "n/a"), "junk"]
    refs, scores, demos = [1, None, 2], [0.0, None, 0.5], [3, 3, 4]
    batch = progress_rewards(responses, refs, scores, demos)
    assert batch == [progress_reward(*args) for args in zip(responses, refs, scores, demos)]
    with pytest.raises(ValueError, match="length mismatch"):
        progress_rewards(responses, refs[:2], scores, demos)


@pytest.mark.parametrize("gt_ref, gt_score, num_demos, variant", [
    (0, 0.5, 5, "paper"), (6, 0.5, 5, "paper"), (2, 1.5, 5, "paper"), (2, 0.5, 0, "paper"),
    (2, "50%", 5, "paper"), (2, 0.5, 5, "hack"),
])
def test_bad_targets_raise(gt_ref, gt_score, num_demos, variant):
    with pytest.raises(ValueError):
        progress_reward(four(), gt_ref, gt_score, num_demos, variant=variant)
