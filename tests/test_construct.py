"""Benchmark construction from an episode folder whose frames encode their own index, so labels can be checked
against the images the records point to."""
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from data_construction import construct
from data_pipeline.records import load_records

KEY_FRAMES = [0, 10, 30, 45, 65]
CAMERAS = {"camera_front": 0, "camera_top": 1}  # frame t: a flat image with 60 + 3 t in the camera's channel
STEPS = ["[left] reach for the red cup", "[left] grasp the cup and [right] hold the plate", "[left] lift both cups",
         "[left] put the Cup on the plate"]
EDITED = [15, 40, 50]


def _write_episode(folder, meta_overrides=None, skip_frame=None):
    meta = {"id": "lab/cup_task/0001", "goal": "put the red cup on the plate", "steps": STEPS,
            "key_frames": KEY_FRAMES, "object": "cup", "data_source": "test_lab"}
    meta.update(meta_overrides or {})
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "episode.json"), "w") as f:
        json.dump(meta, f)
    for cam, ch in CAMERAS.items():
        os.makedirs(os.path.join(folder, cam), exist_ok=True)
        for t in range(KEY_FRAMES[-1] + 1):
            if t == skip_frame:
                continue
            img = np.zeros((32, 32, 3), np.uint8)
            img[..., ch] = 60 + 3 * t
            Image.fromarray(img).save(os.path.join(folder, cam, f"{t:04d}.png"))
        for t in EDITED:  # edited frames also have a full blue channel
            img = np.zeros((32, 32, 3), np.uint8)
            img[..., ch] = 60 + 3 * t
            img[..., 2] = 255
            Image.fromarray(img).save(os.path.join(folder, cam, f"{t:04d}_edit.png"))
    return folder


def _decode(path):
    """(camera, frame index, edited) of an image written by construct from the frames above."""
    arr = np.asarray(Image.open(path).convert("RGB"), float).mean(axis=(0, 1))
    ch = int(np.argmax(arr[:2]))
    cam = [c for c, i in CAMERAS.items() if i == ch][0]
    return cam, int(round((arr[ch] - 60) / 3)), bool(arr[2] > 128)


def _expected_progress(t):
    """Linear interpolation between the key frames (paper eq. 2), in percent."""
    T = len(KEY_FRAMES) - 1
    k = max(i for i in range(T) if KEY_FRAMES[i] < t)
    return 100.0 * (k + (t - KEY_FRAMES[k]) / (KEY_FRAMES[k + 1] - KEY_FRAMES[k])) / T


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("construct")
    ep = construct.FolderEpisode(_write_episode(str(root / "ep1")))
    paths = construct.build_benchmark([ep], str(root / "out"), seed=3, per_episode=10)
    return paths


def _records(paths, subset):
    return load_records(paths[subset], image_root=paths["image_root"])


def test_visual_labels_match_the_images(bench):
    T = len(STEPS)
    for subset in ("visual_same_view", "visual_cross_view"):
        recs = _records(bench, subset)
        assert len(recs) == 10
        for r in recs:
            demo = [_decode(os.path.join(bench["image_root"], r.id, f)) for f in r.visual_demo]
            assert [t for _, t, _ in demo] == KEY_FRAMES
            cam, t, edited = _decode(os.path.join(bench["image_root"], r.id, r.observation))
            assert not edited and KEY_FRAMES[0] < t < KEY_FRAMES[-1] and t not in KEY_FRAMES
            p = _expected_progress(t)
            assert r.progress == pytest.approx(int(np.floor(p + 0.5)) / 100)
            dists = [abs(p - 100 * i / T) for i in range(T + 1)]
            assert r.closest_idx == 1 + dists.index(min(dists))
            key_pct = int(np.floor(100 * (r.closest_idx - 1) / T + 0.5))
            assert r.delta == pytest.approx(r.progress - key_pct / 100)
            if subset == "visual_cross_view":
                demo_cam, obs_cam = r.camera_combination.split("+")
                assert demo_cam != obs_cam and cam == obs_cam and {c for c, _, _ in demo} == {demo_cam}
            else:
                assert r.camera_combination is None and {c for c, _, _ in demo} == {cam}


def test_progress_is_monotone_along_the_trajectory(bench):
    recs = _records(bench, "visual_same_view")
    by_frame = sorted((_decode(os.path.join(bench["image_root"], r.id, r.observation))[1], r.progress) for r in recs)
    progress = [p for _, p in by_frame]
    assert progress == sorted(progress) and len(set(progress)) == len(progress)


