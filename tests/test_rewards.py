"""Rewards: the two official ProgressLM reward functions, every branch, with expected values worked
out by hand from the official code (EasyR1/progresslm/reward/visual_demo_reward.py at commit bfeba3c
for "paper", progresslm_reward.py at HEAD for "anti_hack"); then the earlier readings kept as
paper_lenient / anti_hack_gt_free."""
import json
import math

import pytest

from data_pipeline.records import Record
from progress_jax.rewards import (REWARDS, anti_hack_reward, ground_truth, lenient_reward, paper_reward,
                                  progress_rewards)


def four(ref="2", score="45%", ref_think="r", score_think="s"):
    return (f"<ref_think>{ref_think}</ref_think>\n<ref>{ref}</ref>\n"
            f"<score_think>{score_think}</score_think>\n<score>{score}</score>")


def gt(ref="3", score="50", demos=5):
    return {"ref": ref, "score_percent": score, "demo_count": demos}


NA_GT = gt("n/a", "n/a")


# ---- paper ------------------------------------------------------------------------------------

# (response, target) -> (ref reward, score reward): the n/a table and the tag reads together.
@pytest.mark.parametrize("response, target, ref_r, score_r", [
    # GT n/a: only a lower-case n/a earns 0.7; anything else, unreadable included, -1.
    (four("n/a", "n/a"), NA_GT, 0.7, 0.7),
    (four("3", "40%"), NA_GT, -1.0, -1.0),
    (four("N/A", "N/A"), NA_GT, -1.0, -1.0),             # case-sensitive n/a
    (four("na", "na"), NA_GT, -1.0, -1.0),
    ("nothing here", NA_GT, -1.0, -1.0),
    (four("n/a", "40%"), NA_GT, 0.7, -1.0),
    # ref and score ground truths are read on their own: one n/a, one number
    (four("n/a", "40%"), gt("n/a", "40"), 0.7, 1.0),
    (four("3", "n/a"), gt("3", "n/a"), 1.0, 0.7),
    # GT numeric: a predicted n/a costs 0 on ref but -1 on score; unreadable the same
    (four("n/a", "n/a"), gt(), 0.0, -1.0),
    (four("N/A", "N/A"), gt(), 0.0, -1.0),
    (four("three", "half"), gt(), 0.0, -1.0),
    ("no tags", gt(), 0.0, -1.0),
    (four("3.0", "50"), gt(), 0.0, 1.0),                 # ref digits only
    (four("-3", "50"), gt(), 0.0, 1.0),                  # no sign
    (four("+3", "50"), gt(), 0.0, 1.0),
    (four(" 3 ", "50"), gt(), 1.0, 1.0),                 # spaces inside the tag are fine
    (four("3", "50 %"), gt(), 1.0, -1.0),                # no space before %
    (four("3", "-50%"), gt(), 1.0, -1.0),                # no sign
    (four("3", "+50"), gt(), 1.0, -1.0),
    (four("3", ".5"), gt(), 1.0, -1.0),                  # digits before a point
    (four("3", "50."), gt(), 1.0, -1.0),                 # and after it
    (four("3", "50%%"), gt(), 1.0, -1.0),
    (four("3", "about 50%"), gt(), 1.0, -1.0),
])
def test_paper_table_and_reads(response, target, ref_r, score_r):
    r = paper_reward(response, target)
    assert (r["ref"], r["score"], r["accuracy"]) == (pytest.approx(ref_r), pytest.approx(score_r), r["score"])
    assert r["overall"] == pytest.approx(0.1 * r["format"] + 0.6 * ref_r + 0.3 * score_r)


