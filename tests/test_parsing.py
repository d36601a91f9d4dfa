"""Output parser: eval rule (think/direct), the reward reads of each reward function, the lenient format
check (docs/rewards.md)."""
import pytest

from data_pipeline.parsing import (NA, NUMBER, UNPARSEABLE, parse_direct, parse_response, parse_think, read_ref,
                                   read_reward_score, strict_format_ok, paper_read_ref, paper_read_score,
                                   anti_hack_ref_value, anti_hack_score_value, anti_hack_ref_text,
                                   anti_hack_score_text, anti_hack_score_think, official_percent_text,
                                   official_runner_fields)


def four(ref="2", score="45%", ref_think="frame 2 matches", score_think="a bit after"):
    return (f"<ref_think>{ref_think}</ref_think><ref>{ref}</ref>"
            f"<score_think>{score_think}</score_think><score>{score}</score>")


@pytest.mark.parametrize("score_text, expected", [
    ("45%", 0.45), ("45 %", 0.45), (" 33.5% ", 0.335), ("0.45", 0.45), ("45", 0.45), ("1", 1.0),
    ("1.5", 0.015), ("100%", 1.0), ("150%", 1.0), ("-5%", 0.0), ("0", 0.0), (".5", 0.5),
])
def test_think_score_eval_rule(score_text, expected):
    parsed = parse_think(four(score=score_text))
    assert parsed.status == NUMBER and not parsed.na
    assert parsed.score == pytest.approx(expected)
    assert parsed.ref == 2


@pytest.mark.parametrize("score_text", ["n/a", "N/A", "na", " NA "])
def test_think_score_na_is_explicit(score_text):
    parsed = parse_think(four(ref="n/a", score=score_text))
    assert parsed.na and parsed.status == NA and not parsed.unparseable
    assert parsed.score is None and parsed.ref is None


@pytest.mark.parametrize("response", [
    four(score="about half"), four(score=""), four(score="45%%"), "no tags at all 45%",
    "<score>45%", "<ref>3</ref>",
])
def test_think_missing_or_garbled_score_is_unparseable_na(response):
    parsed = parse_think(response)
    assert parsed.na and parsed.unparseable and parsed.status == UNPARSEABLE


def test_think_ref_first_integer_and_first_score_tag():
    parsed = parse_think("<ref>No. 8 then 3</ref> text <score>20%</score> <score>90%</score>")
    assert parsed.ref == 8 and parsed.score == pytest.approx(0.2)
    assert parse_think(four(ref="step")).ref is None
    multiline = "<score>\n 70%\n</score>"
    assert parse_think(multiline).score == pytest.approx(0.7)


@pytest.mark.parametrize("text, expected", [
    ("45%", 0.45), ("The progress is 45.5 %.", 0.455), ("0.3", 0.3), ("30", 0.3), ("  7  ", 0.07),
    ("step 3 of 4, roughly 0.8", 0.03),   # any number: the first one
    ("roughly 0.8 done", 0.8), ("it is 80 percent", 0.8), ("between 2 and 60%", 0.6),
])
def test_direct_order(text, expected):
    parsed = parse_direct(text)
    assert parsed.status == NUMBER and parsed.score == pytest.approx(expected)


@pytest.mark.parametrize("text", ["n/a", "NA", "None", "null", "-", " n/a. "])
def test_direct_na_words(text):
    parsed = parse_direct(text)
    assert parsed.na and parsed.status == NA


def test_direct_no_number_is_unparseable():
    assert parse_direct("I cannot tell").unparseable
    assert parse_direct("").unparseable


def test_parse_response_mode():
    assert parse_response("45", "direct").score == pytest.approx(0.45)
    assert parse_response("45", "think").unparseable
    with pytest.raises(ValueError, match="unknown parse mode"):
        parse_response("45", "cot")


