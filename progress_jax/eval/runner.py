"""The evaluation job: generate answers to Progress-Bench prompts with the JAX sampler, append them to a
predictions JSONL (resumable), score it, write metrics.json, tables and figures.

`run(config)` is the job (configs/eval.py); `evaluate(...)` does the work for an in-memory model, so
that other jobs (GRPO) can score the models they hold.

Several processes: every process runs the same batches (the model and batch are sharded over all
devices, so that is still data-parallel on the devices); only process 0 writes files and prints.
"""
from __future__ import annotations

import logging
import os

import jax

from data_pipeline.parsing import MODES
from data_pipeline.pipeline import make_dataset
from data_pipeline.records import check_images
from progress_jax import data_files, distributed, handover, jobs, loading
from progress_jax.errors import InputNotFound, UserError
from progress_jax.eval import provenance
from progress_jax.eval.predictions import (done_keys, load_bench, pending_records, prediction_line, PredictionWriter,
                                           read_predictions, score, write_results)
from progress_jax.console import progress_bar

log = logging.getLogger(__name__)


def bench_files(config) -> tuple[list[str], str]:
    """(benchmark JSONL files, image root) from eval.bench_files / data.bench_dir, else the sim's bench."""
    files = [os.fspath(f) for f in (config.get("eval") or {}).get("bench_files", ())]
    bench_dir = config.data.bench_dir
    if not files and not bench_dir:
        bench_dir = data_files.sim_paths(config)["bench_dir"]
    return find_bench(files, bench_dir, config.data.image_root)


def find_bench(files, bench_dir: str, image_root: str, root_key: str = "data.image_root") -> tuple[list[str], str]:
    """(files, image root): the given files, else every *.jsonl in bench_dir; images under image_root,
    else <bench_dir>/images (or <first file's directory>/images). Also the validation files of a
    training run (train/validation.py), whose image root has its own key `root_key`."""
    files = [os.fspath(f) for f in files]
    if not files:
        if not os.path.isdir(bench_dir):
            raise InputNotFound(f"config key data.bench_dir: no directory {bench_dir}")
        files = sorted(os.path.join(bench_dir, n) for n in os.listdir(bench_dir) if n.endswith(".jsonl"))
        if not files:
            raise InputNotFound(f"config key data.bench_dir: no .jsonl benchmark files in {bench_dir}")
    image_root = image_root or os.path.join(bench_dir or os.path.dirname(files[0]), "images")
    if not os.path.isdir(image_root):
        raise InputNotFound(f"config key {root_key}: no image directory {image_root}")
    return files, image_root