@pytest.mark.parametrize("pred_ref, target, expected_ref, expected_err", [
    ("3", gt("3"), 1.0, 0.0), ("4", gt("3"), 0.75, 0.25), ("1", gt("5"), 0.0, 1.0),
    ("9", gt("1"), 0.0, 1.0),                  # error capped at 1, the prediction is not range-checked
    ("0", gt("1"), 0.75, 0.25),                # 0 is digits: read, off by one of 4 steps
    ("2", gt("1", demos=2), 0.0, 1.0),
    ("1", gt("1", demos=1), 1.0, 0.0), ("2", gt("1", demos=1), 0.0, 1.0),   # max(demos - 1, 1)
    ("7", gt("2", demos=11), 0.5, 0.5),
    ("3", {"ref": "1", "score_percent": "50"}, 0.0, 1.0),    # demo_count missing -> 1
    ("2", gt("1", demos=0), 0.0, 1.0),                       # demo_count at least 1
    ("3", gt("1", demos="3"), 0.0, 1.0),                     # int("3"): (3 - 1) / 2
    ("2", gt(3, demos=5.9), 0.75, 0.25),                     # int(5.9) = 5
    ("3", gt(3.7), 1.0, 0.0),                                # int(3.7) = 3
    ("3", gt(" 3 "), 1.0, 0.0),                              # int() strips
])
def test_paper_ref_distance(pred_ref, target, expected_ref, expected_err):
    r = paper_reward(four(pred_ref, "50"), target)
    assert (r["ref"], r["ref_error"]) == (pytest.approx(expected_ref), pytest.approx(expected_err))


@pytest.mark.parametrize("score_text, gt_score, expected", [
    ("45%", "45", 1.0), ("45", "45", 1.0), ("30%", "45", 0.85), ("30", 45, 0.85),
    ("12.5%", "20", 0.925), ("45", "45.5", 0.995),
    ("0.45", "45", 1 - 44.55 / 100),        # always percent: 0.45 means 0.45 %
    ("150%", "90", 0.4),                     # not clamped to 100 before the distance
    ("250", "0", 0.0), ("100%", "0", 0.0),   # error capped at 1
])
def test_paper_score_distance(score_text, gt_score, expected):
    r = paper_reward(four("3", score_text), gt(score=gt_score))
    assert r["score"] == pytest.approx(expected)
    assert r["score_error"] == pytest.approx(1 - expected)


def test_paper_first_readable_tag_wins():
    # re.search finds the first tag whose content has the form, not the first tag
    assert paper_reward("<ref>x</ref> <ref>4</ref> <score>y</score> <score>40%</score>", gt())["ref"] == 0.75
    r = paper_reward("<ref>4</ref> <ref>3</ref> <score>40%</score> <score>50%</score>", gt())
    assert (r["ref"], r["score"]) == (0.75, pytest.approx(0.9))


@pytest.mark.parametrize("response, expected", [
    (four(), 1.0),
    (four("n/a", "n/a"), 1.0),
    ("  \n" + four() + "\n\n", 1.0),
    (four(" 12 ", "45.5"), 1.0),
    (four(ref_think="", score_think=""), 1.0),
    (four(ref_think="a <ref>9</ref> b"), 1.0),            # think blocks may hold anything
    (four() + four("4", "10%"), 1.0),                      # two answers: the first think block spans
    ("<ref_think>a</ref_think><ref>1</ref><score_think>b</score_think><score>5%</score>", 1.0),
    (four("N/A", "n/a"), 0.0), (four("n/a", "N/A"), 0.0),  # case-sensitive n/a
    ("<REF_THINK>a</REF_THINK><REF>1</REF><SCORE_THINK>b</SCORE_THINK><SCORE>5%</SCORE>", 0.0),
    ("Answer: " + four(), 0.0), (four() + " done", 0.0),
    ("<ref_think>a</ref_think>x<ref>1</ref><score_think>b</score_think><score>5%</score>", 0.0),
    ("<ref>1</ref><ref_think>a</ref_think><score_think>b</score_think><score>5%</score>", 0.0),
    ("<ref_think>a</ref_think><ref>1</ref><score>5%</score>", 0.0),
    (four("2.0"), 0.0), (four("-1"), 0.0), (four(score="45 %"), 0.0), (four(score="-5%"), 0.0),
    (four(score="5%%"), 0.0), (four(""), 0.0), (four(score=""), 0.0), ("", 0.0),
])
def test_paper_format(response, expected):
    assert paper_reward(response, gt())["format"] == expected


def test_paper_overall_keys_and_errors():
    r = paper_reward(four("4", "30%"), gt("3", "45"))
    assert r == pytest.approx({"overall": 0.1 * 1 + 0.6 * 0.75 + 0.3 * 0.85, "format": 1.0, "accuracy": 0.85,
                               "score": 0.85, "ref": 0.75, "ref_error": 0.25, "score_error": 0.15})
    na = paper_reward(four("n/a", "n/a"), NA_GT)
    assert (na["ref_error"], na["score_error"], na["overall"]) == (0.0, 0.0, pytest.approx(0.1 + 0.6 * 0.7 + 0.3 * 0.7))
    bad = paper_reward("", gt())
    assert (bad["ref_error"], bad["score_error"], bad["overall"]) == (1.0, 1.0, pytest.approx(-0.3))


