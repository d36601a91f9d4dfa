"""ProgressBench-Sim: labels against the raw episodes, real perspective views, edits, determinism, loader."""
import hashlib
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from data_construction.sim import generate
from data_construction.sim.build import SIZES, make_episode
from data_construction.sim.render import Camera, Solid, render
from data_construction.sim.tasks import FAMILIES
from data_pipeline.records import load_records

SIZE = 96  # small images keep the test fast; layout and labels do not depend on the size
BENCH = ("visual_same_view", "visual_cross_view", "text-normal", "text-unanswerable", "visual-unanswerable")


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sim"))
    return generate(out, size="small", seed=0, image_size=SIZE, workers=2)


def _load(paths, name):
    root = paths["train_images"] if name in ("sft", "rl") else paths["bench_images"]
    return load_records(paths[name], image_root=root)


def _episode(record_id, avoid=frozenset()):
    stream, _, index = record_id.split("/")
    return make_episode(stream[len("sim_"):], int(index), 0, SIZE, avoid)


def _bench_goals(paths):
    """Goals of the benchmark trajectories, read from the answerable files."""
    return frozenset(r.task_goal for name in ("visual_same_view", "visual_cross_view", "text-normal")
                     for r in _load(paths, name))


def _frame(observation):
    return int(re.search(r"_(\d{4})(_edit)?\.jpg$", observation).group(1))


def test_official_loader_reads_every_file_with_the_planned_counts(sim):
    counts = SIZES["small"]
    expected = {"visual_same_view": counts["visual_same_view"][0], "visual_cross_view": counts["visual_cross_view"][0],
                "text-normal": counts["text-normal"][0], "text-unanswerable": counts["text-normal"][0],
                "visual-unanswerable": counts["visual-unanswerable"][0], "sft": counts["train"][0],
                "rl": counts["train"][1]}
    for name, n in expected.items():
        recs = _load(sim, name)
        assert len(recs) == n, name
        assert len({r.key for r in recs}) == n, f"{name}: duplicate samples"
    families = {r.id.split("/")[1] for r in _load(sim, "sft") + _load(sim, "rl")}
    assert families == set(FAMILIES)


def test_labels_follow_the_raw_episode(sim):
    """progress = linear interpolation between key frames at the observation frame; closest = nearest key entry."""
    for name in ("visual_same_view", "visual_cross_view", "text-normal"):
        for r in _load(sim, name):
            ep = _episode(r.id)
            T, kf, t = len(ep.steps), ep.key_frames, _frame(r.observation)
            assert r.total_steps == T and len(kf) == T + 1
            if r.kind == "visual":
                cams = {f.rsplit("_", 1)[0] for f in r.visual_demo}
                assert [int(f[-8:-4]) for f in r.visual_demo] == kf and len(cams) == 1
            k = max(i for i in range(T) if kf[i] < t)
            p = 100 * (k + (t - kf[k]) / (kf[k + 1] - kf[k])) / T
            assert r.progress == pytest.approx(np.floor(p + 0.5) / 100)
            first = 0 if r.kind == "visual" else 1  # visual demos start at 0%, text step 1 is 100 / T
            entries = [100 * i / T for i in range(first, T + 1)]
            dists = list(np.round([abs(p - e) for e in entries], 9))  # exact ties go to the earlier entry
            assert r.closest_idx == 1 + dists.index(min(dists))


def test_key_states_move_towards_the_goal():
    """Progress is monotone in the scene too: the manipulated object never moves away from its final spot on the
    table plane (lifting and lowering keep the horizontal distance)."""
    for i in range(2 * len(FAMILIES)):
        ep = make_episode("bench_same", i, 5, SIZE)
        key = f"pos:{ep.plan.manip}"
        final = ep.plan.states[-1][key]
        dist = [np.linalg.norm(ep.state_at(t)[key][:2] - final[:2]) for t in ep.key_frames]
        assert all(b <= a + 1e-9 for a, b in zip(dist, dist[1:])), (ep.id, dist)
        assert dist[0] > 0.05 and dist[-1] < 1e-9
        assert sorted(ep.key_frames) == ep.key_frames and len(set(ep.key_frames)) == len(ep.key_frames)


