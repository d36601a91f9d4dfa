"""Validation during training: the evaluation job's metrics (NSE, PRC, AFRR, UDA, ref error:
eval/runner.evaluate, eval/metrics.py) on held-out benchmark files, run by a loop.Hook every
train.val_every steps (and before the first step with train.val_before_train), in SFT and GRPO.

- Files: train.val_files, else every *.jsonl in data.bench_dir, else (a run on ProgressBench-Sim)
  the sim's benchmark; images under train.val_image_root (default <bench dir>/images).
- train.val_samples > 0: a fixed subset (the same every time; whole trajectories, so that PRC has
  something to correlate, drawn per file in proportion to its size with a fixed seed).
- Decoding: greedy (temperature 0), up to train.val_max_new_tokens (0: sampling.max_new_tokens), with
  the run's prompt layout, mode and image settings; its own key, so the training RNG and data order
  are untouched (a run with validation has the losses of one without).
- Outputs (process 0): <workdir>/val/step_<N>/ holds what the eval job writes (predictions.jsonl,
  metrics.json, tables, figures); `val/...` scalars join the step's line in metrics.jsonl and
  TensorBoard; train.val_log_samples answers go to <workdir>/val_samples.jsonl and TensorBoard text.
Every process runs the generation (the model is sharded over all devices); only process 0 writes.
"""
from __future__ import annotations

import logging
import os
import time
from collections import defaultdict

import jax
import numpy as np

from data_pipeline.jsonl import JsonlAppender
from data_pipeline.records import Record, check_images
from progress_jax.eval import runner
from progress_jax.eval.predictions import load_bench, match_predictions, read_predictions
from progress_jax.train import loop
from progress_jax.train.metrics_writer import Text

log = logging.getLogger(__name__)

SAMPLES_FILE = "val_samples.jsonl"
METRICS = ("nse", "prc", "afrr", "uda", "ref_error")
# Scalar names: val/<metric> is the macro average (Table 1's headline), val/<setting>/<metric> per setting.
ENTRIES = {"macro": "val", "vision": "val/vision", "text": "val/text"}
SUBSET_SEED = 0  # fixed: the subset must not change with the run's seed


def subset(bench: dict[str, list[Record]], n: int) -> dict[str, list[Record]]:
    """At most n samples of `bench` (n <= 0: all): each file's share in proportion to its size
    (largest remainders), filled with whole trajectories in a fixed random order, the last one cut
    to fit; records keep their file order."""
    total = sum(map(len, bench.values()))
    if n <= 0 or n >= total:
        return bench
    exact = {stem: n * len(records) / total for stem, records in bench.items()}
    quota = {stem: int(x) for stem, x in exact.items()}
    for stem in sorted(exact, key=lambda s: quota[s] - exact[s])[:n - sum(quota.values())]:
        quota[stem] += 1
    rng = np.random.default_rng(SUBSET_SEED)
    out = {}
    for stem, records in bench.items():
        groups = defaultdict(list)
        for r in records:
            groups[r.id].append(r)
        trajectories, chosen = list(groups.values()), []
        for i in rng.permutation(len(trajectories)):
            if len(chosen) >= quota[stem]:
                break
            chosen += trajectories[i][:quota[stem] - len(chosen)]
        out[stem] = sorted(chosen, key=lambda r: r.line)
    return {stem: records for stem, records in out.items() if records}


def resolve_files(config, sim: dict | None) -> tuple[list[str], str] | None:
    """(files, image root) to validate on, or None when validation is off or has no files."""
    t, d = config.train, config.data
    if not (t.val_every or t.val_before_train):
        return None
    if t.val_files or d.bench_dir:
        return runner.find_bench(t.val_files, d.bench_dir, t.val_image_root, "train.val_image_root")
    if sim is not None:  # training on ProgressBench-Sim: its benchmark is the held-out set
        return runner.find_bench((), sim["bench_dir"], t.val_image_root or sim["bench_images"],
                                 "train.val_image_root")
    log.warning("validation off: train.val_every is %d but neither train.val_files nor data.bench_dir "
                "is set", t.val_every)
    return None