# ---- ground truth ------------------------------------------------------------------------------

def record(closest, progress, demos=5):
    return Record(source="s", line=1, id="a", task_goal="g", visual_demo=tuple(f"{i}.jpg" for i in range(demos)),
                  text_demo=None, total_steps=demos - 1, observation="o.jpg", closest_idx=closest, progress=progress)


@pytest.mark.parametrize("closest, progress, expected", [
    (3, 0.45, {"ref": "3", "score_percent": "45", "demo_count": 5}),
    (2, 0.125, {"ref": "2", "score_percent": "12", "demo_count": 5}),    # round(12.5) = 12
    (2, 0.135, {"ref": "2", "score_percent": "14", "demo_count": 5}),    # 13.5 -> 14
    (2, 0.0141, {"ref": "2", "score_percent": "1", "demo_count": 5}),
    (None, None, {"ref": "n/a", "score_percent": "n/a", "demo_count": 5}),
])
def test_ground_truth_as_the_rl_builder_writes_it(closest, progress, expected):
    assert ground_truth(record(closest, progress)) == expected


def test_targets_records_dicts_and_json():
    response = four("4", "30%")
    by_record = REWARDS["paper"]([response], [record(3, 0.45)])
    assert by_record == REWARDS["paper"]([response], [gt("3", "45")])
    assert by_record == REWARDS["paper"]([response], [json.dumps(gt("3", "45"))])
    # the percent is the rounded one: 0.125 -> 12, so 12 % predicted is exact
    assert REWARDS["anti_hack"]([four("3", "12%")], [record(3, 0.125)])[0]["score"] == 1.0


@pytest.mark.parametrize("target, error", [
    ({"score_percent": "5"}, ValueError), ({"ref": "1"}, ValueError), ("{not json", ValueError),
    ("[1, 2]", TypeError), (42, TypeError),
    (gt("N/A"), ValueError), (gt(None), ValueError), (gt("3.0"), ValueError),   # int() fails
    (gt(score="45%"), ValueError), (gt(demos="five"), ValueError),              # float() / int() fail
])
def test_paper_bad_ground_truth_raises(target, error):
    with pytest.raises(error):
        paper_reward(four(), target)


# ---- anti_hack ---------------------------------------------------------------------------------

@pytest.mark.parametrize("response, target, ref_r, score_r", [
    # GT n/a: n/a in any case earns 0.8; anything else -0.3
    (four("n/a", "n/a"), NA_GT, 0.8, 0.8),
    (four("N/A", "N/a"), NA_GT, 0.8, 0.8),
    (four("3", "40%"), NA_GT, -0.3, -0.3),
    ("garbage", NA_GT, -0.3, -0.3),
    (four("n/a.", "none"), NA_GT, -0.3, -0.3),
    (four("3", "n/a"), gt("3", "n/a"), 1.0, 0.8),
    (four("n/a", "50"), gt(" N/A ", "50"), 0.8, 1.0),       # a GT n/a read the same way
    # GT numeric
    (four("n/a", "n/a"), gt(), -0.8, -0.8),
    (four("x", "y"), gt(), 0.0, 0.0),                        # unreadable
    ("no tags", gt(), 0.0, 0.0),
    ("<ref></ref><score></score>", gt(), 0.0, 0.0),         # an empty tag is no tag
    (four("5", "20%"), gt(), 1 - (2 / 4) ** 2, 0.7),
    (four("4", "50"), gt(), 1 - (1 / 4) ** 2, 1.0),
    (four("The No. 4 step", "50 %"), gt(), 1 - (1 / 4) ** 2, 1.0),   # first digits; % then strip
    (four("3.5", "1e2"), gt(), 1.0, 0.5),                    # "3.5" -> 3; float("1e2") = 100
    (four("-2", "-5"), gt(), 0.0, 0.45),                     # int("-2"): error 5/4 capped; -5 %
    (four("1_0", "50"), gt("10", demos=12), 1.0, 1.0),       # int() reads 1_0 as 10
    (four("9", "250"), gt("1"), 0.0, 0.0),                   # errors capped at 1
    (four("3", "about 40%"), gt(), 1.0, 0.0),                # float fails
    (four("3", "50"), gt("No. 3", 50), 1.0, 1.0),            # GT read like a prediction
    (four("3", "50"), gt(None, None), 0.0, 0.0),             # GT unreadable: "failed to parse"
    (four("n/a", "n/a"), gt(None, None), -0.8, -0.8),
    (four("3", "50"), gt(3.5, "50"), 0.0, 1.0),              # a non-integral GT ref reads as None
    ("<ref></ref><ref>4</ref><score>50</score>", gt(), 1 - (1 / 4) ** 2, 1.0),   # first non-empty tag
])
def test_anti_hack_table_and_reads(response, target, ref_r, score_r):
    r = anti_hack_reward(response, target)
    assert (r["ref"], r["score"], r["accuracy"]) == (pytest.approx(ref_r), pytest.approx(score_r), r["score"])
    assert r["overall"] == pytest.approx(0.2 * r["format"] + 0.5 * ref_r + 0.3 * score_r)