@pytest.mark.parametrize("score_text, status, value", [
    ("45%", NUMBER, 45.0), ("45", NUMBER, 45.0), ("0.45", NUMBER, 0.45), ("12.5 %", NUMBER, 12.5),
    ("n/a", NA, None), ("N/A", NA, None), ("half", UNPARSEABLE, None), ("", UNPARSEABLE, None),
])
def test_reward_score_is_percent(score_text, status, value):
    assert read_reward_score(four(score=score_text)) == (status, value)


def test_reward_reads_ignore_position_and_missing_tags():
    assert read_reward_score("junk <score>30</score> more <ref>2</ref>") == (NUMBER, 30.0)
    assert read_reward_score("no score") == (UNPARSEABLE, None)
    assert read_ref("junk <ref> 4 </ref>") == (NUMBER, 4)
    assert read_ref("<ref>n/a</ref>") == (NA, None)
    assert read_ref("<ref>none</ref>") == (UNPARSEABLE, None)
    assert read_ref("nothing") == (UNPARSEABLE, None)


@pytest.mark.parametrize("response", [
    four(),
    four(ref="n/a", score="n/a"),
    four(ref="N/A", score="N/A"),
    four(score="45"), four(score="45.5"), four(score=" 45 % "), four(ref=" 12 "),
    "  \n" + four() + "\n\n",
    "<ref_think>a\nb</ref_think>\n\n<ref>1</ref>\n<score_think>\nc\n</score_think>\t<score>0%</score>",
    four(ref_think="", score_think=""),
])
def test_strict_format_accepts(response):
    assert strict_format_ok(response)


@pytest.mark.parametrize("response", [
    "Answer: " + four(),                                   # text before
    four() + " done",                                      # text after
    "<ref_think>a</ref_think>x<ref>1</ref><score_think>b</score_think><score>5%</score>",  # text between
    "<ref>1</ref><ref_think>a</ref_think><score_think>b</score_think><score>5%</score>",   # wrong order
    "<ref_think>a</ref_think><ref>1</ref><score>5%</score><score_think>b</score_think>",   # wrong order
    "<ref_think>a</ref_think><ref>1</ref><score>5%</score>",                               # missing block
    four(ref="two"), four(ref="2.0"), four(ref="-1"), four(score="about 5%"), four(score="5%%"),
    four(score="-5%"), four(score="na"), four(ref=""), four(score=""),
    # a second answer hidden inside a think block
    four(score_think="x</score_think><score>9%</score><score_think>y"),
    four(ref_think="<ref>3</ref>"),
    "<REF_THINK>a</REF_THINK><REF>1</REF><SCORE_THINK>b</SCORE_THINK><SCORE>5%</SCORE>",
    "",
])
def test_strict_format_rejects(response):
    assert not strict_format_ok(response)


# ---- the official reward reads (values worked out from visual_demo_reward.py / progresslm_reward.py) ----

@pytest.mark.parametrize("text, ref, score", [
    ("<ref>3</ref><score>45%</score>", (NUMBER, 3), (NUMBER, 45.0)),
    ("<ref> 3 </ref><score> 0.45 </score>", (NUMBER, 3), (NUMBER, 0.45)),
    ("<ref>n/a</ref><score>n/a</score>", (NA, None), (NA, None)),
    ("<ref>N/A</ref><score>NA</score>", (UNPARSEABLE, None), (UNPARSEABLE, None)),
    ("<ref>x</ref><ref>4</ref><score>4 %</score><score>150%</score>", (NUMBER, 4), (NUMBER, 150.0)),
    ("<REF>3</REF><SCORE>5</SCORE>", (UNPARSEABLE, None), (UNPARSEABLE, None)),
])
def test_paper_reads(text, ref, score):
    assert paper_read_ref(text) == ref
    assert paper_read_score(text) == score


