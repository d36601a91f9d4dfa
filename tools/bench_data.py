"""Input-pipeline throughput: samples/s of data_pipeline.pipeline with 0, 1 and 2 worker processes.

python -m tools.bench_data --files DIR/visual_same_view.jsonl ... --image-root DIR/images
Without --files it writes a synthetic set (320x240 JPEG frames, visual and text records) to a
temporary folder. Prints a table: startup (until the first batch) and steady-state samples/s.
"""
from __future__ import annotations
if __package__ in (None, ""):  # run as `python tools/X.py`: import this checkout, as `python -m tools.X` does
    import os, sys; sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import os
import platform
import tempfile
import time

import numpy as np
from PIL import Image

from data_pipeline.jsonl import write_jsonl


def synthetic_set(root: str, trajectories: int = 16, steps: int = 4, observations: int = 4,
                  size: tuple[int, int] = (240, 320)) -> list[str]:
    """Visual and text record files with smooth random JPEG frames (about camera-frame size)."""
    rng = np.random.default_rng(0)
    rows = {"visual_same_view": [], "text-normal": []}
    for t in range(trajectories):
        tid = f"traj{t:03d}"
        os.makedirs(os.path.join(root, "images", tid), exist_ok=True)
        frames = [f"camera_front_{i:04d}.jpg" for i in range(steps + 1)]
        obs = [f"camera_front_obs_{j:04d}.jpg" for j in range(observations)]
        for name in frames + obs:
            small = rng.integers(0, 255, (size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
            Image.fromarray(small).resize(size[::-1], Image.BILINEAR).save(os.path.join(root, "images", tid, name))
        for j, o in enumerate(obs):
            progress = round(100 * (j + 0.5) / observations)
            closest = round((j + 0.5) / observations * steps) + 1
            common = {"id": tid, "task_goal": f"put the red cup {t} on the plate", "total_steps": steps,
                      "stage_to_estimate": [o], "closest_idx": closest, "progress_score": f"{progress}%",
                      "response": f"<ref_think>It looks like step {closest}.</ref_think><ref>{closest}</ref>"
                                  f"<score_think>Slightly past it.</score_think><score>{progress}%</score>"}
            rows["visual_same_view"].append(dict(common, visual_demo=frames))
            rows["text-normal"].append(dict(common, text_demo=[f"step {k} of the task" for k in range(steps)],
                                            closest_idx=min(closest, steps)))
    files = []
    for name, lines in rows.items():
        path = os.path.join(root, f"{name}.jsonl")
        write_jsonl(path, lines)
        files.append(path)
    return files


def measure(files, image_root, workers: int, batches: int, batch_size: int, max_pixels: int) -> tuple[float, float]:
    from data_pipeline.pipeline import make_dataset  # heavy (grain): imported after --help
    from data_pipeline.tokenizer import load_tokenizer

    ds = make_dataset(files, image_root, load_tokenizer(None), mode="think", batch_size=batch_size,
                      length_buckets=(2048, 4096, 8192), patch_buckets=(16384, 32768, 65536, 131072),
                      image_buckets=(64, 128, 256), max_pixels=max_pixels, num_epochs=None,
                      worker_count=workers)
    start = time.perf_counter()
    it = iter(ds)
    next(it)
    first = time.perf_counter()
    for _ in range(batches):
        next(it)
    end = time.perf_counter()
    if hasattr(it, "close"):
        it.close()
    return first - start, batches * batch_size / (end - first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", nargs="*", default=None,
                        help="benchmark/RL-format JSONL files to read (default: a synthetic set in a temporary folder)")
    parser.add_argument("--image-root", default=None, help="IMAGE_ROOT of --files (image paths are relative to it)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2],
                        help="worker process counts to measure, one table row each (default 0 1 2)")
    parser.add_argument("--batches", type=int, default=20, help="batches timed after the first (default 20)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per batch (default 8)")
    parser.add_argument("--max-pixels", type=int, default=1003520,
                        help="image resize bound in pixels, as data.max_pixels (default 1003520)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        files, image_root = args.files, args.image_root
        if not files:
            files, image_root = synthetic_set(tmp), os.path.join(tmp, "images")
        print(f"data: {', '.join(os.path.basename(f) for f in files)}; {os.cpu_count()} CPUs, "
              f"{platform.processor() or platform.machine()}; batch {args.batch_size}, {args.batches} timed batches")
        print(f"{'workers':>8} | {'startup s':>9} | {'samples/s':>9}")
        print(f"{'-' * 8}-+-{'-' * 9}-+-{'-' * 9}")
        for w in args.workers:
            startup, rate = measure(files, image_root, w, args.batches, args.batch_size, args.max_pixels)
            print(f"{w:>8} | {startup:>9.2f} | {rate:>9.1f}")


if __name__ == "__main__":
    main()