@pytest.mark.parametrize("score_text", ["nan", "NaN%", " -nan ", "inf", "-Infinity", "1e999"])
def test_anti_hack_non_finite_score_reads_as_no_number(score_text):
    # The official code: float("nan") parses and min/max keep NaN, so score and overall are NaN; the
    # guard reads it as no number. For +-inf the official value is already error 1, score 0 (kept).
    r = anti_hack_reward(four("3", score_text), gt())
    assert r == anti_hack_reward(four("3", "no number"), gt())
    # by hand: format 0.4 * 0 (the pattern wants digits) + 0.3 + 0.3; ref exact; score 0
    assert (r["score"], r["score_error"], r["ref"]) == (0.0, 1.0, 1.0)
    assert r["overall"] == pytest.approx(0.2 * 0.6 + 0.5 * 1.0 + 0.3 * 0.0)
    assert anti_hack_reward(four("3", score_text), NA_GT)["score"] == -0.3  # GT n/a: a non-n/a answer
    assert anti_hack_reward(four("n/a", score_text), gt())["hack_detected"] == 1.0


@pytest.mark.parametrize("name, digits, target, ref_r, ref_err", [
    # 400 digits: the official float division overflows (OverflowError); exact arithmetic gives error 1.
    ("paper", 400, gt(), 0.0, 1.0), ("anti_hack", 400, gt(), 0.0, 1.0),
    # past int()'s 4300-digit cap: the official paper reward reads no ref (0 / 1), the same value
    ("paper", 5000, gt(), 0.0, 1.0), ("anti_hack", 5000, gt(), 0.0, 1.0),
    ("paper", 5000, NA_GT, -1.0, 1.0), ("anti_hack", 5000, NA_GT, -0.3, 1.0),
])
def test_huge_refs_give_the_largest_error_not_an_exception(name, digits, target, ref_r, ref_err):
    r = REWARDS[name]([four("9" * digits, "50")], [target])[0]
    assert (r["ref"], r["ref_error"]) == (pytest.approx(ref_r), pytest.approx(ref_err))
    assert REWARDS[name]([four("7", "50")], [gt(demos=5)])[0]["ref_error"] == 1.0   # the cap at 1 as before
    assert REWARDS[name]([four("6", "50")], [gt(demos=5)])[0]["ref_error"] == 0.75


NASTY = [four(s, t) for s in ("3", "n/a", "nan", "inf", "9" * 400, "9" * 5000)
         for t in ("50", "n/a", "nan", "NaN%", "inf", "-inf", "1e999", "9" * 400, "")]


@pytest.mark.parametrize("name", list(REWARDS))
def test_no_reward_is_nan_or_inf(name):
    targets = [gt(), NA_GT, gt("3", "n/a"), gt("n/a", "50"), record(3, 0.45), record(None, None)]
    for target in targets:
        for r in REWARDS[name](NASTY, [target] * len(NASTY)):
            assert all(math.isfinite(v) for v in r.values()), (name, target, r)


@pytest.mark.parametrize("name", ["paper", "anti_hack"])
@pytest.mark.parametrize("target", [gt(score="nan"), gt(score="inf"), gt(score="-inf"),
                                    '{"ref": "3", "score_percent": NaN, "demo_count": 5}'])
