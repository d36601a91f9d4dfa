"""Does a model's vision tower see progress? Two probes on its image features, no decoding.

python tools/probe_vision.py --bench FILE [--bench FILE ...] --train FILE [--trained RUN/final]
                             [--model-path DIR] [--samples 240] [--max-pixels 12544]

- matching (visual files): the demo frame whose features are nearest (L2) to the observation's is the
  answer, its progress the prediction: the `<ref>` a model could find by comparing images alone.
- linear (every file): ridge regression from the observation's features alone to its progress, fitted
  on the answerable records of --train and scored on the benchmark file: what the observation shows
  without any demonstration.

Prints one row per benchmark file: samples, matching ref accuracy and NSE, linear NSE, and the NSE of
answering 50% (NSE as docs/metrics.md). Without --trained (and --model-path) the model is the built-in
tiny one with its seed's random weights, which is what a demo SFT run starts from. Images are read at
most --max-pixels pixels (the demo's 112 x 112), as the jobs read them.
"""
from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script: import this checkout's packages, not an installed copy
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", action="append", required=True, help="benchmark JSONL file (repeatable)")
    ap.add_argument("--bench-images", default=None, help="their IMAGE_ROOT (default: <first file's dir>/images)")
    ap.add_argument("--train", required=True, help="training records (benchmark format) for the linear probe")
    ap.add_argument("--train-images", default=None, help="their IMAGE_ROOT (default: <train file's dir>/images)")
    ap.add_argument("--trained", default="", help="an SFT or GRPO run's final/ directory")
    ap.add_argument("--model-path", default="", help="a Hub checkpoint directory (default: the built-in tiny model)")
    ap.add_argument("--samples", type=int, default=240, help="answerable records per file (and x10 for --train)")
    ap.add_argument("--max-pixels", type=int, default=112 * 112, help="largest image size in pixels, as data.max_pixels")
    return ap


if __name__ == "__main__":  # as a command: --help and usage errors before the imports below (JAX: seconds)
    parser().parse_args()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import eval as eval_config  # noqa: E402
from data_pipeline.pipeline import make_dataset  # noqa: E402
from data_pipeline.records import load_records  # noqa: E402
from progress_jax import handover, loading  # noqa: E402
from progress_jax.eval.metrics import normalized_error  # noqa: E402

RIDGE = (1e1, 1e2, 1e3, 1e4)  # the fit keeps the strength with the lowest leave-out error on the training set


def image_features(model, tokenizer, records, image_root: str, cfg) -> list[np.ndarray]:
    """Per record, its images' features [images, tokens x width] as the decoder receives them
    (demo frames in order, the observation last)."""
    d = cfg.data
    batches = make_dataset([], image_root, tokenizer, records=records, with_answers=False, batch_size=8,
                           length_buckets=d.length_buckets, patch_buckets=d.patch_buckets,
                           image_buckets=d.image_buckets, min_pixels=d.min_pixels, max_pixels=d.max_pixels,
                           layout=d.prompt, shuffle=False, num_epochs=1, drop_remainder=False)
    embed = jax.jit(lambda ids, pv, vis: model.embed(ids, pv, vis))
    image_token = model.config.image_token_id
    out = []
    for b in batches:
        inputs = model.prepare(b["input_ids"], b["attention_mask"], b["pixel_values"], b["image_grid_thw"])
        x = np.asarray(embed(jnp.asarray(inputs["input_ids"]), jnp.asarray(inputs["pixel_values"]),
                             jax.tree.map(jnp.asarray, inputs["vision"])))
        for row, record in enumerate(b["records"]):
            if record is not None:
                images = len(record.visual_demo) + 1 if record.visual_demo else 1
                out.append(x[row, inputs["input_ids"][row] == image_token].reshape(images, -1))
    return out


def matching(records, feats) -> tuple[float, float]:
    """(ref accuracy, NSE) of answering the nearest demo frame's progress (visual answerable records)."""
    hits, errors = 0, []
    for record, f in zip(records, feats):
        k = int(np.argmin(np.linalg.norm(f[:-1] - f[-1], axis=1)))  # 0-based frame k stands for k / T
        hits += k + 1 == record.closest_idx
        errors.append(normalized_error(record.progress, k / record.total_steps))
    return hits / len(records), 100 * float(np.mean(errors))


def fit_linear(x: np.ndarray, y: np.ndarray):
    """Ridge regression on standardised features; the strength chosen on a held-out fifth of x."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    cut = len(z) * 4 // 5

    def solve(a, b, lam):
        return np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ (b - b.mean())), b.mean()

    def err(w, b0, a, b):
        return float(np.mean(np.abs(np.clip(a @ w + b0, 0, 1) - b)))

    lam = min(RIDGE, key=lambda lam: err(*solve(z[:cut], y[:cut], lam), z[cut:], y[cut:]))
    w, b0 = solve(z, y, lam)
    return lambda xs: np.clip(((xs - mu) / sd) @ w + b0, 0.0, 1.0)


def main(argv=None) -> int:
    args = parser().parse_args(argv)

    cfg = eval_config.get_config("demo")
    with cfg.unlocked():
        cfg.model.path = args.model_path
        cfg.data.max_pixels = args.max_pixels
        if args.trained and not args.model_path:  # the preset the run trained (the nano one, say)
            cfg.model.preset = handover.read_meta(args.trained).get("model_preset", cfg.model.preset)
    model = loading.load_policy(cfg, None, args.trained)
    tokenizer = loading.load_tokenizer(cfg)

    def answerable(path, n):
        records = [r for r in load_records(path) if r.answerable][:n]
        if not records:
            raise SystemExit(f"{path}: no answerable records")
        return records

    train = answerable(args.train, 10 * args.samples)
    train_root = args.train_images or os.path.join(os.path.dirname(args.train), "images")
    x = np.stack([f[-1] for f in image_features(model, tokenizer, train, train_root, cfg)])
    linear = fit_linear(x, np.array([r.progress for r in train]))
    bench_root = args.bench_images or os.path.join(os.path.dirname(args.bench[0]), "images")

    print("| file | samples | matching ref acc | matching NSE | linear NSE | constant 50% NSE |")
    print("|---|---:|---:|---:|---:|---:|")
    for path in args.bench:
        records = answerable(path, args.samples)
        feats = image_features(model, tokenizer, records, bench_root, cfg)
        gts = np.array([r.progress for r in records])
        lin = 100 * np.mean([normalized_error(g, p) for g, p in zip(gts, linear(np.stack([f[-1] for f in feats])))])
        const = 100 * np.mean([normalized_error(g, 0.5) for g in gts])
        acc, nse = matching(records, feats) if records[0].visual_demo else (None, None)
        cells = ["-" if v is None else f"{v:.1f}" for v in (None if acc is None else 100 * acc, nse, lin, const)]
        print(f"| {os.path.basename(path)} | {len(records)} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
