"""The tools of docs/learning.md: the blind baselines of the demo's Table 1, the vision probes of
tools/probe_vision.py, the blank-observation ablation and the skill files of tools/skill_data.py."""
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from data_pipeline.pipeline import make_dataset
from data_pipeline.records import load_records, parse_chat_record
from data_pipeline.tokenizer import load_tokenizer
from progress_jax import handover
from progress_jax.eval import baselines
from tools import probe_vision, skill_data


def _write_bench(tmp_path, rows, name="visual_same_view"):
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _visual(i, steps, obs, closest, progress):
    return {"id": f"t{i}", "task_goal": "put the cube on the plate",
            "visual_demo": [f"f{k}.png" for k in range(steps + 1)], "total_steps": str(steps),
            "stage_to_estimate": [obs], "closest_idx": str(closest), "delta": "+0%",
            "progress_score": progress, "data_source": "test"}


def test_constant_baseline_is_the_nse_definition(tmp_path):
    truths = [0.1, 0.3, 0.5, 0.8, 1.0]
    rows = [_visual(i, 4, "o.png", 1, f"{round(100 * g)}%") for i, g in enumerate(truths)]
    rows.append(dict(_visual(9, 4, "o.png", 1, "n/a"), closest_idx="n/a"))
    bench = {"visual_same_view": load_records(_write_bench(tmp_path, rows))}
    for value in (0.25, 0.5, 0.7):
        want = np.mean([abs(g - value) / max(g, 1 - g) for g in truths]) * 100
        m = baselines.constant_metrics(bench, value)
        assert m["vision"]["nse"] == pytest.approx(want)
        assert m["vision"]["uda"] == 0.0 and m["vision"]["afrr"] == 0.0 and m["vision"]["prc"] is None
    mean = baselines.training_mean(bench["visual_same_view"])
    assert mean == pytest.approx(np.mean(truths))
    name, best = baselines.best_constant(bench, mean)
    scores = {v: baselines.constant_metrics(bench, v)["macro"]["nse"] for v in (0.25, 0.5, mean)}
    assert best["macro"]["nse"] == min(scores.values())
    assert name.startswith("constant")


def test_training_mean_needs_an_answerable_record(tmp_path):
    rows = [dict(_visual(0, 2, "o.png", 1, "n/a"), closest_idx="n/a")]
    with pytest.raises(ValueError, match="no answerable"):
        baselines.training_mean(load_records(_write_bench(tmp_path, rows)))


def _copied_observations(tmp_path, steps=4, n=3):
    """n trajectories of noise frames whose observation copies demo frame (i + 1) mod (steps + 1)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        folder = tmp_path / "images" / f"t{i}"
        folder.mkdir(parents=True)
        frames = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(steps + 1)]
        for k, f in enumerate(frames):
            Image.fromarray(f).save(folder / f"f{k}.png")
        k = (i + 1) % (steps + 1)
        Image.fromarray(frames[k]).save(folder / "o.png")
        rows.append(_visual(i, steps, "o.png", k + 1, f"{100 * k // steps}%"))
    return _write_bench(tmp_path, rows)


def test_matching_finds_the_demo_frame_the_observation_copies(tmp_path):
    """Observations that are exact copies of one demo frame: the nearest features are that frame's,
    whatever the (random) weights, if every image's features land at its own tokens."""
    steps = 4
    path = _copied_observations(tmp_path, steps)
    cfg = probe_vision.eval_config.get_config("demo")
    model = probe_vision.loading.load_policy(cfg, None, "")
    tokenizer = probe_vision.loading.load_tokenizer(cfg)
    records = load_records(path)
    feats = probe_vision.image_features(model, tokenizer, records, str(tmp_path / "images"), cfg)
    assert [f.shape[0] for f in feats] == [steps + 1 + 1] * 3
    acc, nse = probe_vision.matching(records, feats)
    assert acc == 1.0 and nse == 0.0