def test_non_finite_ground_truth_score_raises(name, target):
    with pytest.raises(ValueError, match="ground truth key 'score_percent': .* not a finite percentage"):
        REWARDS[name]([four("3", "50")], [target])


def test_paper_ground_truth_ref_of_inf_is_a_clear_error():
    with pytest.raises(ValueError, match="ground truth key 'ref': cannot read inf as int"):
        paper_reward(four(), '{"ref": 1e400, "score_percent": "50"}')


@pytest.mark.parametrize("response, target, base, na_c, think_c", [
    (four("2", "40%"), gt(), 1.0, 1.0, 1.0),
    (four("n/a", "n/a", score_think="n/a"), NA_GT, 1.0, 1.0, 1.0),
    (four("N/A", "N/A", score_think="N/A"), NA_GT, 1.0, 1.0, 1.0),        # any case
    (four("n/a", "n/a", score_think="cannot tell"), NA_GT, 1.0, 1.0, 0.0),   # GT n/a: think must be n/a
    (four("2", "40%", score_think=" n/a "), gt(), 1.0, 1.0, 0.0),          # GT number: think must not be
    (four("n/a", "40%"), gt(), 1.0, 0.0, 1.0),                             # the hedge
    (four("2", "n/a"), gt(), 1.0, 0.0, 1.0),
    (four("Step 2", "40%"), gt(), 1.0, 1.0, 1.0),                          # any ref content
    ("<REF_THINK>a</REF_THINK><Ref>1</Ref><SCORE_THINK>b</SCORE_THINK><SCORE>5%</SCORE>", gt(), 1.0, 1.0, 1.0),
    (four("2", "40 %"), gt(), 0.0, 1.0, 1.0),                              # score form still strict
    (four("2", "-40%"), gt(), 0.0, 1.0, 1.0),
    (four(""), gt(), 0.0, 1.0, 1.0),                                       # empty ref
    ("ok " + four("2", "40%"), gt(), 0.0, 1.0, 1.0),
    ("<ref>2</ref>", gt(), 0.0, 1.0, 1.0),        # score missing: (False, None) on both sides
    ("<ref>2</ref>", NA_GT, 0.0, 1.0, 0.0),       # no score_think: "" is not n/a
])
def test_anti_hack_format_terms(response, target, base, na_c, think_c):
    r = anti_hack_reward(response, target)
    assert (r["format_base"], r["format_na_consistency"], r["format_think_consistency"]) == (base, na_c, think_c)
    assert r["format"] == pytest.approx(0.4 * base + 0.3 * na_c + 0.3 * think_c)


@pytest.mark.parametrize("response, hack", [
    (four("n/a", "40%"), 1.0), (four("n/a", "n/a"), 0.0), (four("2", "n/a"), 0.0), (four("2", "40%"), 0.0),
    ("<ref>n/a</ref>", 1.0),    # no score tag counts as "not n/a"
])
def test_anti_hack_hack_detected(response, hack):
    assert anti_hack_reward(response, gt())["hack_detected"] == hack


def test_anti_hack_errors_and_keys():
    r = anti_hack_reward(four("4", "30%"), gt("3", "45"))
    assert r == pytest.approx({
        "overall": 0.2 * 1 + 0.5 * (1 - 0.25 ** 2) + 0.3 * 0.85, "format": 1.0, "format_base": 1.0,
        "format_na_consistency": 1.0, "format_think_consistency": 1.0, "accuracy": 0.85, "score": 0.85,
        "ref": 1 - 0.25 ** 2, "ref_error": 0.25, "score_error": 0.15, "hack_detected": 0.0})
    assert anti_hack_reward(four("n/a", "n/a"), NA_GT)["ref_error"] == 0.0
    assert anti_hack_reward(four("3", "40%"), NA_GT)["score_error"] == 1.0


# ---- the registry and the trainer's call -------------------------------------------------------

def test_registry_batches_and_checks_lengths():
    responses = [four("1", "0%"), four("n/a", "n/a"), "junk"]
    targets = [gt("1", "0", 3), NA_GT, gt("2", "50", 4)]
    for name, one in (("paper", paper_reward), ("anti_hack", anti_hack_reward)):
        assert REWARDS[name](responses, targets) == [one(r, t) for r, t in zip(responses, targets)]
        with pytest.raises(ValueError, match="length mismatch"):
            REWARDS[name](responses, targets[:2])


