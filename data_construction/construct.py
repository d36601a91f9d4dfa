"""Benchmark records from raw episodes (Progress-Bench construction, paper eq. 1-2).

An episode is a raw frame sequence per camera, T text steps and T + 1 key-frame indices (key frame i ends
step i; key frame 0 is the start). On disk (real data, or any other source):

    EPISODE_DIR/episode.json
        {"id": "lab/task/0001", "goal": "put the red cube on the plate", "steps": ["reach the red cube", ...],
         "key_frames": [0, 41, 68, ...], "object": "cube", "data_source": "my_lab"}
        "object" is the noun of the manipulated object (replaced in text-unanswerable samples);
        "data_source" is optional (default: the folder name).
    EPISODE_DIR/{camera}/{index:04d}.jpg|png       frames 0 .. N-1 of each camera (e.g. camera_front/0000.jpg)
    EPISODE_DIR/{camera}/{index:04d}_edit.jpg|png  optional edited frames, used for visual-unanswerable samples

Labels. Key frame i stands for progress 100 * i / T. Between key frames k and k+1 an observation is taken at
relative position delta: frame t = t_k + round(delta * (t_{k+1} - t_k)), kept strictly inside the segment; its
progress is 100 * (k + d) / T with d = (t - t_k) / (t_{k+1} - t_k), the realised delta (equal to delta up to
frame rounding, so the label matches the image exactly). Two delta sets: COARSE (0.25, 0.5, 0.75) and FINE
(0.1, 0.2, ..., 0.9); each trajectory uses one of them (chosen at random), and its samples are drawn without
replacement from all (segment, delta) pairs.
- progress_score: the progress rounded half up to an integer percent ("33%").
- closest_idx: 1-based index of the demo entry whose progress is nearest (a tie goes to the earlier entry).
  Visual demos have T + 1 entries (0% .. 100%); text demos have T entries, step k meaning 100 * k / T.
- delta (visual only): progress_score minus the closest key frame's rounded progress, signed ("+6%", "-11%"),
  as in the public Progress-Bench files, so that progress_score = key progress + delta holds in the file.
Unanswerable variants: text (the object noun replaced in the goal and every step, markers and verbs kept; same
ids and observations as text-normal) and image (an edited observation, file "{camera}_{t:04d}_edit.jpg").
Images are written to IMAGE_ROOT/{id}/{camera}_{t:04d}.jpg.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from data_pipeline.jsonl import write_jsonl
from data_pipeline.paths import atomic_output

COARSE_DELTAS = (0.25, 0.5, 0.75)
FINE_DELTAS = tuple(round(0.1 * i, 1) for i in range(1, 10))
SUBSETS = ("visual_same_view", "visual_cross_view", "text-normal", "text-unanswerable", "visual-unanswerable")
REPLACEMENT_NOUNS = ("bottle", "banana", "cup", "sponge", "apple", "marker", "bowl", "spoon", "box", "towel")
IMAGE_EXTS = (".jpg", ".png")
JPEG_QUALITY = 90


class EpisodeError(ValueError):
    """A bad episode folder; the message names the file and field."""


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


@dataclass(frozen=True)
class Observation:
    frame: int
    segment: int  # k: between key frames k and k+1
    fraction: float  # realised delta in (0, 1)


def sample_observations(key_frames, n: int, rng: np.random.Generator, deltas) -> list[Observation]:
    """Up to n distinct observations, (segment, delta) pairs drawn without replacement (paper eq. 1-2)."""
    candidates = {}
    for k in range(len(key_frames) - 1):
        a, b = key_frames[k], key_frames[k + 1]
        if b - a < 2:
            continue
        for d in deltas:
            t = min(max(a + round_half_up(d * (b - a)), a + 1), b - 1)
            candidates[t] = Observation(t, k, (t - a) / (b - a))
    return _pick([candidates[t] for t in sorted(candidates)], n, rng)


def sample_frames(key_frames, frames, n: int, rng: np.random.Generator) -> list[Observation]:
    """Up to n of the given frames that lie strictly inside a segment."""
    pool = []
    for t in sorted(set(frames)):
        k = int(np.searchsorted(key_frames, t, side="right")) - 1
        if 0 <= k < len(key_frames) - 1 and t != key_frames[k]:
            pool.append(Observation(t, k, (t - key_frames[k]) / (key_frames[k + 1] - key_frames[k])))
    return _pick(pool, n, rng)


def _pick(pool: list[Observation], n: int, rng: np.random.Generator) -> list[Observation]:
    picks = rng.choice(len(pool), size=min(n, len(pool)), replace=False) if pool else []
    return sorted((pool[i] for i in picks), key=lambda o: o.frame)


def progress_of(obs: Observation, total_steps: int) -> float:
    """Progress in percent: linear interpolation between the key steps (p_k = 100 k / T)."""
    return 100.0 * (obs.segment + obs.fraction) / total_steps


def closest_visual(progress: float, total_steps: int) -> int:
    """1-based index of the key frame (0 .. T) nearest to progress; ties go to the earlier frame."""
    dists = [abs(progress - 100.0 * i / total_steps) for i in range(total_steps + 1)]
    return int(np.argmin(np.round(dists, 9))) + 1


def closest_text(progress: float, total_steps: int) -> int:
    """1-based index of the step (step k = 100 k / T) nearest to progress; ties go to the earlier step."""
    dists = [abs(progress - 100.0 * k / total_steps) for k in range(1, total_steps + 1)]
    return int(np.argmin(np.round(dists, 9))) + 1


def replace_object(text: str, noun: str, new: str) -> str:
    """Replaces the whole word noun (and its plural) by new; everything else (markers, verbs) is kept."""
    def sub(m):
        word = new + ("es" if new.endswith(("s", "x", "ch")) else "s") if m.group(1) else new
        return word.capitalize() if m.group(0)[0].isupper() else word

    return re.sub(rf"\b{re.escape(noun)}(e?s)?\b", sub, text, flags=re.IGNORECASE)


@dataclass(frozen=True)
class Sample:
    subset: str  # one of SUBSETS (the official file it belongs to)
    episode: object  # an Episode (SimEpisode or FolderEpisode)
    demo_camera: str | None  # None for text demos
    obs_camera: str
    obs: Observation
    edited: bool = False  # observation image edited (visual-unanswerable)
    replacement: str | None = None  # noun replacing the object (text-unanswerable)

    @property
    def kind(self) -> str:
        return "text" if self.subset.startswith("text") else "visual"

    @property
    def answerable(self) -> bool:
        return not self.edited and self.replacement is None

    @property
    def total_steps(self) -> int:
        return len(self.episode.steps)

    @property
    def progress(self) -> float:
        return progress_of(self.obs, self.total_steps)

    @property
    def closest_idx(self) -> int:
        closest = closest_text if self.kind == "text" else closest_visual
        return closest(self.progress, self.total_steps)

    @property
    def obs_file(self) -> str:
        return f"{self.obs_camera}_{self.obs.frame:04d}{'_edit' if self.edited else ''}.jpg"

    def demo_files(self) -> list[str]:
        return [f"{self.demo_camera}_{t:04d}.jpg" for t in self.episode.key_frames]

    def goal_and_steps(self) -> tuple[str, list[str]]:
        ep = self.episode
        if self.replacement is None:
            return ep.goal, list(ep.steps)
        return (replace_object(ep.goal, ep.object_noun, self.replacement),
                [replace_object(s, ep.object_noun, self.replacement) for s in ep.steps])

    def images(self) -> list[tuple[str, int, bool, str]]:
        """(camera, frame, edited, file name) of every image the record refers to."""
        out = [(self.obs_camera, self.obs.frame, self.edited, self.obs_file)]
        if self.kind == "visual":
            out += [(self.demo_camera, t, False, f) for t, f in zip(self.episode.key_frames, self.demo_files())]
        return out


def to_record(sample: Sample) -> dict:
    """The official JSONL object (field names and types as in Progress-Bench)."""
    ep, T = sample.episode, sample.total_steps
    goal, steps = sample.goal_and_steps()
    progress = round_half_up(sample.progress)
    if sample.kind == "text":
        # text-normal writes total_steps as a number, text-unanswerable as a string (the released files)
        rec = {"id": ep.id, "task_goal": goal, "text_demo": steps, "total_steps": T if sample.answerable else str(T),
               "stage_to_estimate": sample.obs_file}
        if sample.answerable:
            rec.update(closest_idx=sample.closest_idx, progress_score=f"{progress}%")
        else:
            rec.update(closest_idx="n/a", progress_score="n/a")
    else:
        rec = {"id": ep.id, "task_goal": goal, "visual_demo": sample.demo_files(), "total_steps": str(T),
               "stage_to_estimate": [sample.obs_file]}
        if sample.answerable:
            c = sample.closest_idx
            delta = progress - round_half_up(100.0 * (c - 1) / T)
            rec.update(closest_idx=str(c), delta=f"{delta:+d}%", progress_score=f"{progress}%")
        else:
            rec.update(closest_idx="n/a", delta="n/a", progress_score="n/a")
    rec["data_source"] = ep.data_source
    if sample.kind == "visual" and sample.demo_camera != sample.obs_camera:
        rec["camera_combination"] = f"{sample.demo_camera}+{sample.obs_camera}"
    return rec


def plan_samples(episode, subset: str, n: int, rng: np.random.Generator, deltas=None) -> list[Sample]:
    """Up to n samples of one episode for one official subset; cameras and deltas drawn from rng."""
    if subset not in SUBSETS:
        raise ValueError(f"unknown subset {subset!r}; expected one of {SUBSETS}")
    if deltas is None:
        deltas = COARSE_DELTAS if rng.random() < 0.5 else FINE_DELTAS
    cams = list(episode.cameras)
    if subset == "visual-unanswerable":
        cams = [c for c in cams if episode.editable_frames(c) != []]
        if not cams:
            return []
    if subset == "visual_cross_view":
        if len(cams) < 2:
            raise ValueError(f"episode {episode.id}: cross-view samples need two cameras, it has {cams}")
        i, j = rng.choice(len(cams), size=2, replace=False)
        demo_cam, obs_cam = cams[i], cams[j]
    else:
        demo_cam = obs_cam = cams[int(rng.integers(len(cams)))]
    editable = episode.editable_frames(obs_cam) if subset == "visual-unanswerable" else None
    if editable is None:
        observations = sample_observations(episode.key_frames, n, rng, deltas)
    else:  # the given edited frames (labels are n/a, so any frame inside a segment will do)
        observations = sample_frames(episode.key_frames, editable, n, rng)
    text = subset.startswith("text")
    samples = [Sample(subset, episode, None if text else demo_cam, obs_cam, o, edited=subset == "visual-unanswerable")
               for o in observations]
    if subset == "text-unanswerable":
        samples = make_text_unanswerable(samples, rng)
    return samples


def make_text_unanswerable(samples: list[Sample], rng: np.random.Generator) -> list[Sample]:
    """The same observations with the object noun replaced (one replacement noun per trajectory)."""
    chosen = {}
    out = []
    for s in samples:
        ep = s.episode
        if ep.id not in chosen:
            options = [w for w in REPLACEMENT_NOUNS if w not in ep.scene_nouns and w != ep.object_noun]
            chosen[ep.id] = options[int(rng.integers(len(options)))]
        out.append(replace(s, subset="text-unanswerable", replacement=chosen[ep.id]))
    return out


def write_images(samples: list[Sample], image_root: str) -> int:
    """Writes every image the samples refer to (once each); returns the number written."""
    written = 0
    for s in samples:
        ep = s.episode
        for camera, t, edited, name in s.images():
            path = os.path.join(image_root, ep.id, name)
            if os.path.exists(path):
                continue
            img = ep.edited_frame(camera, t) if edited else ep.frame(camera, t)
            with atomic_output(path, "wb") as f:
                img.convert("RGB").save(f, format="JPEG", quality=JPEG_QUALITY)
            written += 1
    return written


class FolderEpisode:
    """An episode read from the on-disk layout described in the module docstring."""

    def __init__(self, folder: str):
        self.folder = folder
        meta_path = os.path.join(folder, "episode.json")
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
        except FileNotFoundError:
            raise EpisodeError(f"{meta_path}: missing") from None
        except json.JSONDecodeError as e:
            raise EpisodeError(f"{meta_path}: bad JSON: {e}") from None

        def need(key, kind):
            if key not in meta:
                raise EpisodeError(f"{meta_path}: field '{key}' missing")
            if not isinstance(meta[key], kind):
                raise EpisodeError(f"{meta_path}: field '{key}' must be {kind.__name__}, got {meta[key]!r:.100}")
            return meta[key]

        self.id, self.goal, self.object_noun = need("id", str), need("goal", str), need("object", str)
        self.steps = need("steps", list)
        self.key_frames = need("key_frames", list)
        self.data_source = meta.get("data_source") or os.path.basename(os.path.normpath(folder))
        if not self.steps or not all(isinstance(s, str) and s for s in self.steps):
            raise EpisodeError(f"{meta_path}: field 'steps' must be a non-empty list of strings")
        if len(self.key_frames) != len(self.steps) + 1:
            raise EpisodeError(f"{meta_path}: field 'key_frames' has {len(self.key_frames)} entries, "
                               f"expected len(steps) + 1 = {len(self.steps) + 1}")
        if not all(isinstance(t, int) for t in self.key_frames) or any(
                b <= a for a, b in zip(self.key_frames, self.key_frames[1:])) or self.key_frames[0] < 0:
            raise EpisodeError(f"{meta_path}: field 'key_frames' must be increasing non-negative integers")
        self.scene_nouns = frozenset()
        self._files = {}  # camera -> {(index, edited): path}
        for cam in sorted(os.listdir(folder)):
            if not os.path.isdir(os.path.join(folder, cam)):
                continue
            files = {}
            for name in os.listdir(os.path.join(folder, cam)):
                stem, ext = os.path.splitext(name)
                edited = stem.endswith("_edit")
                stem = stem[:-5] if edited else stem
                if ext.lower() in IMAGE_EXTS and stem.isdigit():
                    files[(int(stem), edited)] = os.path.join(folder, cam, name)
            if files:
                self._files[cam] = files
        if not self._files:
            raise EpisodeError(f"{folder}: no camera folders with frames (expected {{camera}}/0000.jpg ...)")
        self.cameras = tuple(self._files)
        counts = {cam: sum(1 for _, e in f if not e) for cam, f in self._files.items()}
        self.num_frames = min(counts.values())
        for cam, files in self._files.items():
            missing = [t for t in range(counts[cam]) if (t, False) not in files]
            if missing:
                raise EpisodeError(f"{folder}/{cam}: frames are not contiguous from 0 (missing {missing[:5]})")
        if self.key_frames[-1] >= self.num_frames:
            raise EpisodeError(f"{meta_path}: key frame {self.key_frames[-1]} is beyond the last frame "
                               f"{self.num_frames - 1}")

    def frame(self, camera: str, t: int) -> Image.Image:
        return Image.open(self._files[camera][(t, False)]).convert("RGB")

    def editable_frames(self, camera: str) -> list[int]:
        return sorted(t for t, edited in self._files[camera] if edited)

    def edited_frame(self, camera: str, t: int) -> Image.Image:
        return Image.open(self._files[camera][(t, True)]).convert("RGB")


def build_benchmark(episodes, out_dir: str, seed: int = 0, per_episode: int = 12) -> dict:
    """All five official files from a list of episodes (each used for every subset it supports)."""
    rng = np.random.default_rng(seed)
    by_subset = {s: [] for s in SUBSETS}
    for ep in episodes:
        by_subset["visual_same_view"] += plan_samples(ep, "visual_same_view", per_episode, rng)
        if len(ep.cameras) > 1:
            by_subset["visual_cross_view"] += plan_samples(ep, "visual_cross_view", per_episode, rng)
        text = plan_samples(ep, "text-normal", max(1, per_episode // 2), rng)
        by_subset["text-normal"] += text
        by_subset["text-unanswerable"] += make_text_unanswerable(text, rng)
        if any(ep.editable_frames(c) != [] for c in ep.cameras):
            by_subset["visual-unanswerable"] += plan_samples(ep, "visual-unanswerable", per_episode, rng)
    image_root = os.path.join(out_dir, "images")
    paths = {"image_root": image_root}
    for subset, samples in by_subset.items():
        write_images(samples, image_root)
        paths[subset] = os.path.join(out_dir, f"{subset}.jsonl")
        write_jsonl(paths[subset], [to_record(s) for s in samples])
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(description="Build Progress-Bench style JSONL files from episode folders.")
    ap.add_argument("episodes", nargs="+", help="episode folders (episode.json + {camera}/{index:04d}.jpg)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-episode", type=int, default=12)
    args = ap.parse_args(argv)
    paths = build_benchmark([FolderEpisode(d) for d in args.episodes], args.out, args.seed, args.per_episode)
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