def test_probe_reads_a_trained_run_with_its_own_preset(tmp_path, capsys):
    """--trained of a nano run: the probe builds the preset the run trained (trainable.json), not the
    demo's tiny one, whose shapes differ."""
    path = _copied_observations(tmp_path, 2, n=4)
    bias = np.full((4, 128), 0.5, np.float32)  # the nano preset's k_proj bias: 8 heads of 16 (tiny: (4, 64))
    final = str(tmp_path / "final")
    handover.save_trainable(final, {"layers/self_attn/k_proj/bias": bias}, {
        "lora": {"rank": 0, "alpha": 16.0, "targets": "x"}, "model_path": "", "model_preset": "nano"})
    assert probe_vision.main(["--bench", path, "--train", path, "--trained", final, "--samples", "4"]) == 0
    assert f"| {os.path.basename(path)} | 4 | 100.0 | 0.0 |" in capsys.readouterr().out


def test_linear_probe_recovers_a_linear_target():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6))
    y = np.clip(0.5 + 0.1 * x @ np.array([1.0, -0.5, 0.3, 0.0, 0.2, 0.8]), 0, 1)
    predict = probe_vision.fit_linear(x[:300], y[:300])
    assert np.mean(np.abs(predict(x[300:]) - y[300:])) < 0.01


def test_blank_observation_greys_the_observation_only(tmp_path):
    path = _copied_observations(tmp_path, n=1)
    batches = {}
    for blank in (False, True):
        ds = make_dataset([path], str(tmp_path / "images"), load_tokenizer(None), with_answers=False, batch_size=1,
                          length_buckets=(1024,), patch_buckets=(512,), image_buckets=(8,), min_pixels=112 * 112,
                          max_pixels=112 * 112, shuffle=False, blank_observation=blank)
        batches[blank] = next(iter(ds))
    normal, blank = batches[False], batches[True]
    np.testing.assert_array_equal(normal["input_ids"], blank["input_ids"])
    np.testing.assert_array_equal(normal["image_grid_thw"], blank["image_grid_thw"])
    per_image = 64  # 112 x 112 px: 8 x 8 patches of 14 px
    demo, obs = slice(0, 5 * per_image), slice(5 * per_image, 6 * per_image)
    np.testing.assert_array_equal(normal["pixel_values"][demo], blank["pixel_values"][demo])
    grey = blank["pixel_values"][obs].reshape(per_image, 3, -1)  # channel-major patches
    assert np.ptp(grey, axis=(0, 2)).max() < 1e-6  # one value per channel: flat grey
    assert np.ptp(normal["pixel_values"][obs]) > 1.0  # the real observation is noise


@pytest.mark.parametrize("task", ["color", "side", "relation"])
def test_skill_data_answers_are_what_the_pixels_show(tmp_path, task):
    """tools/skill_data.py: each row parses as an SFT chat record, and its answer is read back from
    the image's pixels (the colour of the square; the centre of its pixels against the middle; the
    red pixels' centre against the blue ones')."""
    path = skill_data.write(str(tmp_path), task, 40, seed=3, size=112)
    answers = []
    for line, text in enumerate(open(path), 1):
        record = parse_chat_record(json.loads(text), task, path, line, str(tmp_path))
        pixels = np.asarray(Image.open(record.images[0]).convert("RGB")).astype(int)
        answer = record.messages[-1][1]
        answers.append(answer)

        def columns(rgb):
            return np.nonzero((pixels == rgb).all(-1))[1]

        if task == "color":
            assert columns(skill_data.COLORS[answer]).size > 0
            assert (pixels != skill_data.GREY).any(-1).sum() == columns(skill_data.COLORS[answer]).size
        elif task == "side":
            painted = np.nonzero((pixels != skill_data.GREY).any(-1))[1]
            assert (painted.mean() < 56) == (answer == "left")
        else:
            red, blue = columns(skill_data.COLORS["red"]), columns(skill_data.COLORS["blue"])
            assert red.size and blue.size
            assert (red.mean() < blue.mean()) == (answer == "left")
    assert len(set(answers)) > 1  # both (all) answers occur


