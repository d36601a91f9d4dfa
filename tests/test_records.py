import json
import logging

import pytest

from data_pipeline.records import (
    ChatRecord, RecordError, SkippedLine, file_format, load_chat_records, load_records, parse_percent, read_records,
)

# One line per official variant, laid out as in the released Progress-Bench files.
SAME_VIEW = {
    "id": "traj_7", "task_goal": "put the red cup on the plate",
    "visual_demo": ["f0.jpg", "f1.jpg", "f2.jpg", "f3.jpg", "f4.jpg"], "total_steps": "4",
    "stage_to_estimate": ["obs_0223.jpg"], "closest_idx": "2", "delta": "-11%",
    "progress_score": "33%", "data_source": "sim",
}
CROSS_VIEW = dict(SAME_VIEW, camera_combination="camera_left+camera_top", stage_to_estimate=["obs_9.jpg"])
TEXT = {
    "id": "t1", "task_goal": "open the drawer",
    "text_demo": ["[left] reach the handle", "[left] grasp the handle", "pull", "release", "retract"],
    "total_steps": 5, "stage_to_estimate": "obs_3.jpg", "closest_idx": 1, "progress_score": "20%",
    "data_source": "sim",
}
TEXT_NA = dict(TEXT, closest_idx="n/a", progress_score="n/a")
VISUAL_NA = dict(SAME_VIEW, closest_idx="n/a", progress_score="n/a", delta="n/a",
                 stage_to_estimate=["camera_front_0223_edit.jpg"])
HUMAN = dict(SAME_VIEW, progress_score="1.41%", closest_idx=1, total_steps=4, delta="0.5%")