def evaluate(model, tokenizer, files, image_root: str, out_dir: str, config, *, mesh=None,
             run_name: str = "model", verbose: bool = True, bench: dict | None = None,
             weights: dict | None = None, blank_observation: bool = False) -> dict:
    """Predict the samples of `files` not yet in <out_dir>/predictions.jsonl, then score all of them.
    bench: the records to evaluate by file stem, instead of all of `files` (load_bench(files), or a
    subset of it: validation during training). weights: the model's identity for the predictions'
    provenance (eval/provenance.py; default: an in-memory model named `run_name`); predictions of
    another provenance in the file are refused, or replaced with config eval.overwrite.
    blank_observation: the ablation of eval.blank_observation (every observation image flat grey).

    config: an eval-style config (resolved: no None fields): data.mode, data buckets/pixels,
    data.worker_count, sampling.*, seed. Writes predictions.jsonl, metrics.json, table1/2 and the
    figures to out_dir; returns the metrics dict (the metrics.json content), {} off process 0."""
    mode = config.data.mode
    if mode not in MODES:
        raise ValueError(f"config key data.mode must be one of {MODES}, got {mode!r}")
    spec = jobs.eval_spec(config, mesh, model=model, blank_observation=blank_observation)
    rollout = spec.programs["rollout"]
    main = jax.process_index() == 0
    pred_path = os.path.join(out_dir, "predictions.jsonl")
    if bench is None:
        bench = load_bench(files)  # refuses empty benchmark files before anything is written
    description = provenance.describe(config, weights or {"in_memory": run_name}, blank_observation)
    lines = [obj for _, obj in read_predictions(pred_path).lines] if os.path.exists(pred_path) else []
    resume = provenance.check_resume(out_dir, lines, description, bool((config.get("eval") or {}).get("overwrite")))
    # The samples still to predict, fed to the pipeline as records (no copy of the file): every error
    # names the user's file and line. Their images are checked here, before any generation.
    todo = pending_records(bench, done_keys(pred_path) if resume else set())  # by file stem, in file order
    for records in todo.values():
        for record in records:
            check_images(record, image_root)
    if main:
        if not resume:
            os.remove(pred_path)
        provenance.write(out_dir, description)
    total = sum(map(len, todo.values()))
    if total:
        model = rollout.place(model)  # once for every batch (sampling.decode_layout)
    if verbose and main:
        log.info("%s: %d of %d samples to predict (%s mode) -> %s", run_name, total, sum(map(len, bench.values())),
                 mode, pred_path)
    key = jax.random.key(config.seed)
    step = 0
    writer = PredictionWriter(pred_path) if main else None
    bar = progress_bar(total, desc=f"eval {run_name}", enabled=main and verbose and total > 0)
    try:
        for records in todo.values():
            if not records:
                continue
            batches = make_dataset([], image_root, tokenizer, records=records, **spec.data)
            for batch in batches:
                gen = rollout(model, batch, jax.random.fold_in(key, step), tokenizer)
                step += 1
                rows = [(r, t) for r, t in zip(batch["records"], gen.texts) if r is not None]
                if writer is not None:
                    for record, text in rows:
                        writer.write({**prediction_line(record, text, mode), "made_by": provenance.digest(description)})
                bar.update(len(rows))
    finally:
        bar.close()
        if writer is not None:
            writer.close()

    if not main:
        return {}
    result = score(bench, (obj for _, obj in read_predictions(pred_path).lines), mode=mode)
    tables = write_results(result, out_dir, run_name)
    if verbose:
        print("\n".join(result.report.lines()))
        print(tables)
        log.info("wrote predictions, metrics.json, tables and figures to %s", out_dir)
    return result.metrics


def check_bench(files) -> None:
    """Read every benchmark record before any model is loaded (load_bench refuses an empty file)."""
    load_bench(files)


def run(config) -> None:
    distributed.maybe_initialize_distributed()
    config = config.copy_and_resolve_references()
    # Inputs first: the benchmark files (and the trained run) are read before the model is loaded.
    files, image_root = bench_files(config)
    check_bench(files)
    trained = config.eval.get("trained")
    meta = handover.read_meta(trained) if trained else None
    mesh = distributed.make_mesh(config)
    spec = jobs.eval_spec(config, mesh, meta=meta)  # the model: the base, or eval.trained's on it
    tokenizer = loading.load_tokenizer(config)
    out_dir = output_dir(config)
    if config.eval.run_name:
        name = config.eval.run_name
    elif trained:  # runs/grpo/final -> grpo
        name = os.path.basename(os.path.dirname(os.path.abspath(trained)))
    else:
        name = os.path.basename(os.path.normpath(config.model.path)) if config.model.path else "tiny-random"
    base = jobs.trained_config(config, trained, meta) if trained else config  # the model's preset and seed
    weights = {"model": provenance.model_identity(base),
               "trained": provenance.trained_identity(trained) if trained else None}
    evaluate(spec.model, tokenizer, files, image_root, out_dir, config, mesh=mesh, run_name=name, weights=weights,
             blank_observation=config.eval.blank_observation)


def output_dir(config) -> str:
    """eval.out_dir, else <workdir>/<data.mode>."""
    if not config.eval.out_dir and not config.workdir:
        raise UserError("config keys eval.out_dir and workdir are both empty: name the directory the job writes in")
    return config.eval.out_dir or os.path.join(config.workdir, config.data.mode)