def test_cameras_are_real_perspective_views():
    """A red cube is drawn where an independent pinhole projection puts it, and views differ in shape, not by a flip."""
    cube = Solid("cube", "box", (0.15, -0.05, 0.04), (0.04, 0.04, 0.04), (220, 20, 20))
    cams = [Camera("camera_front", (0.0, -0.7, 0.52), (0.0, 0.02, 0.03), 54.0),
            Camera("camera_top", (0.0, -0.1, 0.98), (0.0, -0.01, 0.0), 50.0),
            Camera("camera_left", (-0.7, -0.32, 0.5), (0.03, 0.0, 0.03), 54.0)]
    size, shapes = 128, []
    for cam in cams:
        img = np.asarray(render([cube], cam, size, (0, 0, 0)), int)
        mask = (img[..., 0] > 60) & (img[..., 1] < 40)
        ys, xs = np.nonzero(mask)
        # independent look-at projection of the cube centre
        eye, tgt = np.array(cam.eye), np.array(cam.target)
        f = (tgt - eye) / np.linalg.norm(tgt - eye)
        r = np.cross(f, [0, 0, 1.0])
        r /= np.linalg.norm(r)
        u = np.cross(r, f)
        d = np.array(cube.center) - eye
        focal = size / 2 / np.tan(np.radians(cam.fov_deg / 2))
        px = size / 2 + focal * (d @ r) / (d @ f)
        py = size / 2 - focal * (d @ u) / (d @ f)
        assert abs(xs.mean() - px) < 3 and abs(ys.mean() - py) < 3, cam.name
        shapes.append((ys.max() - ys.min() + 1) / (xs.max() - xs.min() + 1))
    assert max(shapes) - min(shapes) > 0.15  # the same cube has a different silhouette in each view


def test_cross_view_observations_differ_from_same_view(sim):
    for r in _load(sim, "visual_cross_view"):
        demo_cam, obs_cam = r.camera_combination.split("+")
        assert demo_cam != obs_cam and r.observation.startswith(obs_cam)
        ep = _episode(r.id)
        t = _frame(r.observation)
        obs = np.asarray(Image.open(os.path.join(sim["bench_images"], r.id, r.observation)), float)
        same = np.asarray(ep.frame(demo_cam, t), float)
        assert np.abs(obs - same).mean() > 10
        for flipped in (same[:, ::-1], same[::-1]):
            assert np.abs(obs - flipped).mean() > 10


def test_visual_unanswerable_edits_change_the_image(sim):
    recs = _load(sim, "visual-unanswerable")
    kinds = set()
    for r in recs:
        assert r.observation.endswith("_edit.jpg") and not r.answerable
        ep = _episode(r.id)
        cam, t = r.observation.rsplit("_", 2)[0], _frame(r.observation)
        edited = np.asarray(Image.open(os.path.join(sim["bench_images"], r.id, r.observation)), int)
        original = np.asarray(ep.frame(cam, t), int)
        changed = (np.abs(edited - original).max(axis=2) > 40).mean()
        assert changed > 0.002, (r.id, r.observation, ep.edit_kind(cam, t))
        kinds.add(ep.edit_kind(cam, t))
    assert len(kinds) >= 3


def test_text_unanswerable_swaps_the_object_word(sim):
    normal, unans = _load(sim, "text-normal"), _load(sim, "text-unanswerable")
    assert [(r.id, r.observation) for r in normal] == [(r.id, r.observation) for r in unans]
    for n, u in zip(normal, unans):
        noun = _episode(n.id).object_noun
        assert not u.answerable and len(u.text_demo) == len(n.text_demo)
        assert re.search(rf"\b{noun}\b", n.task_goal) and not re.search(rf"\b{noun}s?\b", u.task_goal)
        for a, b in zip((n.task_goal, *n.text_demo), (u.task_goal, *u.text_demo)):
            assert re.findall(r"\[\w+\]", a) == re.findall(r"\[\w+\]", b)
            assert not re.search(rf"\b{noun}s?\b", b)
            assert (a != b) == bool(re.search(rf"\b{noun}s?\b", a))


def test_two_arm_steps_carry_markers(sim):
    sort = [r for r in _load(sim, "sft") + _load(sim, "rl") if r.text_demo and "/sort/" in r.id]
    assert sort
    for r in sort:
        assert all(s.startswith("[left]") and "[right]" in s for s in r.text_demo)