def _corner(image, name):
    """The top-left pixel of a skill image's square of that colour."""
    return np.argwhere((image == skill_data.COLORS[name]).all(-1)).min(0)


def test_skill_data_match_rows_repeat_the_frame_they_name(tmp_path):
    """tools/skill_data.py --task match: four images a row; the last is pixel for pixel the frame the
    answer names and differs from the others; the blue square stays where it is and the red one
    moves from frame to frame."""
    path = skill_data.write(str(tmp_path), "match", 40, seed=3, size=112)
    answers = []
    for line, text in enumerate(open(path), 1):
        record = parse_chat_record(json.loads(text), "match", path, line, str(tmp_path))
        images = [np.asarray(Image.open(p).convert("RGB")).astype(int) for p in record.images]
        assert len(images) == skill_data.FRAMES + 1
        answer = int(record.messages[-1][1])
        answers.append(answer)
        *frames, observation = images
        same = [bool((observation == f).all()) for f in frames]
        assert same == [k + 1 == answer for k in range(skill_data.FRAMES)]

        assert all((_corner(f, "blue") == _corner(frames[0], "blue")).all() for f in frames)
        reds = [tuple(_corner(f, "red")) for f in frames]
        assert len(set(reds)) == skill_data.FRAMES
    assert set(answers) == set(range(1, skill_data.FRAMES + 1))


def test_skill_data_match_colors_and_words_name_the_repeated_frame(tmp_path):
    """--task match_colors and match_fill (no grey left): the last image is pixel for pixel the named
    frame and no other; --task match_words: the same question in words, the named frame's colour
    repeated, no images."""
    for task in ("match_colors", "match_fill"):
        path = skill_data.write(str(tmp_path), task, 20, seed=3, size=112)
        for line, text in enumerate(open(path), 1):
            record = parse_chat_record(json.loads(text), task, path, line, str(tmp_path))
            *frames, observation = [np.asarray(Image.open(p).convert("RGB")) for p in record.images]
            answer = int(record.messages[-1][1])
            assert [bool((observation == f).all()) for f in frames] == [k + 1 == answer for k in range(len(frames))]
            grey = [int((f == skill_data.GREY).all(-1).sum()) for f in frames]
            assert all(g == 0 for g in grey) if task == "match_fill" else all(g > 0 for g in grey)
    path = skill_data.write(str(tmp_path), "match_words", 20, seed=3, size=112)
    for text in open(path):
        row = json.loads(text)
        assert row["images"] == []
        prompt, answer = row["messages"][0]["content"], int(row["messages"][1]["content"])
        parts = prompt.split(". ")[:skill_data.FRAMES + 1]
        assert [p.split(" ")[1] for p in parts[:-1]] == [str(k + 1) for k in range(skill_data.FRAMES)]
        colors = [p.split(" ")[0] for p in parts[:-1]] + [parts[-1].split(": ")[1]]
        assert colors[-1] == colors[answer - 1] and len(set(colors[:-1])) == skill_data.FRAMES


def test_skill_data_near_words_names_the_nearest_value(tmp_path):
    """--task near_words: three frames, each followed by its number, then the last item; a frame's
    value is its letter's place in skill_data.LETTERS (the alphabet less five letters), increasing from frame to frame, and the last equals
    none of them. The answer is the number of the nearest, never a tie, and every number occurs.
    With --slots 4 the frames and the last item share all letters but one, in the same slot."""
    for slots in (1, 4):
        path = skill_data.write(str(tmp_path), "near_words", 60, seed=3, size=112, slots=slots)
        answers = set()
        for text in open(path):
            row = json.loads(text)
            assert row["images"] == []
            prompt, answer = row["messages"][0]["content"], int(row["messages"][1]["content"])
            parts = prompt.split(". ")
            assert [p.split(" ")[-1] for p in parts[:3]] == ["1", "2", "3"]
            words = [p.split(" ")[:-1] for p in parts[:3]] + [parts[3].split(": ")[1].split(" ")]
            assert all(len(w) == slots for w in words)
            (slot,) = {k for k in range(slots) if len({w[k] for w in words}) > 1}
            values = [skill_data.LETTERS.index(w[slot]) for w in words]
            *frames, last = values
            assert frames == sorted(set(frames)) and last not in frames
            gaps = [abs(v - last) for v in frames]
            assert gaps.count(min(gaps)) == 1 and gaps[answer - 1] == min(gaps)
            answers.add(answer)
        assert answers == {1, 2, 3}