def write_jsonl(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_parse_percent():
    assert parse_percent("33%") == pytest.approx(0.33)
    assert parse_percent("1.41%") == pytest.approx(0.0141)
    assert parse_percent(45) == pytest.approx(0.45)
    assert parse_percent("45") == pytest.approx(0.45)
    assert parse_percent(0.3) == pytest.approx(0.3)
    assert parse_percent("-11%") == pytest.approx(-0.11)
    assert parse_percent(" 100% ") == pytest.approx(1.0)
    for na in ("n/a", "NA", "N/A", "na"):
        assert parse_percent(na) is None
    for bad in ("abc", "", "%", None, [33], True, "nan%", float("inf")):
        with pytest.raises(ValueError):
            parse_percent(bad)


def test_all_official_variants(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [SAME_VIEW, CROSS_VIEW, "", TEXT, TEXT_NA, VISUAL_NA, HUMAN])
    same, cross, text, text_na, vis_na, human = load_records(path)
    assert same.kind == "visual" and same.total_steps == 4 and same.num_demos == 5
    assert same.observation == "obs_0223.jpg" and same.closest_idx == 2
    assert same.progress == pytest.approx(0.33) and same.delta == pytest.approx(-0.11)
    assert same.key == ("mixed", "traj_7", "obs_0223.jpg") and same.line == 1 and same.answerable
    assert cross.camera_combination == "camera_left+camera_top" and cross.line == 2
    assert text.kind == "text" and text.num_demos == 5 and text.observation == "obs_3.jpg"
    assert text.delta is None and text.progress == pytest.approx(0.2) and text.line == 4
    assert text.text_demo[0] == "[left] reach the handle"
    for rec in (text_na, vis_na):
        assert not rec.answerable and rec.closest_idx is None and rec.progress is None
    assert vis_na.delta is None
    assert human.progress == pytest.approx(0.0141) and human.delta == pytest.approx(0.005)
    assert same.response is None


def test_response_carried(tmp_path):
    answer = "<ref_think>a</ref_think><ref>2</ref><score_think>b</score_think><score>33%</score>"
    (rec,) = load_records(write_jsonl(tmp_path / "sft.jsonl", [dict(SAME_VIEW, response=answer)]))
    assert rec.response == answer


@pytest.mark.parametrize("bad, field, words", [
    ("{not json", None, "bad JSON"),
    (dict(SAME_VIEW, closest_idx="6"), "closest_idx", "outside 1..5"),
    (dict(SAME_VIEW, closest_idx="0"), "closest_idx", "outside"),
    (dict(TEXT, closest_idx=6), "closest_idx", "outside 1..5"),
    (dict(SAME_VIEW, progress_score="thirty%"), "progress_score", "not a percentage"),
    (dict(SAME_VIEW, progress_score="130%"), "progress_score", "outside"),
    (dict(SAME_VIEW, delta="x"), "delta", "not a percentage"),
    (dict(SAME_VIEW, stage_to_estimate=["a.jpg", "b.jpg"]), "stage_to_estimate", "one-element"),
    (dict(SAME_VIEW, total_steps="four"), "total_steps", "integer"),
    (dict(SAME_VIEW, text_demo=["x"] * 4), "visual_demo/text_demo", "exactly one"),
    (dict(SAME_VIEW, closest_idx="n/a"), "closest_idx/progress_score", "both"),
])
def test_errors_name_file_line_field(tmp_path, bad, field, words):
    path = write_jsonl(tmp_path / "b.jsonl", [SAME_VIEW, bad])
    with pytest.raises(RecordError) as info:
        load_records(path)  # not one of the official skips: raised by default
    err = info.value
    assert not isinstance(err, SkippedLine)
    assert err.line == 2 and err.field == field
    msg = str(err)
    assert f"{path}:2" in msg and words in msg
    if field:
        assert f"'{field}'" in msg


def test_image_root(tmp_path):
    root = tmp_path / "images"
    (root / "traj_7").mkdir(parents=True)
    for name in SAME_VIEW["visual_demo"] + ["obs_0223.jpg"]:
        (root / "traj_7" / name).write_bytes(b"x")
    path = write_jsonl(tmp_path / "v.jsonl", [SAME_VIEW])
    assert len(load_records(path, image_root=str(root))) == 1
    (root / "traj_7" / "f3.jpg").unlink()
    with pytest.raises(RecordError, match=r"v.jsonl:1: field 'visual_demo': image file not found: .*traj_7/f3.jpg"):
        load_records(path, image_root=str(root))
    assert len(load_records(path)) == 1  # without an image root the files are not checked


# The lines the official loaders skip (eval/qwen25vl/codes/datasets/*_demo_dataset.py), one per reason.
OFFICIAL_SKIPS = [
    ({k: v for k, v in SAME_VIEW.items() if k != "task_goal"}, "task_goal", "missing field(s) task_goal"),
    ({k: v for k, v in TEXT.items() if k not in ("progress_score", "closest_idx")}, "progress_score",
     "missing field(s) progress_score, closest_idx"),
    ({k: v for k, v in TEXT.items() if k != "text_demo"}, "visual_demo/text_demo", "missing field(s) visual_demo/text_demo"),
    (dict(TEXT_NA, task_goal=""), "task_goal", "non-empty string"),  # text-unanswerable.jsonl line 237
    (dict(TEXT, task_goal="   "), "task_goal", "non-empty string"),
    (dict(SAME_VIEW, total_steps="3"), "visual_demo", "has 5 frames, expected total_steps + 1 = 4"),
    (dict(TEXT, total_steps=4), "text_demo", "has 5 steps, expected total_steps = 4"),  # raw_rl mismatches
    (dict(TEXT_NA, total_steps="6"), "text_demo", "has 5 steps, expected total_steps = 6"),
]


@pytest.mark.parametrize("bad, field, words", OFFICIAL_SKIPS)
def test_official_skips_are_skipped_warned_and_counted(tmp_path, caplog, bad, field, words):
    path = write_jsonl(tmp_path / "m.jsonl", [SAME_VIEW, "", bad, TEXT])
    with caplog.at_level(logging.WARNING):
        records, skipped = read_records(path)
    assert [r.line for r in records] == [1, 4]
    assert [(e.line, e.field) for e in skipped] == [(3, field)] and words in skipped[0].reason
    assert f"m.jsonl:3: field '{field}'" in caplog.text and words in caplog.text
    assert "skipped 1 line(s)" in caplog.text and "kept 2" in caplog.text
    with pytest.raises(SkippedLine) as info:
        load_records(path, strict=True)
    assert info.value.line == 3 and f"{path}:3" in str(info.value)


def test_every_line_skipped_is_an_error(tmp_path):
    chat = {"messages": [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "a"}],
            "images": ["a.jpg"]}
    path = write_jsonl(tmp_path / "chat.jsonl", [chat, chat])
    with pytest.raises(RecordError, match=r"chat.jsonl:1: .*all 2 line\(s\) would be skipped \(it looks like a chat file\)"):
        load_records(path)
    assert len(load_chat_records(path)) == 2
    assert load_records(write_jsonl(tmp_path / "empty.jsonl", [""])) == []