def test_sft_responses_are_grounded_four_block_answers(sim):
    recs = _load(sim, "sft")
    pattern = re.compile(r"<ref_think>(.+?)</ref_think><ref>(.+?)</ref><score_think>(.+?)</score_think>"
                         r"<score>(.+?)</score>", re.S)
    assert len({r.response for r in recs}) > 0.95 * len(recs)  # written from the state, not a fixed sentence
    avoid = _bench_goals(sim)
    for r in recs:
        m = pattern.fullmatch(r.response)
        assert m, r.response
        if r.answerable:
            assert m.group(2) == str(r.closest_idx) and m.group(4) == f"{round(r.progress * 100)}%"
        else:
            assert m.group(2) == "n/a" and m.group(4) == "n/a"
        ep = _episode(r.id, avoid)
        assert r.task_goal == ep.goal or not r.answerable
        assert ep.plan.scene.item(ep.plan.manip).phrase in m.group(1)
    assert all(r.response is None for r in _load(sim, "rl"))


def test_train_and_test_instances_are_disjoint(sim):
    bench = [r for name in BENCH for r in _load(sim, name)]
    train = _load(sim, "sft") + _load(sim, "rl")
    assert not {r.id for r in bench} & {r.id for r in train}
    # text-unanswerable goals are edited, the others are the episode goals
    train_goals = {r.task_goal for r in train if r.answerable or r.kind == "visual"}
    assert train_goals and not _bench_goals(sim) & train_goals


def test_extra_records_are_new_same_view_trajectories_off_the_benchmark(sim, tmp_path):
    """--extra: same-view records of episodes no other file holds, whose goals avoid the benchmark's,
    labelled as the raw episode says (the closest key frame), their images written."""
    from data_construction.sim.build import extra

    path = extra(str(tmp_path), 12, size="small", seed=0, image_size=SIZE, per=3, workers=1)
    records = load_records(path, image_root=str(tmp_path / "images"))
    assert len(records) == 36 and len({r.id for r in records}) == 12
    others = {r.id for name in (*BENCH, "sft", "rl") for r in _load(sim, name)}
    assert not {r.id for r in records} & others and not {r.task_goal for r in records} & _bench_goals(sim)
    for r in records:
        ep = _episode(r.id, _bench_goals(sim))
        assert r.task_goal == ep.goal and len(r.visual_demo) == len(ep.key_frames)
        assert {f.rsplit("_", 1)[0] for f in (*r.visual_demo, r.observation)} == {r.observation.rsplit("_", 1)[0]}
        t = _frame(r.observation)
        assert r.closest_idx == 1 + int(np.argmin([abs(t - k) for k in ep.key_frames]))
        assert os.path.isfile(os.path.join(tmp_path, "images", r.id, r.observation))


def _digest(folder):
    h = hashlib.sha256()
    for dirpath, dirnames, files in sorted(os.walk(folder)):
        dirnames.sort()
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, folder).encode())
            h.update(open(path, "rb").read())
    return h.hexdigest()


def test_deterministic_and_skips_complete_output(sim, tmp_path):
    again = generate(str(tmp_path), size="small", seed=0, image_size=SIZE, workers=1)
    assert _digest(again["bench_dir"]) == _digest(sim["bench_dir"])
    assert _digest(again["train_dir"]) == _digest(sim["train_dir"])
    stamp = os.path.getmtime(again["sft"])
    generate(str(tmp_path), size="small", seed=0, image_size=SIZE, workers=1)
    assert os.path.getmtime(again["sft"]) == stamp  # complete output with the same parameters: no work
    with open(again["sft"]) as f:
        first = json.loads(f.readline())
    assert first["response"].startswith("<ref_think>")


def test_brief_reasoning_keeps_the_labels(tmp_path):
    """The short answers of the CPU demo: strict four-block format, ref and score equal the labels,
    and the bracketing demo entries named in the reasoning contain the closest one."""
    from data_pipeline.parsing import parse_think, strict_format_ok

    paths = generate(str(tmp_path), size="small", seed=0, image_size=SIZE, workers=2, reasoning="brief")
    recs = _load(paths, "sft")
    for r in recs:
        assert strict_format_ok(r.response), r.response
        parsed = parse_think(r.response)
        if r.answerable:
            label = f"step {r.closest_idx}" if r.kind == "text" else f"demo frame {r.closest_idx}"
            assert parsed.ref == r.closest_idx and abs(parsed.score - r.progress) < 5e-3
            assert f"closer to {label}." in r.response
        else:
            assert parsed.na and "<ref>n/a</ref>" in r.response