def test_skill_data_near_fill_names_the_nearest_shade(tmp_path):
    """--task near_fill: four images, each one shade of grey all over; the frames' shades darken to
    lighten in turn, the last equals none of them, and the answer names the nearest, never a tie."""
    path = skill_data.write(str(tmp_path), "near_fill", 40, seed=3, size=56)
    answers = set()
    for line, text in enumerate(open(path), 1):
        record = parse_chat_record(json.loads(text), "near_fill", path, line, str(tmp_path))
        images = [np.asarray(Image.open(p).convert("RGB")).astype(int) for p in record.images]
        assert len(images) == 4 and all((im == im[0, 0]).all() and len(set(im[0, 0])) == 1 for im in images)
        *frames, last = [int(im[0, 0, 0]) for im in images]
        assert frames == sorted(set(frames)) and last not in frames
        gaps = [abs(f - last) for f in frames]
        answer = int(record.messages[-1][1])
        assert gaps.count(min(gaps)) == 1 and gaps[answer - 1] == min(gaps)
        answers.add(answer)
    assert answers == {1, 2, 3}


def test_skill_data_near_names_the_frame_whose_square_is_nearest(tmp_path):
    """--task near: match's scene in four images, the blue square in one place and the red one
    somewhere else in each, further along its way from frame to frame; the answer names the frame
    whose red square is nearest the last image's (to the pixels' rounding)."""
    path = skill_data.write(str(tmp_path), "near", 40, seed=3, size=112)
    answers = set()
    for line, text in enumerate(open(path), 1):
        record = parse_chat_record(json.loads(text), "near", path, line, str(tmp_path))
        images = [np.asarray(Image.open(p).convert("RGB")) for p in record.images]

        assert all((_corner(im, "blue") == _corner(images[0], "blue")).all() for im in images)
        *reds, last = [_corner(im, "red").astype(float) for im in images]
        goal = _corner(images[0], "blue")
        assert [np.abs(r - goal).max() for r in reds] == sorted({np.abs(r - goal).max() for r in reds}, reverse=True)
        assert not any((r == last).all() for r in reds)
        distances = [np.linalg.norm(r - last) for r in reds]
        answer = int(record.messages[-1][1])
        assert distances[answer - 1] <= min(distances) + 1.5
        answers.add(answer)
    assert answers == {1, 2, 3}


def _sim_records(tmp_path):
    """Three visual records (4, 6 and 7 demo frames, closest frames 1, 2, 3), an unanswerable visual
    one and a text one, with their images under tmp_path/images/<id>/."""
    rows = [_visual(i, steps, "o.png", i + 1, "50%") for i, steps in enumerate((3, 5, 6))]
    rows.append(dict(_visual(3, 3, "o.png", 1, "n/a"), closest_idx="n/a"))
    text = {k: v for k, v in _visual(9, 2, "o.png", 1, "50%").items() if k != "visual_demo"}
    rows.append({**text, "text_demo": ["reach the cube", "place it"]})
    for i, row in enumerate(rows[:4]):
        folder = tmp_path / "images" / row["id"]
        folder.mkdir(parents=True)
        for k, name in enumerate([*row["visual_demo"], "o.png"]):
            Image.new("RGB", (28, 28), (k, i, 0)).save(folder / name)
    return _write_bench(tmp_path, rows), rows


