"""SFT (LoRA or full): masked token-level NLL on the answer tokens, one jitted sharded step, and the job.

Loss: the NLL of every target token (loss_mask[t] = 1, predicted from position t - 1) summed
and divided by the number of target tokens of the whole global batch, so that k accumulated
micro-batches give exactly the loss and gradients of one batch of k times the rows.
"""
from __future__ import annotations

import logging
import math
import os

import jax
import jax.numpy as jnp
import optax

from progress_jax import chunked, distributed, export, handover, loading, sampling, sharding
from progress_jax.models import families
from progress_jax.train import checkpoint, guards, inputs, loop, metrics_writer, schedule, validation

log = logging.getLogger(__name__)

# Peak dense bf16 FLOP/s per device for the MFU estimate (others: set train.peak_flops_per_device).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v5 lite": 197e12, "TPU v5p": 459e12}


# ---- loss ------------------------------------------------------------------------------------

def nll_sum(model, mb: dict, mesh=None, dropout_rng=None, remat: str = "none", loss_chunk: int = 0):
    """Sum of target-token NLLs of one micro-batch (arrays as positions.model_inputs gives them,
    plus loss_mask). loss_chunk > 0: logits computed (and recomputed in the backward pass) for
    that many positions at a time, never the whole [B, L, V] at once (progress_jax/chunked.py)."""
    ids = mb["input_ids"]
    hidden = loop.hidden_states(model, mb, mesh, remat, dropout_rng)

    def nll(h, targets):
        logits = model.logits(h)  # float32
        return jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]

    weights = mb["loss_mask"][:, 1:].astype(jnp.float32)
    return jnp.sum(chunked.map_positions(nll, loss_chunk, hidden[:, :-1], ids[:, 1:]) * weights)


def loss_and_grads(parts: loop.Parts, params: dict, frozen, batch: dict, rng=None, mesh=None,
                   remat: str = "none", loss_chunk: int = 0):
    """(loss, grads, target token count) of a batch whose arrays carry a leading micro-batch axis
    [k, ...]: NLL sums and their gradients are summed over the k micro-batches (a scan), then
    divided by the global count of target tokens. rng: LoRA-dropout key (None: no dropout)."""
    n_tokens = jnp.maximum(batch["loss_mask"][:, :, 1:].sum(), 1).astype(jnp.float32)

    def micro(carry, xs):
        i, mb = xs
        key = None if rng is None else jax.random.fold_in(rng, i)
        f = lambda p: nll_sum(parts.model(p, frozen), mb, mesh, key, remat, loss_chunk)
        s, g = jax.value_and_grad(f)(params)
        return (carry[0] + s, jax.tree.map(lambda a, b: a + b.astype(jnp.float32), carry[1], g)), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    k = batch["input_ids"].shape[0]
    (total, grads), _ = jax.lax.scan(micro, (jnp.zeros((), jnp.float32), zeros), (jnp.arange(k), batch))
    return total / n_tokens, jax.tree.map(lambda g: g / n_tokens, grads), n_tokens