class Validator:
    """Validation on fixed benchmark samples; `run(step, model)` -> the step's `val/...` metrics."""

    def __init__(self, config, tokenizer, files, image_root: str, mesh=None, reward=None):
        """Reads the files and checks the subset's images (before any model is loaded).
        reward(responses, records) -> [{"overall", ...}]: logged with the text samples (GRPO)."""
        t = config.train
        self.tokenizer, self.mesh, self.reward = tokenizer, mesh, reward
        self.files, self.image_root = files, image_root
        self.workdir = config.workdir
        self.bench = subset(load_bench(files), t.val_samples)
        for records in self.bench.values():
            for record in records:
                check_images(record, image_root)
        self.config = config.copy_and_resolve_references()
        with self.config.unlocked():  # the eval job's settings, decoded greedily
            self.config.sampling.temperature = 0.0
            self.config.sampling.max_new_tokens = t.val_max_new_tokens or config.sampling.max_new_tokens
        self.shown = _round_robin(self.bench, t.val_log_samples)
        self.n = sum(map(len, self.bench.values()))
        log.info("validation: %d samples of %s every %d steps", self.n, ", ".join(files), t.val_every)

    def out_dir(self, step: int) -> str:
        return os.path.join(self.workdir, "val", f"step_{step:06d}")

    def run(self, step: int, model) -> dict:
        """Predict (resuming a killed validation of the same step), score, log; {} off process 0."""
        t0 = time.perf_counter()
        out_dir = self.out_dir(step)
        metrics = runner.evaluate(model, self.tokenizer, self.files, self.image_root, out_dir, self.config,
                                  mesh=self.mesh, run_name=f"step {step}", verbose=False, bench=self.bench)
        if jax.process_index() != 0:
            return {}
        out = {f"{prefix}/{m}": metrics[entry][m] for entry, prefix in ENTRIES.items() for m in METRICS
               if metrics[entry][m] is not None}
        if self.shown:
            out["val/samples"] = Text(self._log_samples(step, out_dir))
        out["time/val_s"] = time.perf_counter() - t0
        log.info("validation at step %d (%d samples, %.1f s): %s", step, self.n, out["time/val_s"],
                 ", ".join(f"{m} {out[f'val/{m}']:.1f}" for m in METRICS if f"val/{m}" in out))
        return out

    def _log_samples(self, step: int, out_dir: str) -> str:
        """Appends the shown samples' answers to <workdir>/val_samples.jsonl; returns them as Markdown."""
        lines = read_predictions(os.path.join(out_dir, "predictions.jsonl")).lines
        found = match_predictions(self.bench, (obj for _, obj in lines))
        preds = [found.get((r.source, r.line), {}) for r in self.shown]
        responses = [p.get("response") or "" for p in preds]
        rewards = self.reward(responses, self.shown) if self.reward else [None] * len(preds)
        rows = []
        for r, p, text, reward in zip(self.shown, preds, responses, rewards):
            row = {"step": step, "setting": r.source, "id": r.id, "stage": r.observation, "line": r.line,
                   "response": text, "score": p.get("score"), "ref": p.get("ref"), "gt_score": r.progress,
                   "gt_ref": r.closest_idx}
            if reward is not None:
                row["reward"] = {k: float(v) for k, v in reward.items()}
            rows.append(row)
        writer = JsonlAppender(os.path.join(self.workdir, SAMPLES_FILE))
        try:
            for row in rows:
                writer.write(row)
        finally:
            writer.close()
        return "\n\n".join(_markdown(row) for row in rows)


def _round_robin(bench: dict[str, list[Record]], count: int) -> list[Record]:
    """`count` samples, one from each file in turn, so every setting is shown."""
    out, i = [], 0
    while len(out) < count and any(i < len(records) for records in bench.values()):
        out += [records[i] for records in bench.values() if i < len(records)][:count - len(out)]
        i += 1
    return out


def _markdown(row: dict) -> str:
    def answer(score, ref):
        return f"score {'n/a' if score is None else f'{score:.2f}'}, ref {'n/a' if ref is None else ref}"

    head = (f"**{row['setting']}** id `{row['id']}` stage `{row['stage']}` (line {row['line']}): "
            f"{answer(row['score'], row['ref'])}; truth {answer(row['gt_score'], row['gt_ref'])}")
    if "reward" in row:
        head += "; reward " + ", ".join(f"{k} {v:.3f}" for k, v in row["reward"].items())
    return head + "\n\n" + "\n".join("    " + line for line in (row["response"] or "(empty)").split("\n"))


def hook(config, validator: Validator, model_of) -> loop.Hook:
    """The loop.Hook: validates model_of(state) every train.val_every steps, at the last step, and
    (train.val_before_train) before the first step of a fresh run."""
    t = config.train
    return loop.Hook(lambda step, state: validator.run(step, model_of(state)), t.val_every,
                     at_start=t.val_before_train)