def test_skill_data_sim_match_repeats_a_records_own_frame(tmp_path):
    """--task sim_match: rows name a record's demo frames under the records' image root, in the demo's
    order, as many as --frames asks (all with 0), then again the frame the answer names; every
    visual record is used, and a text-demo record never."""
    records, rows = _sim_records(tmp_path)
    demos = {r["id"]: r["visual_demo"] for r in rows[:4]}
    for frames in (3, 0):
        path = skill_data.write_sim(str(tmp_path / f"out{frames}"), "sim_match", records, 40, seed=1, frames=frames)
        used, answers = set(), set()
        for line, text in enumerate(open(path), 1):
            record = parse_chat_record(json.loads(text), "sim_match", path, line, str(tmp_path / "images"))
            *shown, observation = json.loads(text)["images"]
            (trajectory,) = {p.split("/")[0] for p in shown}
            demo = demos[trajectory]
            indices = [demo.index(p.split("/")[1]) for p in shown]
            assert indices == sorted(set(indices)) and len(indices) == (frames or len(demo))
            answer = int(record.messages[-1][1])
            assert observation == shown[answer - 1]
            assert record.messages[0][1].count("<image>") == len(shown) + 1
            used.add(trajectory)
            answers.add(answer)
        assert used == set(demos)
        assert answers == {1, 2, 3} if frames == 3 else max(answers) > 3


def test_skill_data_sim_ref_asks_for_the_records_closest_frame(tmp_path, capsys):
    """--task sim_ref: every demo frame, then the record's observation; the answer is its closest_idx.
    The unanswerable record is skipped with a counted warning that names the file."""
    records, rows = _sim_records(tmp_path)
    path = skill_data.write_sim(str(tmp_path / "out"), "sim_ref", records, 6, seed=1, frames=0)
    assert f"{records}: skipped 1 unanswerable records" in capsys.readouterr().out
    seen = []
    for line, text in enumerate(open(path), 1):
        record = parse_chat_record(json.loads(text), "sim_ref", path, line, str(tmp_path / "images"))
        row = next(r for r in rows if r["id"] == json.loads(text)["images"][0].split("/")[0])
        assert json.loads(text)["images"] == [f"{row['id']}/{f}" for f in [*row["visual_demo"], "o.png"]]
        assert record.messages[-1][1] == row["closest_idx"]
        seen.append(row["id"])
    assert sorted(seen) == ["t0", "t0", "t1", "t1", "t2", "t2"]


def test_skill_data_sim_ref_with_fewer_frames_keeps_the_closest(tmp_path):
    """--task sim_ref --frames 3: three of a record's demo frames in order, the closest one always
    among them, and the answer is its place among the three."""
    records, rows = _sim_records(tmp_path)
    path = skill_data.write_sim(str(tmp_path / "out"), "sim_ref", records, 30, seed=2, frames=3)
    answers = set()
    for line, text in enumerate(open(path), 1):
        record = parse_chat_record(json.loads(text), "sim_ref", path, line, str(tmp_path / "images"))
        *shown, observation = json.loads(text)["images"]
        row = next(r for r in rows if r["id"] == shown[0].split("/")[0])
        indices = [row["visual_demo"].index(p.split("/")[1]) + 1 for p in shown]
        assert observation == f"{row['id']}/o.png" and len(indices) == 3 and indices == sorted(set(indices))
        answer = int(record.messages[-1][1])
        assert indices[answer - 1] == int(row["closest_idx"])
        answers.add(answer)
    assert answers == {1, 2, 3}