def test_text_records_and_official_types(bench):
    T = len(STEPS)
    recs = _records(bench, "text-normal")
    assert recs and all(r.text_demo == tuple(STEPS) and r.total_steps == T for r in recs)
    for r in recs:
        p = _expected_progress(_decode(os.path.join(bench["image_root"], r.id, r.observation))[1])
        dists = [abs(p - 100 * k / T) for k in range(1, T + 1)]
        assert r.closest_idx == 1 + dists.index(min(dists))
        assert r.delta is None
    raw_visual = json.loads(open(bench["visual_same_view"]).readline())
    raw_text = json.loads(open(bench["text-normal"]).readline())
    assert isinstance(raw_visual["total_steps"], str) and isinstance(raw_visual["closest_idx"], str)
    assert isinstance(raw_visual["stage_to_estimate"], list) and len(raw_visual["stage_to_estimate"]) == 1
    assert isinstance(raw_text["total_steps"], int) and isinstance(raw_text["closest_idx"], int)
    assert isinstance(raw_text["stage_to_estimate"], str) and "delta" not in raw_text
    assert re.fullmatch(r"[+-]\d+%", raw_visual["delta"]) and re.fullmatch(r"\d+%", raw_visual["progress_score"])


def test_text_unanswerable_replaces_the_object_everywhere(bench):
    normal = _records(bench, "text-normal")
    unans = _records(bench, "text-unanswerable")
    assert [(r.id, r.observation) for r in unans] == [(r.id, r.observation) for r in normal]
    raw = [json.loads(line) for line in open(bench["text-unanswerable"])]
    assert all(r["closest_idx"] == "n/a" and r["progress_score"] == "n/a" for r in raw)
    # as the released text-unanswerable.jsonl: total_steps a string (a number in text-normal), keys in its order
    assert all(r["total_steps"] == str(len(STEPS)) for r in raw)
    assert list(raw[0]) == ["id", "task_goal", "text_demo", "total_steps", "stage_to_estimate", "closest_idx",
                            "progress_score", "data_source"]
    for r in unans:
        assert not r.answerable
        texts = [r.task_goal, *r.text_demo]
        originals = ["put the red cup on the plate", *STEPS]
        assert all(not re.search(r"\bcups?\b", t, re.I) for t in texts)
        new = re.search(r"put the red (\w+) on the plate", r.task_goal).group(1)
        assert new in construct.REPLACEMENT_NOUNS
        for t, o in zip(texts, originals):
            assert t != o or "cup" not in o.lower()
            assert re.findall(r"\[\w+\]", t) == re.findall(r"\[\w+\]", o)
            assert len(t.split()) == len(o.split())
            words = [w for w, v in zip(o.split(), t.split()) if w != v]
            assert all(re.fullmatch(r"cups?", w, re.I) for w in words)


def test_visual_unanswerable_uses_the_edited_frames(bench):
    recs = _records(bench, "visual-unanswerable")
    assert recs and all(not r.answerable and r.closest_idx is None for r in recs)
    for r in recs:
        assert r.observation.endswith("_edit.jpg")
        cam, t, edited = _decode(os.path.join(bench["image_root"], r.id, r.observation))
        assert edited and t in EDITED


def test_observation_sampling_uses_the_delta_sets():
    rng = np.random.default_rng(0)
    for deltas in (construct.COARSE_DELTAS, construct.FINE_DELTAS):
        obs = construct.sample_observations([0, 20, 40], 100, rng, deltas)
        assert len(obs) == 2 * len(deltas)
        assert sorted({round(o.fraction, 6) for o in obs}) == sorted(deltas)
        assert [o.frame for o in obs] == sorted(20 * o.segment + round(20 * o.fraction) for o in obs)


def test_closest_ties_go_to_the_earlier_entry():
    assert construct.closest_visual(50.0, 4) == 3  # between 25% (idx 2) and 50% (idx 3): exact hit
    assert construct.closest_visual(37.5, 4) == 2  # tie between 25% and 50%
    assert construct.closest_text(12.5, 4) == 1  # nearest step to 12.5% is step 1 (25%)
    assert construct.closest_text(37.5, 4) == 1


def test_replace_object():
    text = "[left] grasp the Cup, then stack two cups; a cupboard stays"
    expected = "[left] grasp the Box, then stack two boxes; a cupboard stays"
    assert construct.replace_object(text, "cup", "box") == expected


@pytest.mark.parametrize("override,skip,match", [
    ({"object": None}, None, r"episode\.json: field 'object'"),
    ({"key_frames": [0, 10, 30]}, None, r"field 'key_frames' has 3 entries"),
    ({"key_frames": [0, 30, 10, 45, 65]}, None, r"field 'key_frames' must be increasing"),
    ({"key_frames": [0, 10, 30, 45, 99]}, None, r"key frame 99 is beyond the last frame"),
    ({}, 7, r"camera_front: frames are not contiguous"),
])
def test_bad_episode_folders_raise_clear_errors(tmp_path, override, skip, match):
    folder = _write_episode(str(tmp_path / "bad"), override, skip_frame=skip)
    if override.get("object", "") is None:
        meta = json.load(open(os.path.join(folder, "episode.json")))
        del meta["object"]
        json.dump(meta, open(os.path.join(folder, "episode.json"), "w"))
    with pytest.raises(construct.EpisodeError, match=match):
        construct.FolderEpisode(folder)