def test_progress_rewards_builds_the_official_payload():
    responses = [four("1", "12%"), four("n/a", "n/a")]
    got = progress_rewards(responses, [1, None], [0.125, None], [3, 3], variant="paper")
    assert got == REWARDS["paper"](responses, [gt("1", "12", 3), gt("n/a", "n/a", 3)])
    assert got[0]["score"] == 1.0
    with pytest.raises(ValueError, match="unknown reward"):
        progress_rewards(responses, [1, None], [0.1, None], [3, 3], variant="hack")
    with pytest.raises(ValueError, match="length mismatch"):
        progress_rewards(responses, [1], [0.1, None], [3, 3])


# ---- the earlier readings ----------------------------------------------------------------------

NUM_DEMOS = 5


@pytest.mark.parametrize("gt_ref, gt_score, response, ref_r, score_r", [
    (None, None, four("n/a", "n/a"), 0.7, 0.7),
    (None, None, four("NA", "N/A"), 0.7, 0.7),            # any case, na too
    (None, None, four("3", "40%"), -1.0, -1.0),
    (None, None, "nothing here", -1.0, -1.0),
    (3, 0.5, four("n/a", "n/a"), 0.0, -1.0),
    (3, 0.5, four("x", "y"), 0.0, -1.0),
    (3, 0.5, four("4", "30 %"), 0.75, 0.8),               # space before % allowed
    (3, 0.5, four("4", "-10"), 0.75, 0.4),                # sign allowed
])
def test_paper_lenient_table(gt_ref, gt_score, response, ref_r, score_r):
    r = lenient_reward(response, gt_ref, gt_score, NUM_DEMOS, variant="paper_lenient")
    assert (r["ref"], r["score"]) == (pytest.approx(ref_r), pytest.approx(score_r))
    assert r["overall"] == pytest.approx(0.1 * r["format"] + 0.6 * ref_r + 0.3 * score_r)


def test_paper_lenient_format_is_one_tag_each():
    assert lenient_reward(four(), 2, 0.45, NUM_DEMOS)["format"] == 1.0
    assert lenient_reward(four() + four(), 2, 0.45, NUM_DEMOS)["format"] == 0.0
    assert lenient_reward(four(ref_think="<ref>3</ref>"), 2, 0.45, NUM_DEMOS)["format"] == 0.0


@pytest.mark.parametrize("response, expected_format", [
    (four("2", "40%"), 1.0), (four("n/a", "n/a"), 1.0), (four("n/a", "40%"), 0.4),
    (four("9", "40%"), 0.7), (four("2", "140%"), 0.7), ("ok " + four("2", "40%"), 0.6), ("<ref>2</ref>", 0.0),
])
def test_anti_hack_gt_free_format_terms(response, expected_format):
    r = lenient_reward(response, 2, 0.4, NUM_DEMOS, variant="anti_hack_gt_free")
    assert r["format"] == pytest.approx(expected_format)


def test_lenient_registry_and_weights():
    r = REWARDS["anti_hack_gt_free"]([four("5", "20%")], [record(3, 0.5)])[0]
    assert (r["ref"], r["score"]) == (pytest.approx(1 - (2 / 4) ** 2), pytest.approx(0.7))
    assert REWARDS["paper_lenient"]([four()], [gt("2", "45")]) == [lenient_reward(four(), 2, 0.45, 5)]
    r = lenient_reward(four("3", "50%"), 3, 0.5, NUM_DEMOS, weights={"format": 1, "ref": 1, "score": 1})
    assert r["overall"] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="format, ref, score"):
        lenient_reward(four(), 3, 0.5, NUM_DEMOS, weights={"format": 1.0})


@pytest.mark.parametrize("gt_ref, gt_score, num_demos, variant", [
    (0, 0.5, 5, "paper_lenient"), (6, 0.5, 5, "paper_lenient"), (2, 1.5, 5, "paper_lenient"),
    (2, 0.5, 0, "paper_lenient"), (2, "50%", 5, "paper_lenient"), (2, 0.5, 5, "paper"),
])
def test_lenient_bad_targets_raise(gt_ref, gt_score, num_demos, variant):
    with pytest.raises(ValueError):
        lenient_reward(four(), gt_ref, gt_score, num_demos, variant=variant)