@pytest.mark.parametrize("raw, expected", [
    (3, (False, 3)), (3.0, (False, 3)), (3.5, (False, None)), (True, (False, 1)), (None, (False, None)),
    (" N/A ", (True, None)), ("+3", (False, 3)), ("-3", (False, -3)), ("Step 12 of 14", (False, 12)),
    ("3.9", (False, 3)), ("none", (False, None)), ("inf", (False, None)), ([3], (False, None)),
])
def test_anti_hack_ref_value(raw, expected):
    assert anti_hack_ref_value(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    (45, (False, 45.0)), ("45%", (False, 45.0)), ("45 %", (False, 45.0)), (" n/A", (True, None)),
    ("-5", (False, -5.0)), ("1e2", (False, 100.0)), ("45%%", (False, None)), ("about 4", (False, None)),
    (None, (False, None)),
])
def test_anti_hack_score_value(raw, expected):
    assert anti_hack_score_value(raw) == expected


def test_anti_hack_tag_reads():
    text = "<REF></REF><Ref> No. 2 </Ref><score_think>\n N/A \n</score_think><SCORE>50</SCORE>"
    assert (anti_hack_ref_text(text), anti_hack_score_text(text), anti_hack_score_think(text)) == ("No. 2", "50", "N/A")
    assert (anti_hack_ref_text("x"), anti_hack_score_text("x"), anti_hack_score_think("x")) == (None, None, "")


# ---- the official runners' read (parse_*_demo_response of eval/qwen25vl/codes/run_*_demo*.py) ----

def answer(ref, score):
    return f"<ref_think>t</ref_think>\n<ref>{ref}</ref>\n<score_think>t</score_think>\n<score>{score}</score>"


def test_official_percent_text_truncates():
    # int(fraction * 100) as the official runners write it: 0.29 * 100 = 28.999999999999996 -> 28
    assert [official_percent_text(p) for p in (0.29, 0.57, 0.885, 0.38, 1.0, 0.0)] == ["28%", "56%", "88%", "38%",
                                                                                   "100%", "0%"]


@pytest.mark.parametrize("text, fields", [
    (answer(2, "38%"), ("2", "38%", True)),
    (answer("The No. 2 demo image is the most relevant frame", " 0.38 "), ("2", "38%", True)),
    (answer("NA", "N/A"), ("n/a", "n/a", True)),
    (answer("n/a (no valid reference found)", "n/a (no valid progress estimation)"),
     ("n/a (no valid reference found)", None, False)),        # the hint copied: the score does not parse
    (answer("x", "45"), ("x", "45%", True)),                  # a bare number > 1 is percent
    (answer(2, "150%"), ("2", "100%", True)), (answer(2, "-5%"), ("2", "0%", True)),   # clamped
    (answer(2, "45 %"), ("2", "45%", True)),                  # float() takes "45 "
    (answer(2, "about 40%"), ("2", None, False)),
    ("<ref>3</ref> no score", ("3", None, False)),
    ("<score>29%</score>", ("", "28%", True)),                # no ref tag -> ""; 0.29 -> 28 %
])
def test_official_runner_fields(text, fields):
    assert official_runner_fields(text) == fields


def test_a_ref_past_ints_digit_cap_reads_as_no_ref():
    # int() refuses more than 4300 digits (Python >= 3.11): the official paper reward's try/except reads
    # that as no ref; the other reads follow (the official anti_hack code raises there).
    huge = "9" * 5000
    assert paper_read_ref(f"<ref>{huge}</ref>") == (UNPARSEABLE, None)
    assert read_ref(f"<ref>{huge}</ref>") == (UNPARSEABLE, None)
    assert parse_think(four(ref=huge)).ref is None and parse_think(four(ref=huge)).score == pytest.approx(0.45)
    assert anti_hack_ref_value(huge) == (False, None) and anti_hack_ref_value(f"No. {huge}") == (False, None)
    assert paper_read_ref(f"<ref>{'9' * 400}</ref>") == (NUMBER, int("9" * 400))  # under the cap: read