def test_a_directory_holding_another_seed_is_refused_not_replaced(tmp_path):
    """Another job's sim (here: another seed) is never deleted to make room; the job names the
    config key. The run's own `seed` does not choose the sim's."""
    from configs import sft as sft_config
    from data_construction.sim import OtherSimHere
    from data_construction.sim.build import FORMAT_VERSION, MARKER
    from progress_jax import data_files
    from progress_jax.errors import BadInput

    kept = tmp_path / "bench" / "kept.jsonl"
    kept.parent.mkdir()
    kept.write_text("{}\n")
    (tmp_path / MARKER).write_text(json.dumps({"size": "small", "seed": 0, "image_size": SIZE,
                                               "version": FORMAT_VERSION}))
    with pytest.raises(OtherSimHere, match=r"seed 0 there, 1 asked.*--force"):
        generate(str(tmp_path), size="small", seed=1, image_size=SIZE)
    assert kept.exists()

    c = sft_config.get_config()
    c.data.sim_dir, c.data.sim_image_size, c.data.sim_reasoning, c.seed = str(tmp_path), SIZE, "full", 5
    assert data_files.sim_paths(c)["bench_dir"] == str(tmp_path / "bench")  # sim_seed 0: the sim there
    c.data.sim_seed = 2
    with pytest.raises(BadInput, match=rf"config key data.sim_dir: {tmp_path} holds .*seed 0 there, 2 asked"):
        data_files.sim_paths(c)
    assert kept.exists()


def _planned_answers(style):
    """(sample, brief answer, answer in `style`) of planned answerable samples of three kinds, checking
    on the way that every answer is well-formed and that unanswerable samples keep the brief n/a
    answer. Planned samples only: the text needs no rendered image."""
    from data_construction.sim.build import _fill, _stream
    from data_construction.sim.reasoning import response
    from data_pipeline.parsing import parse_think, strict_format_ok

    for kind in ("visual_same_view", "text-normal", "visual-unanswerable"):
        for s in _fill(6, 3, _stream("train_sft", 0, SIZE), lambda rng: kind, 0, "train_sft"):
            brief, styled = response(s, "brief"), response(s, style)
            assert strict_format_ok(styled), styled
            if not s.answerable:
                assert styled == brief and parse_think(styled).na
                continue
            yield s, brief, styled


def test_observe_reasoning_is_the_brief_answer_after_a_description_of_the_observation():
    """reasoning="observe": the brief answer, its first block opened by what the observation shows
    (reasoning.describe of the observed state)."""
    from data_construction.sim.reasoning import describe
    from data_pipeline.parsing import parse_think

    for s, brief, observe in _planned_answers("observe"):
        seen = f"In the current image {describe(s.episode, s.episode.state_at(s.obs.frame))}. "
        assert observe == brief.replace("<ref_think>", "<ref_think>" + seen, 1)
        assert parse_think(observe).ref == parse_think(brief).ref == s.closest_idx


def test_passed_reasoning_judges_each_demo_entry_against_the_observations_progress():
    """reasoning="passed": the brief answer, its first block opened by a yes or no for every demo entry
    in order; yes exactly where the entry's own progress (demo frame i: (i-1)/T, step i: i/T) is
    at most the observation's."""
    import re

    from data_pipeline.parsing import parse_think

    seen_yes = set()
    for s, brief, passed in _planned_answers("passed"):
        T = s.total_steps
        m = re.match(r"<ref_think>(Passed demo frame|Done step): ((?:\d+ (?:yes|no)\. )+)", passed)
        assert m and m.group(1) == ("Done step" if s.kind == "text" else "Passed demo frame"), passed
        entries = re.findall(r"(\d+) (yes|no)\.", m.group(2))
        entry_progress = ([100.0 * i / T for i in range(1, T + 1)] if s.kind == "text"
                          else [100.0 * (i - 1) / T for i in range(1, T + 2)])
        assert [int(i) for i, _ in entries] == list(range(1, len(entry_progress) + 1))
        assert [a == "yes" for _, a in entries] == [p <= s.progress for p in entry_progress], (passed, s.progress)
        assert passed == brief.replace("<ref_think>", m.group(0), 1)
        assert parse_think(passed).ref == s.closest_idx
        seen_yes.add(sum(a == "yes" for _, a in entries))
    assert len(seen_yes) > 2  # observations early and late in their tasks