def test_skill_reference_trains_on_the_projects_tokens(tmp_path):
    """tools/skill_reference.py: the mask covers each row's answer and <|im_end|>, as the SFT loss does;
    transformers' Qwen2 at the tiny preset's size starts near a uniform guess over the vocabulary and
    learns the answer's form (one of three digits, then the end token) in 40 steps; --width and
    --layers size the model; image rows are refused."""
    from tools import skill_reference

    path = skill_data.write(str(tmp_path), "match_words", 64, seed=3, size=112)
    tokenizer = load_tokenizer()
    rows = skill_reference.load_rows(path, tokenizer)
    answers = [json.loads(t)["messages"][1]["content"] for t in open(path)]
    assert [tokenizer.decode([i for i, m in zip(ids, mask) if m]) for ids, mask in rows] == [
        a + "<|im_end|>" for a in answers]
    curve = skill_reference.train(skill_reference.build_model("tiny", 0, 0, seed=0), rows, steps=40, batch=8,
                                  lr=2e-3, log_every=10, echo=lambda line: None)
    assert curve[0] > 0.6 * np.log(2048) and curve[-1] < 1.0, curve

    wide = skill_reference.build_model("nano", 0, 0, seed=0, width=256, layers=2).config
    assert (wide.hidden_size, wide.intermediate_size, wide.num_hidden_layers, wide.num_attention_heads) == (256, 768, 2, 8)

    images = skill_data.write(str(tmp_path), "color", 2, seed=3, size=112)
    with pytest.raises(ValueError, match=r"color.jsonl:1: has images"):
        skill_reference.load_rows(images, tokenizer)


def test_state_vector_is_the_episodes_state():
    """tools/state_pretrain.py's targets: each arm's gripper and opening, the drawer, the moved object,
    as SimEpisode.state_at gives them; parts a scene lacks are masked."""
    from data_construction.sim.build import make_episode
    from tools import state_pretrain

    seen = set()
    for index in range(6):  # the families cycle: one- and two-arm scenes, a drawer
        episode = make_episode("train_extra", index, 0, 56)
        t = episode.num_frames // 2
        state = episode.state_at(t)
        y, m = state_pretrain.state_vector(episode, t)
        assert np.allclose(y[0:3], state["grip:0"]) and np.allclose(y[9:12], state[f"pos:{episode.plan.manip}"])
        assert m[4] == ("grip:1" in state) and m[8] == ("drawer" in state)
        if "grip:1" in state:
            assert np.allclose(y[4:7], state["grip:1"])
        seen |= {("two arms" if m[4] else "one arm"), "drawer" if m[8] else "no drawer"}
    assert seen == {"one arm", "two arms", "drawer", "no drawer"}
    y = np.random.default_rng(0).normal(size=(50, 12))
    m = np.ones_like(y)
    assert all(abs(v - 1) < 1e-9 for v in state_pretrain.r_squared(y, y, m).values())
    assert all(abs(v) < 1e-9 for v in state_pretrain.r_squared(np.broadcast_to(y.mean(0), y.shape), y, m).values())


@pytest.mark.parametrize("target", ["head", "tokens"])
def test_state_pretrain_writes_a_tower_the_jobs_load(tmp_path, capsys, target):
    """A few steps on a handful of small frames: held-out R^2 lines, and a final/ whose vision tower is
    the trained one (not the preset's seed) when loaded as train.init_params loads it."""
    from configs import sft as sft_config
    from flax import nnx
    from progress_jax import loading
    from progress_jax.sharding import path_str
    from tools import state_pretrain

    out = str(tmp_path / "run")
    assert state_pretrain.main(["--out", out, "--episodes", "2", "--per", "8", "--test-episodes", "1", "--steps", "4",
                                "--batch", "8", "--eval-every", "2", "--image-size", "56", "--lr", "1e-2",
                                "--target", target]) == 0
    printed = capsys.readouterr().out
    assert printed.count("held-out R^2 gripper 1") == 2 and "object" in printed
    if target == "tokens":  # random tokens start far from the state's embedding
        losses = [float(x) for x in re.findall(r"loss ([0-9.]+)", printed)]
        assert losses[1] < 0.8 * losses[0]
    cfg = sft_config.get_config("nano")

    def tower(init):
        model = loading.load_policy(cfg, None, init)
        return {path_str(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model.visual))}

    seeded, trained = tower(""), tower(os.path.join(out, "final"))
    saved = handover.load_trainable(os.path.join(out, "final"))[0]
    assert set(saved) == {"visual/" + k for k in seeded}
    assert all(np.array_equal(trained[k], saved["visual/" + k]) for k in trained)
    assert any(not np.allclose(trained[k], seeded[k]) for k in trained)