def make_step(parts: loop.Parts, tx, mesh=None, remat: str = "none", loss_chunk: int = 0, dropout: bool = True):
    """step(state, frozen, batch) -> (state, metrics): one optimizer step on the accumulated
    gradients of the batch's micro-batches (see loss_and_grads)."""
    def step(state, frozen, batch):
        rng = jax.random.fold_in(state["rng"], state["step"]) if dropout else None
        loss, grads, n_tokens = loss_and_grads(parts, state["params"], frozen, batch, rng, mesh, remat, loss_chunk)
        new_state = loop.apply_gradients(state, grads, tx)
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), "target_tokens": n_tokens}

    return step


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
    files, image_root, sim, n_samples, val_files, mesh = (inp.files, inp.image_root, inp.sim, inp.n_samples,
                                                          inp.val_files, inp.mesh)
    accum = t.batch_size // t.micro_batch_size
    steps = t.steps or max(1, math.floor(t.epochs * n_samples / t.batch_size))

    family = families.for_config(config)
    tokenizer = loading.load_tokenizer(config)
    validator = validation.Validator(config, tokenizer, *val_files, mesh=mesh) if val_files else None
    model = loading.load_policy(config, mesh, t.init_params)
    shards = sharding.batch_shards(mesh)  # each device encodes its own rows' images
    it = iter(_dataset(config, files, image_root, tokenizer, batch_shards=shards))
    tx = schedule.make_optimizer(t.lr, t.weight_decay, t.warmup_ratio, steps, t.clip_norm or None, schedule=t.schedule)
    setup = loop.setup_state(model, mesh, tx, rank=config.lora.rank, freeze_vision=config.model.freeze_vision,
                             seed=config.seed)
    parts = setup.parts

    def next_batch():
        host = [next(it) for _ in range(accum)]
        arrays = family.stack_micro(host, model.config, shards)
        n_tok = int(sum(b["attention_mask"].sum() for b in host))
        return loop.to_device(arrays, loop.batch_shardings(arrays, mesh, family), family), n_tok

    step_fn = make_step(parts, tx, mesh, config.model.remat, t.loss_chunk, dropout=config.lora.dropout > 0)
    jitted = {}  # shardings depend on which keys the batch holds: jit on the first batch's structure

    def step(state, batch, _):
        arrays, n_tok = batch
        if "fn" not in jitted:
            jitted["fn"] = loop.jit_step(step_fn, mesh, setup.state_sh, setup.frozen_sh,
                                         loop.batch_shardings(arrays, mesh, family))
        state, metrics = jitted["fn"](state, parts.frozen, arrays)
        return state, {**metrics, "tokens": n_tok}

    hooks = [validation.hook(config, validator, lambda state: parts.model(state["params"]))] if validator else []
    seq_len = config.data.length_buckets[-1]
    log.info("SFT: %d samples, %d steps of %d rows (%d micro-batches), workdir %s",
             n_samples, steps, t.batch_size, accum, config.workdir)
    # SIGTERM between or after the steps also ends the job cleanly: the loop's own handler covers
    # the steps; this one lets the final save finish and skips the optional samples and export.
    with guards.StopRequest() as stop:
        opts = loop.Options(steps, config.workdir, t.save_every, t.keep, log_every=t.log_every, desc="sft",
                            hooks=hooks, lr_fn=schedule.make_schedule(t.schedule, t.lr, steps, t.warmup_ratio),
                            flops_per_token=family.flops_per_token(model.config, seq_len, config.lora.rank > 0),
                            peak_flops=_peak_flops(t), run_config=checkpoint.run_config(config),
                            wandb_project=config.logging.wandb_project)
        result = loop.run(step, setup.state, next_batch, it, opts)
        final_dir = os.path.join(config.workdir, "final")
        if not result.stopped:
            handover.save_trainable(final_dir, result.state["params"], handover.run_meta(config, steps))
            log.info("trained parameters written to %s", final_dir)
            trained = parts.model(result.state["params"])
            if t.demo_samples and sim is not None and not stop.requested:
                show_samples(trained, tokenizer, config, sim, t.demo_samples, result.step)
            if t.export_merged and not stop.requested:
                export.write_hf(trained, os.path.join(config.workdir, "merged"), config.model.path, overwrite=True)
    return {"final_dir": final_dir, "steps": result.step, "stopped": result.stopped or stop.requested}


def _dataset(config, files, image_root, tokenizer, **over):
    d, t = config.data, config.train
    kw = dict(mode=d.mode, layout=d.prompt, batch_size=t.micro_batch_size, length_buckets=d.length_buckets,
              patch_buckets=d.patch_buckets, image_buckets=d.image_buckets, min_pixels=d.min_pixels,
              max_pixels=d.max_pixels, seed=config.seed, num_epochs=None, worker_count=d.worker_count)
    kw.update(over)
    from data_pipeline.pipeline import make_dataset
    return make_dataset(files, image_root, tokenizer, **kw)


# ---- after training: greedy answers on a few held-out prompts ---------------------------------

SAMPLES_FILE = "samples.jsonl"


def show_samples(model, tokenizer, config, sim: dict, count: int, step: int) -> list[str]:
    """Greedy answers (sampling.generate at temperature 0) to `count` sim benchmark prompts
    (unseen in training) with their format check, written to <workdir>/samples.jsonl and
    TensorBoard's text tab at `step`; the console gets one line."""
    from data_pipeline.jsonl import write_jsonl
    from data_pipeline.parsing import strict_format_ok

    data = _dataset(config, [sim["visual_same_view"]], sim["bench_images"], tokenizer, with_answers=False,
                    batch_size=count, num_epochs=1, shuffle=False, drop_remainder=False)
    batch = next(iter(data))
    params = sampling.SamplingParams(max_new_tokens=config.train.demo_max_new_tokens, temperature=0.0)
    gen = sampling.generate(model, batch, params, jax.random.key(0), tokenizer=tokenizer)
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
