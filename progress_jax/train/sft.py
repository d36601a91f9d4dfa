"""LoRA SFT: masked token-level NLL on the answer tokens, one jitted sharded step, and the run.

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
import numpy as np
import optax
from flax import nnx

from progress_jax import lora, runtime, sharding
from progress_jax.models import qwen2_5_vl
from progress_jax.models.qwen2_5_vl import positions
from progress_jax.models.qwen2_5_vl.model import REMAT_POLICIES
from progress_jax.train import checkpoint, guards, loop, metrics_writer, schedule

log = logging.getLogger(__name__)

# Peak dense bf16 FLOP/s per device for the MFU estimate (others: set train.peak_flops_per_device).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v5 lite": 197e12, "TPU v5p": 459e12}


# ---- loss ------------------------------------------------------------------------------------

def _chunk_nll(model, h, targets, weights):
    logits = model.logits(h)  # float32
    tgt = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jnp.sum((jax.nn.logsumexp(logits, axis=-1) - tgt) * weights)


def nll_sum(model, mb: dict, mesh=None, dropout_rng=None, remat: str = "none", loss_chunk: int = 0):
    """Sum of target-token NLLs of one micro-batch (arrays as positions.model_inputs gives them,
    plus loss_mask). loss_chunk > 0: logits computed (and recomputed in the backward pass) for
    that many positions at a time, never the whole [B, L, V] at once."""
    ids = mb["input_ids"]
    x = sharding.constrain_batch(model.embed(ids, mb.get("pixel_values"), mb.get("vision")), mesh)
    hidden, _ = model.decode(x, mb["position_ids"], mb["attention_mask"], dropout_rng=dropout_rng, remat=remat)
    hidden = sharding.constrain_batch(hidden, mesh)
    h, t, w = hidden[:, :-1], ids[:, 1:], mb["loss_mask"][:, 1:].astype(jnp.float32)
    T = h.shape[1]
    if loss_chunk <= 0 or loss_chunk >= T:
        return _chunk_nll(model, h, t, w)
    n = -(-T // loss_chunk)
    pad = n * loss_chunk - T
    h = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
    t, w = jnp.pad(t, ((0, 0), (0, pad))), jnp.pad(w, ((0, 0), (0, pad)))
    split = lambda a: jnp.moveaxis(a.reshape(a.shape[0], n, loss_chunk, *a.shape[2:]), 1, 0)
    body = jax.checkpoint(lambda c, xs: (c + _chunk_nll(model, *xs), None))
    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (split(h), split(t), split(w)))
    return total


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


# ---- host batches ----------------------------------------------------------------------------

def stack_micro(host_batches: list[dict], config: qwen2_5_vl.Qwen25VLConfig) -> dict:
    """Pipeline host batches -> model inputs stacked on a leading micro-batch axis, padded to the
    largest length and patch count among them (padding changes no loss term)."""
    L = max(b["input_ids"].shape[1] for b in host_batches)
    P = max(b["pixel_values"].shape[0] for b in host_batches)
    out = []
    for b in host_batches:
        pad_l = L - b["input_ids"].shape[1]
        padded = {
            "input_ids": np.pad(b["input_ids"], ((0, 0), (0, pad_l)), constant_values=config.pad_token_id),
            "attention_mask": np.pad(b["attention_mask"], ((0, 0), (0, pad_l))),
            "pixel_values": np.pad(b["pixel_values"], ((0, P - b["pixel_values"].shape[0]), (0, 0))),
            "image_grid_thw": b["image_grid_thw"],
        }
        inputs = qwen2_5_vl.model_inputs(padded, config)
        inputs.pop("rope_deltas")
        inputs["loss_mask"] = np.pad(b["loss_mask"], ((0, 0), (0, pad_l))).astype(np.int32)
        out.append(inputs)
    for key in positions.GROUP_KEYS:  # attention groups: one shape for all micro-batches
        rows = max(o["vision"][key].shape[0] for o in out)
        width = max(o["vision"][key].shape[1] for o in out)
        for o in out:
            o["vision"][key] = positions.pad_groups(o["vision"], rows, width, key)
    return jax.tree.map(lambda *xs: np.stack(xs), *out)


# ---- config ----------------------------------------------------------------------------------

def resolve(config) -> None:
    """Fill the train.* fields left unset (None) with the recipe for the model: REFERENCE §6 with
    a model.path, the fast tiny demo without; then check every value, naming the key."""
    t = config.train
    tiny = not config.model.path
    defaults = dict(lr=2e-3 if tiny else 1e-4, batch_size=8 if tiny else 64,
                    micro_batch_size=8 if tiny else 1, epochs=1.0 if tiny else 3.0, steps=120 if tiny else 0,
                    demo_samples=2 if tiny else 0)
    data_defaults = (dict(min_pixels=56 * 56, max_pixels=112 * 112, length_buckets=(512, 1024),
                          patch_buckets=(2048, 4096, 8192), image_buckets=(32, 64, 128)) if tiny else
                     dict(min_pixels=3136, max_pixels=1003520, length_buckets=(4096, 8192, 16384, 32768),
                          patch_buckets=(8192, 16384, 32768, 65536), image_buckets=(8, 16, 32)))
    # The tiny default trains every LM weight: LoRA on a random base has nothing to adapt.
    lora_defaults = dict(rank=0 if tiny else 8)
    with config.unlocked():
        for section, values in ((t, defaults), (config.data, data_defaults), (config.lora, lora_defaults)):
            for k, v in values.items():
                if section.get(k) is None:
                    section[k] = v
    checks = [
        ("train.lr", t.lr > 0, "must be > 0"),
        ("train.batch_size", t.batch_size >= 1, "must be >= 1"),
        ("train.micro_batch_size", t.micro_batch_size >= 1, "must be >= 1"),
        ("train.epochs", t.epochs > 0, "must be > 0"),
        ("train.steps", t.steps >= 0, "must be >= 0 (0: from train.epochs)"),
        ("train.warmup_ratio", 0 <= t.warmup_ratio < 1, "must be in [0, 1)"),
        ("train.weight_decay", t.weight_decay >= 0, "must be >= 0"),
        ("train.clip_norm", t.clip_norm >= 0, "must be >= 0 (0: no clipping)"),
        ("train.loss_chunk", t.loss_chunk >= 0, "must be >= 0 (0: no chunking)"),
        ("train.save_every", t.save_every >= 1, "must be >= 1"),
        ("train.keep", t.keep >= 1, "must be >= 1"),
        ("train.demo_samples", t.demo_samples >= 0, "must be >= 0"),
        ("model.remat", config.model.remat in REMAT_POLICIES, f"must be one of {sorted(REMAT_POLICIES)}"),
        ("lora.rank", isinstance(config.lora.rank, int) and config.lora.rank >= 0, "must be an integer >= 0"),
        ("lora.alpha", config.lora.alpha > 0, "must be > 0"),
        ("lora.dropout", 0 <= config.lora.dropout < 1, "must be in [0, 1)"),
    ]
    for key, ok, problem in checks:
        if not ok:
            value = config
            for part in key.split("."):
                value = value[part]
            raise ValueError(f"config key {key} {problem}, got {value!r}")
    per_step = t.micro_batch_size * jax.process_count()
    if t.batch_size % per_step:
        raise ValueError(f"config key train.batch_size ({t.batch_size}) must be a multiple of "
                         f"train.micro_batch_size x processes ({t.micro_batch_size} x {jax.process_count()})")
    for f in config.data.train_files:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"config key data.train_files: no file {f}")
    if t.init_params and not os.path.isfile(os.path.join(t.init_params, loop.TRAINABLE_FILE)):
        raise FileNotFoundError(f"config key train.init_params: no {loop.TRAINABLE_FILE} in {t.init_params}")
    runtime.dtype(config.model.param_dtype, "model.param_dtype")
    runtime.dtype(config.model.compute_dtype, "model.compute_dtype")


def _peak_flops(t) -> float | None:
    if t.peak_flops_per_device > 0:
        return t.peak_flops_per_device * jax.device_count()
    kind = jax.devices()[0].device_kind
    for name, flops in PEAK_FLOPS.items():
        if name in kind:
            return flops * jax.device_count()
    return None


def flops_per_token(config: qwen2_5_vl.Qwen25VLConfig, seq_len: int, lora_on: bool) -> float:
    """metrics_writer.train_flops_per_token for the language model (vision tower not counted):
    N = every decoder linear layer + the output projection; LoRA skips base weight gradients."""
    t = config.text
    attn = t.hidden_size * t.head_dim * (t.num_attention_heads * 2 + t.num_key_value_heads * 2)
    mlp = 3 * t.hidden_size * t.intermediate_size
    n = t.num_hidden_layers * (attn + mlp) + t.hidden_size * t.vocab_size
    return metrics_writer.train_flops_per_token(n, t.num_hidden_layers, seq_len, t.num_attention_heads * t.head_dim,
                                                backward_factor=1.0 if lora_on else 2.0)


# ---- the run ---------------------------------------------------------------------------------

def run(config) -> dict:
    """The SFT job. Returns {"final_dir", "steps", "losses", "stopped"} (stopped: a SIGTERM
    ended it); see configs/sft.py."""
    runtime.maybe_initialize_distributed()
    resolve(config)
    t = config.train
    mesh = runtime.make_mesh(config)
    n_batch = math.prod(mesh.shape[a] for a in sharding.BATCH)
    if (t.micro_batch_size * jax.process_count()) % n_batch:
        raise ValueError(f"config key train.micro_batch_size: {t.micro_batch_size} rows per process do not split "
                         f"over the mesh's data x fsdp = {n_batch} devices")
    accum = t.batch_size // (t.micro_batch_size * jax.process_count())

    model = runtime.load_policy(config, mesh, t.init_params)
    tokenizer = runtime.load_tokenizer(config)
    files, image_root, sim = runtime.train_data(config, "sft")
    n_samples = runtime.count_samples(files)
    steps = t.steps or max(1, math.floor(t.epochs * n_samples / t.batch_size))

    data = _dataset(config, files, image_root, tokenizer)
    it = iter(data)
    parts, params = loop.split(model, lora.trainable_filter(config.lora.rank))
    tx = schedule.make_optimizer(t.lr, t.weight_decay, t.warmup_ratio, steps, t.clip_norm or None)
    state = loop.init_state(params, tx, config.seed)
    state_sh = loop.state_shardings(jax.eval_shape(lambda: state), mesh)
    state = jax.device_put(state, state_sh)
    frozen_sh = sharding.param_shardings(parts.frozen, mesh)

    os.makedirs(config.workdir, exist_ok=True)
    ckpt = checkpoint.Checkpointer(os.path.join(config.workdir, "checkpoints"), t.save_every, t.keep,
                                  run_config=checkpoint.run_config(config))
    state, start = loop.restore_or_keep(ckpt, state, it)

    def next_batch():
        host = [next(it) for _ in range(accum)]
        arrays = stack_micro(host, model.config)
        n_tok = int(sum(b["attention_mask"].sum() for b in host)) * jax.process_count()
        return loop.to_device(arrays, loop.batch_shardings(arrays, mesh)), n_tok

    step_fn = make_step(parts, tx, mesh, config.model.remat, t.loss_chunk, dropout=config.lora.dropout > 0)
    # Shardings depend on which keys the batch holds: jit lazily on the first batch's structure.
    jitted = {}

    def step(state, frozen, batch):
        if "fn" not in jitted:
            jitted["fn"] = loop.jit_step(step_fn, mesh, state_sh, frozen_sh, loop.batch_shardings(batch, mesh))
        return jitted["fn"](state, frozen, batch)

    seq_len = config.data.length_buckets[-1] if config.data.length_buckets else 1024
    losses = []
    log.info("SFT: %d samples, %d steps of %d rows (%d micro-batches), from step %d, workdir %s",
             n_samples, steps, t.batch_size, accum, start, config.workdir)
    # SIGTERM between or after the steps also ends the job cleanly: the loop's own handler covers
    # the steps; this one lets the final save finish and skips the optional demo and export.
    with guards.StopRequest() as stop:
        with metrics_writer.MetricsWriter(config.workdir, enabled=jax.process_index() == 0) as writer:
            state, done = loop.train(
                step, state, parts.frozen, next_batch, it, steps, ckpt, writer, start, lr_fn=tx_schedule(t, steps),
                flops_per_token=flops_per_token(model.config, seq_len, config.lora.rank > 0),
                peak_flops=_peak_flops(t), on_step=lambda s, m: losses.append(m["loss"]))
        ckpt.close()
        final_dir = os.path.join(config.workdir, "final")
        if done == steps:
            meta = {"lora": config.lora.to_dict(), "model_path": config.model.path,
                    "model_preset": config.model.preset, "seed": config.seed, "steps": steps}
            loop.save_trainable(final_dir, state["params"], meta)
            log.info("trained parameters written to %s", final_dir)
            trained = parts.model(state["params"])
            if t.demo_samples and sim is not None and not stop.requested:
                demo(trained, tokenizer, config, sim, t.demo_samples)
            if t.export_merged and not stop.requested:
                qwen2_5_vl.save_pretrained(lora.merge(trained), os.path.join(config.workdir, "merged"), overwrite=True)
    return {"final_dir": final_dir, "steps": done, "losses": losses, "stopped": stop.requested}


def tx_schedule(t, steps):
    return schedule.cosine_schedule(t.lr, steps, t.warmup_ratio)


def _dataset(config, files, image_root, tokenizer, **over):
    d, t = config.data, config.train
    kw = dict(mode=d.mode, layout=d.prompt, batch_size=t.micro_batch_size, length_buckets=d.length_buckets,
              patch_buckets=d.patch_buckets, image_buckets=d.image_buckets, min_pixels=d.min_pixels,
              max_pixels=d.max_pixels, seed=config.seed, num_epochs=None, worker_count=d.worker_count)
    kw.update(over)
    from data_pipeline.pipeline import make_dataset
    return make_dataset(files, image_root, tokenizer, **kw)


# ---- after training: greedy answers on a few held-out prompts ---------------------------------

def greedy(model, inputs: dict, max_new: int, eos_id: int) -> list[int]:
    """Greedy decoding of one unpadded prompt (model_inputs arrays, batch 1) with the KV cache."""
    n = inputs["input_ids"].shape[1]
    S = n + max_new
    kv_mask = jnp.ones((1, S), jnp.int32)

    @nnx.jit
    def prefill(model, ids, pos, pv, vis):
        cache = model.init_cache(1, S)
        hidden, cache = model.decode(model.embed(ids, pv, vis), pos, kv_mask, cache, 0)
        return jnp.argmax(model.logits(hidden[:, -1]), -1), cache

    @nnx.jit
    def next_token(model, tok, pos, cache, index):
        hidden, cache = model.decode(model.embed(tok[:, None]), pos, kv_mask, cache, index)
        return jnp.argmax(model.logits(hidden[:, -1]), -1), cache

    tok, cache = prefill(model, inputs["input_ids"], inputs["position_ids"], inputs.get("pixel_values"),
                         inputs.get("vision"))
    start = int(inputs["position_ids"].max()) + 1
    out = []
    for i in range(max_new):
        out.append(int(tok[0]))
        if out[-1] == eos_id:
            break
        pos = jnp.full((3, 1, 1), start + i, jnp.int32)
        tok, cache = next_token(model, tok, pos, cache, n + i)
    return out


def demo(model, tokenizer, config, sim: dict, count: int) -> list[str]:
    """Print greedy answers to `count` benchmark prompts (unseen in training) and their format check."""
    from data_pipeline.parsing import strict_format_ok

    data = _dataset(config, [sim["visual_same_view"]], sim["bench_images"], tokenizer, with_answers=False,
                    batch_size=1, num_epochs=1, shuffle=False)
    answers = []
    for host, _ in zip(iter(data), range(count)):
        n = int(host["attention_mask"].sum())
        prompt = {**host, "input_ids": host["input_ids"][:, :n], "attention_mask": host["attention_mask"][:, :n]}
        inputs = jax.tree.map(jnp.asarray, qwen2_5_vl.model_inputs(prompt, model.config))
        ids = greedy(model, inputs, max_new=config.train.demo_max_new_tokens, eos_id=tokenizer.eos_id)
        text = tokenizer.decode([i for i in ids if i != tokenizer.eos_id])
        answers.append(text)
        print(f"--- {host['keys'][0]}\n{text}\nstrict four-block format: {strict_format_ok(text)}", flush=True)
    ok = sum(strict_format_ok(a) for a in answers)
    print(f"well-formed answers: {ok}/{len(answers)}", flush=True)
    return answers
