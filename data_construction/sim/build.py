"""ProgressBench-Sim generation: benchmark files and a disjoint training split (SFT with reasoning, RL)."""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import sys
import os
import shutil
import time

import numpy as np

from data_construction.construct import Sample, make_text_unanswerable, plan_samples, to_record, write_images
from data_pipeline.jsonl import write_jsonl, write_text
from data_construction.sim.episode import SimEpisode
from data_construction.sim.reasoning import response
from data_construction.sim.styles import REASONING
from data_construction.sim.tasks import FAMILIES, make_plan

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MARKER = ".sim_complete.json"
# (total samples, samples per trajectory) per file; train: (SFT samples, RL samples, samples per trajectory).
SIZES = {
    "small": {"visual_same_view": (40, 5), "visual_cross_view": (16, 4), "text-normal": (20, 4),
              "visual-unanswerable": (16, 4), "train": (300, 150, 6)},
    "full": {"visual_same_view": (1400, 14), "visual_cross_view": (546, 14), "text-normal": (503, 5),
             "visual-unanswerable": (360, 9), "train": (6000, 3000, 8)},
    # Many trajectories with few samples each: a trajectory's prompt text cannot stand for its answers.
    "nano": {"visual_same_view": (600, 6), "visual_cross_view": (240, 6), "text-normal": (240, 4),
             "visual-unanswerable": (120, 4), "train": (6000, 1000, 3)},
}
STREAMS = {"bench_same": 1, "bench_cross": 2, "bench_text": 3, "train_sft": 10, "train_rl": 11, "train_extra": 12}
TRAIN_MIX = {"visual_same_view": 0.4, "visual_cross_view": 0.2, "text-normal": 0.25,
             "text-unanswerable": 0.075, "visual-unanswerable": 0.075}


def make_episode(stream: str, index: int, seed: int, image_size: int, avoid_goals=frozenset()) -> SimEpisode:
    """Episode `index` of a stream; families cycle. Goals in avoid_goals are redrawn (train/test disjointness)."""
    rng = np.random.default_rng([seed, STREAMS[stream], index])
    family = FAMILIES[index % len(FAMILIES)]
    plan = make_plan(family, rng)
    for _ in range(100):
        if plan.goal not in avoid_goals:
            break
        plan = make_plan(family, rng)
    else:
        raise RuntimeError(f"{stream} episode {index}: every drawn goal is also a benchmark goal")
    return SimEpisode(f"sim_{stream}/{family}/{index:04d}", plan, image_size)


def _fill(total: int, per: int, episodes, choose_subset, seed: int, stream: str) -> list[Sample]:
    """Samples from successive episodes until `total` are planned."""
    samples = []
    for index, ep in enumerate(episodes):
        if len(samples) >= total:
            break
        rng = np.random.default_rng([seed, STREAMS[stream], index, 1])
        subset = choose_subset(rng)
        n = min(per, total - len(samples))
        samples += plan_samples(ep, subset, n, rng)
    return samples


def _stream(stream, seed, image_size, avoid=frozenset()):
    index = 0
    while True:
        yield make_episode(stream, index, seed, image_size, avoid)
        index += 1


def _render(job) -> int:
    samples, image_root = job
    return write_images(samples, image_root)


def _render_all(samples_by_root: list[tuple[list[Sample], str]], workers: int) -> int:
    groups = {}  # one job per (folder, episode): files shared between subsets are written once
    for samples, root in samples_by_root:
        for s in samples:
            groups.setdefault((root, s.episode.id), []).append(s)
    jobs = [(group, root) for (root, _), group in groups.items()]
    if workers <= 1:
        return sum(map(_render, jobs))
    # Forking a process that runs JAX's threads can deadlock; spawn then.
    method = "spawn" if "jax" in sys.modules else "fork"
    with mp.get_context(method).Pool(workers) as pool:
        return sum(pool.imap_unordered(_render, jobs, chunksize=4))


def paths_for(out_dir: str) -> dict:
    bench, train = os.path.join(out_dir, "bench"), os.path.join(out_dir, "train")
    paths = {"bench_dir": bench, "bench_images": os.path.join(bench, "images"),
             "train_dir": train, "train_images": os.path.join(train, "images"),
             "sft": os.path.join(train, "sft.jsonl"), "rl": os.path.join(train, "rl.jsonl")}
    for name in ("visual_same_view", "visual_cross_view", "text-normal", "text-unanswerable", "visual-unanswerable"):
        paths[name] = os.path.join(bench, f"{name}.jsonl")
    return paths


class OtherSimHere(FileExistsError):
    """The output directory holds a complete ProgressBench-Sim of other parameters (another job's data)."""


def plan_bench(size: str, seed: int, image_size: int) -> dict:
    """The benchmark's samples per file, planned (nothing rendered)."""
    counts = SIZES[size]

    def fixed(subset):
        return lambda rng: subset

    same_eps = []

    def same_stream():
        for ep in _stream("bench_same", seed, image_size):
            same_eps.append(ep)
            yield ep

    bench = {"visual_same_view": _fill(*counts["visual_same_view"], same_stream(), fixed("visual_same_view"), seed,
                                       "bench_same")}
    bench["visual-unanswerable"] = _fill(*counts["visual-unanswerable"], iter(same_eps),
                                         fixed("visual-unanswerable"), seed + 1, "bench_same")
    bench["visual_cross_view"] = _fill(*counts["visual_cross_view"], _stream("bench_cross", seed, image_size),
                                       fixed("visual_cross_view"), seed, "bench_cross")
    bench["text-normal"] = _fill(*counts["text-normal"], _stream("bench_text", seed, image_size),
                                 fixed("text-normal"), seed, "bench_text")
    bench["text-unanswerable"] = make_text_unanswerable(bench["text-normal"], np.random.default_rng([seed, 99]))
    if len(bench["visual-unanswerable"]) < counts["visual-unanswerable"][0]:
        raise RuntimeError("not enough same-view trajectories for the visual-unanswerable file")
    return bench