def test_bom_junk_and_truncation_name_the_line(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (json.dumps(SAME_VIEW) + "\n" + json.dumps(TEXT) + "\n").encode())
    assert [r.line for r in load_records(path)] == [1, 2]  # a byte-order mark (Windows editors) is ignored
    path.write_bytes((json.dumps(SAME_VIEW) + "\n").encode() + b'{"id": "\xff\xfe"}\n')
    with pytest.raises(RecordError, match=r"bom.jsonl:2: not UTF-8"):
        load_records(path)
    path.write_text(json.dumps(SAME_VIEW) + "\n" + json.dumps(TEXT)[:40])
    with pytest.raises(RecordError, match=r"bom.jsonl:2: bad JSON"):
        load_records(path)


def test_file_format(tmp_path):
    assert file_format(write_jsonl(tmp_path / "a.jsonl", ["", SAME_VIEW])) == "bench"
    assert file_format(write_jsonl(tmp_path / "b.jsonl", [{"messages": [], "images": []}])) == "chat"
    assert file_format(write_jsonl(tmp_path / "c.jsonl", [{"response": "x", "meta_data": {"id": "t"}}])) == "results"
    assert file_format(write_jsonl(tmp_path / "d.jsonl", [{"setting": "s", "id": "t", "stage": "o"}])) == "predictions"
    assert file_format(write_jsonl(tmp_path / "e.jsonl", ["{bad", ""])) is None


def test_empty_text_steps_load(tmp_path):
    # raw_train/text_demo/h5_tienkung_xsens_text_train_all.jsonl has empty strings among the steps
    (rec,) = load_records(write_jsonl(tmp_path / "t.jsonl", [dict(TEXT, text_demo=["a", "", "c", "d", "e"])]))
    assert rec.text_demo[1] == ""
    with pytest.raises(RecordError, match="'visual_demo'"):
        load_records(write_jsonl(tmp_path / "v.jsonl", [dict(SAME_VIEW, visual_demo=["a", "", "c", "d", "e"])]))


def test_chat_records(tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (root / name).write_bytes(b"x")
    good = {"messages": [{"role": "system", "content": "You estimate progress."},
                         {"role": "user", "content": "Demo <image> 0%\n\nNow <image>"},
                         {"role": "assistant", "content": "<score>50%</score>"}],
            "images": ["a.jpg", "b.jpg"]}
    path = write_jsonl(tmp_path / "chat.jsonl", [good])
    (rec,) = load_chat_records(path, image_root=str(root))
    assert isinstance(rec, ChatRecord)
    assert rec.messages[1] == ("user", "Demo <image> 0%\n\nNow <image>")
    assert rec.images == (str(root / "a.jpg"), str(root / "b.jpg"))
    bads = [
        (dict(good, images=["a.jpg"]), "images", "placeholders"),
        (dict(good, messages=good["messages"][:2]), "messages", "assistant"),
        (dict(good, messages=[{"role": "bot", "content": "x"}]), "messages[0]", "role"),
        ({"images": []}, "messages", "missing"),
        (dict(good, images=["a.jpg", "zzz.jpg"]), "images", "not found"),
    ]
    for bad, field, words in bads:
        p = write_jsonl(tmp_path / "c.jsonl", [bad])
        with pytest.raises(RecordError) as info:
            load_chat_records(p, image_root=str(root))
        assert info.value.field == field and words in str(info.value) and info.value.line == 1


def test_array_record_conversion_skips_as_the_loader(tmp_path, caplog):
    from array_record.python.array_record_module import ArrayRecordReader

    from data_pipeline.array_record import convert, decode_entry

    path = write_jsonl(tmp_path / "rl.jsonl", [TEXT, dict(TEXT_NA, task_goal=""), "", TEXT_NA])
    with caplog.at_level(logging.WARNING):
        (shard,) = convert([path], str(tmp_path / "ar"))
    assert "rl.jsonl:2: field 'task_goal'" in caplog.text and "skipped 1 line(s)" in caplog.text
    reader = ArrayRecordReader(shard)
    assert [decode_entry(reader.read([i])[0]).line for i in range(reader.num_records())] == [1, 4]
    reader.close()
    bad = write_jsonl(tmp_path / "bad.jsonl", [TEXT, dict(TEXT, closest_idx=9)])
    with pytest.raises(RecordError, match="bad.jsonl:2: field 'closest_idx'"):
        convert([bad], str(tmp_path / "ar2"))


def test_errors_survive_pickling():
    import pickle

    for err in (RecordError("f.jsonl", 3, "closest_idx", "bad"), SkippedLine("f.jsonl", 4, "task_goal", "empty")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err) and (back.line, back.field) == (err.line, err.field)
