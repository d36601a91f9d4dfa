"""The SFT job (LoRA or full): its spec (progress_jax/jobs.py: the model, the train state, the data
arguments and the `train_step` program, whose loss is in progress_jax/train/programs.py) run by the
train loop, then the trained parameters written and a few greedy answers shown.
"""
from __future__ import annotations

import logging
import math
import os

import jax

from progress_jax import distributed, export, handover, jobs, loading, sampling
from progress_jax.train import checkpoint, guards, inputs, loop, metrics_writer, validation

log = logging.getLogger(__name__)

# Peak dense bf16 FLOP/s per device for the MFU estimate (others: set train.peak_flops_per_device).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v5 lite": 197e12, "TPU v5p": 459e12}


# ---- throughput ------------------------------------------------------------------------------

def _peak_flops(t) -> float | None:
    if t.peak_flops_per_device > 0:
        return t.peak_flops_per_device * jax.device_count()
    kind = jax.devices()[0].device_kind
    for name, flops in PEAK_FLOPS.items():
        if name in kind:
            return flops * jax.device_count()
    return None


# ---- the run ---------------------------------------------------------------------------------

def run(config) -> dict:
    """The SFT job (configs/sft.py). Returns {"final_dir", "steps", "stopped"} (stopped: a
    SIGTERM ended it; rerunning resumes)."""
    distributed.maybe_initialize_distributed()
    t = config.train
    inp = inputs.check(config, "sft")
    accum = t.batch_size // t.micro_batch_size
    steps = t.steps or max(1, math.floor(t.epochs * inp.n_samples / t.batch_size))

    tokenizer = loading.load_tokenizer(config)
    validator = validation.Validator(config, tokenizer, *inp.val_files, mesh=inp.mesh) if inp.val_files else None
    spec = jobs.sft_spec(config, inp.mesh, steps=steps)
    family, mesh, setup = spec.family, spec.mesh, spec.setup
    train_step = spec.programs["train_step"]
    shards = spec.data["batch_shards"]
    from data_pipeline.pipeline import make_dataset
    it = iter(make_dataset(inp.files, inp.image_root, tokenizer, **spec.data))

    def next_batch():
        host = [next(it) for _ in range(accum)]
        arrays = family.stack_micro(host, spec.model.config, shards)
        n_tok = int(sum(b["attention_mask"].sum() for b in host))
        return loop.to_device(arrays, loop.batch_shardings(arrays, mesh, family), family), n_tok

    def step(state, batch, _):
        arrays, n_tok = batch
        state, metrics = train_step(state, setup.frozen, arrays)
        return state, {**metrics, "tokens": n_tok}

    hooks = [validation.hook(config, validator, lambda state: spec.policy(state["params"]))] if validator else []
    seq_len = config.data.length_buckets[-1]
    log.info("SFT: %d samples, %d steps of %d rows (%d micro-batches), workdir %s",
             inp.n_samples, steps, t.batch_size, accum, config.workdir)
    # SIGTERM between or after the steps also ends the job cleanly: the loop's own handler covers
    # the steps; this one lets the final save finish and skips the optional samples and export.
    with guards.StopRequest() as stop:
        opts = loop.Options(steps, config.workdir, t.save_every, t.keep, log_every=t.log_every, desc="sft",
                            hooks=hooks, lr_fn=spec.lr,
                            flops_per_token=family.flops_per_token(spec.model.config, seq_len, config.lora.rank > 0),
                            peak_flops=_peak_flops(t), run_config=checkpoint.run_config(config),
                            wandb_project=config.logging.wandb_project)
        result = loop.run(step, setup.state, next_batch, it, opts)
        final_dir = os.path.join(config.workdir, "final")
        if not result.stopped:
            handover.save_final(final_dir, result.state["params"], config, steps)
            log.info("trained parameters written to %s", final_dir)
            trained = spec.policy(result.state["params"])
            if t.demo_samples and inp.sim is not None and not stop.requested:
                show_samples(trained, tokenizer, spec, inp.sim, t.demo_samples, result.step)
            if t.export_merged and not stop.requested:
                export.write_hf(trained, os.path.join(config.workdir, "merged"), config.model.path, overwrite=True)
    return {"final_dir": final_dir, "steps": result.step, "stopped": result.stopped or stop.requested}


# ---- after training: greedy answers on a few held-out prompts ---------------------------------

SAMPLES_FILE = "samples.jsonl"


def show_samples(model, tokenizer, spec: jobs.Spec, sim: dict, count: int, step: int) -> list[str]:
    """Greedy answers (spec.sampling: temperature 0, train.demo_max_new_tokens) to `count` sim
    benchmark prompts (unseen in training) with their format check, written to
    <workdir>/samples.jsonl and TensorBoard's text tab at `step`; the console gets one line."""
    from data_pipeline.jsonl import write_jsonl
    from data_pipeline.parsing import strict_format_ok
    from data_pipeline.pipeline import make_dataset

    config = spec.config
    data = make_dataset([sim["visual_same_view"]], sim["bench_images"], tokenizer,
                        **{**spec.data, "batch_shards": 1, "with_answers": False, "batch_size": count, "num_epochs": 1,
                           "shuffle": False, "drop_remainder": False})
    batch = next(iter(data))
    gen = sampling.generate(model, batch, spec.sampling, jax.random.key(0), tokenizer=tokenizer)
    rows = [{"step": step, "key": list(key), "response": text, "strict_format": strict_format_ok(text)}
            for key, text in zip(batch["keys"], gen.texts) if key is not None]
    if jax.process_index() == 0:
        path = os.path.join(config.workdir, SAMPLES_FILE)
        write_jsonl(path, rows)
        with metrics_writer.MetricsWriter(config.workdir) as writer:
            writer.write(step, {"samples": metrics_writer.Text("\n\n".join(
                f"**{' / '.join(map(str, r['key']))}** (strict format: {r['strict_format']})\n\n{r['response']}"
                for r in rows))})
        log.info("greedy answers to %d held-out prompts: %d of them in the strict four-block format (%s)",
                 len(rows), sum(r["strict_format"] for r in rows), path)
    return [r["response"] for r in rows]