def goals_of(bench: dict) -> frozenset:
    """The goals of a planned benchmark's trajectories, which training episodes must avoid."""
    return frozenset(s.episode.goal for samples in bench.values() for s in samples)


def extra(out_dir: str, episodes: int, size: str = "small", seed: int = 0, image_size: int = 224,
          per: int = 8, workers: int | None = None) -> str:
    """OUT/visual_same_view.jsonl and OUT/images: up to `per` same-view samples from each of `episodes`
    training episodes of their own stream (train_extra), whose goals avoid the benchmark's of this
    size and seed as the training split's do; for skill rows (tools/skill_data.py) that need more
    observations than the SFT split holds. Returns the file's path."""
    stream = _stream("train_extra", seed, image_size, goals_of(plan_bench(size, seed, image_size)))
    samples = _fill(episodes * per, per, stream, lambda rng: "visual_same_view", seed, "train_extra")
    _render_all([(samples, os.path.join(out_dir, "images"))], workers or min(os.cpu_count() or 1, 8))
    path = os.path.join(out_dir, "visual_same_view.jsonl")
    write_jsonl(path, [to_record(s) for s in samples])
    return path


def generate(out_dir: str, size: str = "small", seed: int = 0, image_size: int = 224, workers: int | None = None,
             force: bool = False, reasoning: str = "full") -> dict:
    """Writes OUT/bench/*.jsonl + images and OUT/train/{sft,rl}.jsonl + images; returns their paths.
    reasoning: "full" (scene descriptions, ~250 tokens), "brief" (~50 tokens: the bracketing demo
    entries and the arithmetic only; what the CPU demo trains on), "observe" (brief, after a
    description of the observation, ~110 tokens) or "passed" (brief, after a yes or no for each demo
    entry: has the observation passed it; ~90 tokens).

    Skips the work when OUT holds a complete output with the same parameters (a marker file written last).
    One of another size, seed, image size or reasoning is refused (OtherSimHere) unless `force`: it may
    be another run's data; one of an older format version is replaced.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    if image_size < 56:
        raise ValueError(f"image_size must be at least 56 pixels, got {image_size}")
    if reasoning not in REASONING:
        raise ValueError(f"reasoning must be one of {REASONING}, got {reasoning!r}")
    params = {"size": size, "seed": seed, "image_size": image_size, "version": FORMAT_VERSION}
    if reasoning != "full":
        params["reasoning"] = reasoning
    paths = paths_for(out_dir)
    marker = os.path.join(out_dir, MARKER)
    if not force and os.path.exists(marker):
        with open(marker) as f:
            held = json.load(f)
        if held == params:
            return paths
        other = {k: (held.get(k), v) for k, v in params.items() if k != "version" and held.get(k) != v}
        if other:
            raise OtherSimHere(f"{out_dir} holds ProgressBench-Sim of other parameters (" + ", ".join(
                f"{k} {old!r} there, {new!r} asked" for k, (old, new) in other.items()) + "): use another directory "
                "for these parameters, or regenerate it (--force) if no run reads it")
        logger.warning("%s holds ProgressBench-Sim format version %s; generating version %s", out_dir,
                       held.get("version"), FORMAT_VERSION)
    for d in (paths["bench_dir"], paths["train_dir"]):
        shutil.rmtree(d, ignore_errors=True)
    if os.path.exists(marker):
        os.remove(marker)
    start = time.time()
    counts = SIZES[size]
    workers = workers or min(os.cpu_count() or 1, 8)
    bench = plan_bench(size, seed, image_size)
    bench_goals = goals_of(bench)
    names, probs = list(TRAIN_MIX), np.array(list(TRAIN_MIX.values()))

    def mixed(rng):
        return names[int(rng.choice(len(names), p=probs / probs.sum()))]

    n_sft, n_rl, per = counts["train"]
    train = {"sft": _fill(n_sft, per, _stream("train_sft", seed, image_size, bench_goals), mixed, seed, "train_sft"),
             "rl": _fill(n_rl, per, _stream("train_rl", seed, image_size, bench_goals), mixed, seed, "train_rl")}

    sft_records = [dict(to_record(s), response=response(s, reasoning)) for s in train["sft"]]
    written = _render_all([(s, paths["bench_images"]) for s in bench.values()]
                          + [(s, paths["train_images"]) for s in train.values()], workers)
    for subset, samples in bench.items():
        write_jsonl(paths[subset], [to_record(s) for s in samples])
    write_jsonl(paths["sft"], sft_records)
    write_jsonl(paths["rl"], [to_record(s) for s in train["rl"]])
    write_text(marker, json.dumps(params))  # whole or absent: a half-written marker would stop the next run
    logger.info("ProgressBench-Sim %s: %d images, %s in %.1f s", size, written,
                {k: len(v) for k, v in {**bench, **train}.items()}, time.time() - start)
    return paths
