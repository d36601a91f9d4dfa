"""Batched generation: prefill, then decode into a preallocated KV cache.

Model-agnostic: the model's family (progress_jax/models/families.py, by its config's model_type)
says what the generation inputs are (position ids, image patches), how they shard and what the
position ids of a decode step are; this module pads and buckets the prompts, runs the decode loop,
samples and reports log-probs.

Everything after host-side preparation runs in one jitted program per shape bucket: the prompt
is left-padded, its length rounded up to a power of two or the midpoint between two, the batch to
a power of two that the mesh's data axes divide and the image patch count of each batch shard to a
power of two, so a run compiles a handful of programs. The patches are split over the data axes
with their rows (each device runs the vision tower on its own rows' images only).
The decode loop is a `lax.while_loop` inside that program; it ends when every row has stopped.

n samples per prompt (`generate(..., n=4)`, GRPO's rollouts): the program encodes each prompt's
images and prefills the prompt once, then repeats the prompt's KV cache, last logits, decode
positions and mask n times along the batch axis (prompt b's samples at rows b*n .. b*n+n-1) and
decodes those rows; each samples with the key of its row in the repeated batch, so the tokens are
those of a batch holding every prompt n times.

Log-probs: `logprobs` holds log p(token) of each sampled token under the policy *at the
sampling temperature*, log_softmax(logits / temperature), before top-k/top-p truncation. This
is what EasyR1/verl use as old_log_prob for the GRPO ratio (their actor divides logits by the
rollout temperature); `SamplingParams(logprobs_at_temperature=False)` gives the raw
(temperature 1) log-probs instead. Greedy decoding (temperature 0) always reports raw log-probs.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from progress_jax import sharding
from progress_jax.models import families


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Generation settings; only max_new_tokens is compiled in, the others are traced values."""

    max_new_tokens: int = 4096
    temperature: float = 0.6  # 0 = greedy
    top_p: float = 1.0  # 1 = off
    top_k: int = 0  # 0 = off
    stop_token_ids: tuple[int, ...] = ()  # extra stop ids besides eos / <|im_end|>
    ignore_eos: bool = False  # never stop early (benchmarks)
    logprobs_at_temperature: bool = True

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


@dataclasses.dataclass
class Generation:
    """Per generated row (a row of the input batch; with n, row b's samples at b*n .. b*n+n-1).
    `tokens`/`logprobs` [B, max_new_tokens]: the generated ids (the stop token included, pad_id
    after it) and their log-probs (0 after the stop); `lengths` [B]: generated tokens counting the
    stop token; `stopped` [B]: ended on a stop id; `texts`: decoded tokens before the stop token
    (special tokens skipped), when a tokenizer was given."""

    tokens: np.ndarray
    logprobs: np.ndarray
    lengths: np.ndarray
    stopped: np.ndarray
    texts: list[str] | None = None


# Smallest prompt-length and (per batch shard) patch-count buckets: below these, padding costs less
# than compiling.
MIN_LENGTH, MIN_PATCHES = 128, 256


def _pow2(n: int, minimum: int = 1) -> int:
    return 1 << (max(n, minimum) - 1).bit_length()


def _length_bucket(n: int) -> int:
    """Powers of two and their midpoints (128, 192, 256, 384, 512, ...): at most 1.5x padding."""
    p = _pow2(n, MIN_LENGTH)
    return p * 3 // 4 if p > MIN_LENGTH and n <= p * 3 // 4 else p


def stop_ids(model_config, params: SamplingParams, tokenizer=None) -> tuple[int, ...]:
    """The model config's eos, the tokenizer's <|im_end|> and params.stop_token_ids (only the latter
    with ignore_eos)."""
    if params.ignore_eos:
        return tuple(sorted(set(params.stop_token_ids)))
    ids = {model_config.eos_token_id, *params.stop_token_ids}
    if tokenizer is not None:
        ids.add(tokenizer.eos_id)
    return tuple(sorted(ids))


def left_pad(input_ids, attention_mask, batch_size: int, length: int, pad_id: int):
    """Move each row's real tokens to the right end of a [batch_size, length] array. Rows without
    real tokens (padding rows of a last batch, or extra rows up to batch_size) get one pad token
    marked real, so that no row is fully masked; their outputs are meaningless."""
    ids = np.full((batch_size, length), pad_id, np.int32)
    mask = np.zeros((batch_size, length), np.int32)
    src_ids, src_mask = np.asarray(input_ids), np.asarray(attention_mask) > 0
    for b in range(batch_size):
        real = src_ids[b][src_mask[b]] if b < len(src_ids) else np.zeros((0,), np.int32)
        if real.size == 0:
            mask[b, -1] = 1
            continue
        ids[b, length - real.size:], mask[b, length - real.size:] = real, 1
    return ids, mask


def prepare(batch: dict, config, pad_id: int, data_shards: int = 1, length: int | None = None,
            first_row: int = 0, family=None, n: int = 1) -> dict:
    """Host batch (any padding side) -> left-padded, bucketed NumPy inputs of the generation program
    (the rest from family.generation_inputs: default the family of the model config `config`).
    data_shards: the mesh's batch shards (rows and image patches split into that many groups);
    length: the padded prompt length (default: the bucket of this batch's longest prompt);
    first_row: the index of the batch's first row in the whole batch (its rows' sampling keys);
    n: samples per row (`rows`: the sampling keys of the n * B decode rows, prompt b's at b*n + j)."""
    family = family or families.for_model(config)
    input_ids, attention_mask = np.asarray(batch["input_ids"]), np.asarray(batch["attention_mask"])
    if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
        raise ValueError(f"input_ids {input_ids.shape} and attention_mask {attention_mask.shape} must be equal [B, L]")
    B = input_ids.shape[0]
    B_pad = -(-_pow2(B) // data_shards) * data_shards
    L_pad = length or prompt_length(attention_mask)
    ids, mask = left_pad(input_ids, attention_mask, B_pad, L_pad, pad_id)
    prompts = {**batch, "input_ids": ids, "attention_mask": mask}
    out = family.generation_inputs(prompts, config, data_shards, lambda n: _pow2(n, MIN_PATCHES))
    # Decode rows: pow2(B) * n, a multiple of the data shards (fewer than B_pad * n where B_pad was
    # rounded up for the mesh, so that the padding does not grow n times).
    rows = -(-_pow2(B) * n // data_shards) * data_shards
    out["rows"] = np.arange(first_row * n, first_row * n + rows, dtype=np.int32)
    out["num_rows"] = B * n
    return out


def prompt_length(attention_mask) -> int:
    """The padded prompt length of the generation program for these prompts."""
    return _length_bucket(int((np.asarray(attention_mask) > 0).sum(1).max(initial=1)))


def _filter_logits(logits, temperature, top_p, top_k):
    """Temperature, then top-k, then top-p (HF's warper order) on float32 logits [B, V]; top_k 0
    and top_p 1 are off. Values are traced, so one program serves every setting."""
    logits = logits / temperature

    def truncate(logits):
        V = logits.shape[-1]
        desc = -jnp.sort(-logits, axis=-1)
        k = jnp.where(top_k > 0, jnp.minimum(top_k, V), V)
        logits = jnp.where(logits < jnp.take(desc, k - 1, axis=-1)[:, None], -jnp.inf, logits)
        desc = jnp.where(jnp.arange(V) < k, desc, -jnp.inf)
        probs = jax.nn.softmax(desc, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # Keep the smallest prefix whose mass reaches top_p (at least one token).
        n_keep = jnp.maximum(jnp.sum(mass_before < top_p, axis=-1), 1)
        threshold = jnp.where(top_p < 1, jnp.take_along_axis(desc, n_keep[:, None] - 1, axis=-1), -jnp.inf)
        return jnp.where(logits < threshold, -jnp.inf, logits)

    return jax.lax.cond((top_k > 0) | (top_p < 1), truncate, lambda x: x, logits)


def pick(logits, key, t, knobs, rows):
    """Next token [B] and its log-prob from logits [B, V]; one independent key per row and step:
    fold_in(fold_in(key, t), row) with t the token's index in its row (a scalar, or [B] where rows
    are at different steps: the engine's slots) and `rows` [B] the rows' indices in the whole
    batch, so that a row draws the same tokens whichever generation call or slot it is in."""
    temperature = knobs["temperature"]
    safe_t = jnp.where(temperature > 0, temperature, 1.0)

    def sample(logits):
        steps = jnp.broadcast_to(t, rows.shape)
        row_keys = jax.vmap(lambda s, i: jax.random.fold_in(jax.random.fold_in(key, s), i))(steps, rows)
        filtered = _filter_logits(logits, safe_t, knobs["top_p"], knobs["top_k"])
        return jax.vmap(jax.random.categorical)(row_keys, filtered).astype(jnp.int32)

    tok = jax.lax.cond(temperature > 0, sample, lambda x: jnp.argmax(x, axis=-1).astype(jnp.int32), logits)
    lp_logits = logits / jnp.where(knobs["logprobs_at_temperature"], safe_t, 1.0)
    logp = jnp.take_along_axis(jax.nn.log_softmax(lp_logits, axis=-1), tok[:, None], axis=-1)[:, 0]
    return tok, logp


def _repeat(x, n: int, rows: int, axis: int = 0):
    """Each row of x (on `axis`) n times, copies contiguous; the first `rows` of them."""
    return jax.lax.slice_in_dim(jnp.repeat(x, n, axis=axis), 0, rows, axis=axis)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "mesh", "family", "n"))
def _generate(graphdef, state, inputs, key, knobs, *, max_new_tokens: int, mesh, family=None, n: int = 1):
    model = nnx.merge(graphdef, state)
    family = family or families.for_model(model.config)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    B, L = ids.shape
    N = max_new_tokens
    pad_id, stop_arr = knobs["pad_id"], knobs["stop_ids"]
    S = L + N if n == 1 else L  # n > 1: a cache of the prompts only, grown when repeated below
    cache = model.init_cache(B, S, mesh=mesh)  # the model gives its cache its sharding
    kv_mask = jnp.concatenate([mask, jnp.ones((B, N), mask.dtype)], axis=1)

    x = family.prompt_embeddings(model, inputs)
    hidden, cache = model.decode(x, inputs["position_ids"], kv_mask[:, :S], cache, 0)
    logits = model.logits(hidden[:, -1])
    rows = inputs["rows"]
    B = rows.shape[0]  # the decode rows
    if n > 1:  # each prompt's prefill shared by its n samples
        cache = model.repeat_cache(cache, n, B, L + N, mesh=mesh)
        logits, kv_mask = _repeat(logits, n, B), _repeat(kv_mask, n, B)
        inputs = {k: _repeat(v, n, B, family.GENERATION_AXIS[k]) for k, v in inputs.items()
                  if k in family.GENERATION_AXIS and k not in family.PATCH_KEYS}
    tok, logp = pick(logits, key, 0, knobs, rows)
    tokens = jnp.full((B, N), pad_id, jnp.int32).at[:, 0].set(tok)
    logprobs = jnp.zeros((B, N), jnp.float32).at[:, 0].set(logp)
    done = jnp.isin(tok, stop_arr)

    def cond(carry):
        t, _, done, *_ = carry
        return (t < N) & ~jnp.all(done)

    def body(carry):
        t, prev, done, tokens, logprobs, lengths, cache = carry
        pos = family.decode_position_ids(inputs, t - 1)  # of `prev`, generated token t - 1
        hidden, cache = model.decode(model.embed(prev[:, None]), pos, kv_mask, cache, L + t - 1)
        tok, logp = pick(model.logits(hidden[:, 0]), key, t, knobs, rows)
        tok = jnp.where(done, pad_id, tok)
        logp = jnp.where(done, 0.0, logp)
        tokens = jax.lax.dynamic_update_slice(tokens, tok[:, None], (0, t))
        logprobs = jax.lax.dynamic_update_slice(logprobs, logp[:, None], (0, t))
        lengths = lengths + (~done).astype(jnp.int32)
        return t + 1, tok, done | jnp.isin(tok, stop_arr), tokens, logprobs, lengths, cache

    carry = (jnp.int32(1), tok, done, tokens, logprobs, jnp.ones((B,), jnp.int32), cache)
    _, _, done, tokens, logprobs, lengths, _ = jax.lax.while_loop(cond, body, carry)
    out = {"tokens": tokens, "logprobs": logprobs, "lengths": lengths, "stopped": done}
    if mesh is not None:  # small outputs, replicated so that every host can read them
        out = jax.lax.with_sharding_constraint(out, NamedSharding(mesh, P()))
    return out


def input_shardings(inputs: dict, mesh, family) -> dict:
    """Every generation input split over the data axes on its batch axis (family.GENERATION_AXIS;
    `rows` on axis 0): token arrays by rows, image patches and their vision indices by batch shard."""
    axis = {**family.GENERATION_AXIS, "rows": 0}
    return jax.tree_util.tree_map_with_path(
        lambda path, x: sharding.batch_sharding(mesh, x.ndim, axis[sharding.path_str(path).split("/")[-1]]), inputs)


def to_device(inputs: dict, mesh, family) -> dict:
    """NumPy inputs -> global arrays. Every process holds the whole batch (docs/multihost.md) and
    places the slices its own devices hold."""
    if mesh is None:
        return jax.tree.map(jnp.asarray, inputs)
    return jax.tree.map(lambda x, s: jax.make_array_from_callback(x.shape, s, lambda idx: x[idx]),
                        inputs, input_shardings(inputs, mesh, family))


def knobs(params: SamplingParams, stops, pad_id: int) -> dict:
    """The generation program's traced settings (NumPy scalars; the stop ids padded with -1 to a
    power of two, so that their number rarely changes the program)."""
    stop_arr = np.full(_pow2(len(stops), 4), -1, np.int32)
    stop_arr[: len(stops)] = stops
    return {"temperature": np.float32(params.temperature), "top_p": np.float32(params.top_p),
            "top_k": np.int32(params.top_k), "logprobs_at_temperature": np.bool_(params.logprobs_at_temperature),
            "pad_id": np.int32(pad_id), "stop_ids": stop_arr}


def trace(model, inputs: dict, key, settings: dict, params: SamplingParams, *, mesh, family, n: int = 1):
    """The generation program that generate_arrays runs, traced at (abstract) arguments: `inputs`
    as `prepare` gives them less num_rows, `settings` as knobs() gives them (the dry run)."""
    graphdef, state = nnx.split(model)
    return _generate.trace(graphdef, state, inputs, key, settings, max_new_tokens=params.max_new_tokens, mesh=mesh,
                           family=family, n=n)


def prompts_per_call(prompts: int, batch_size: int | None, n: int = 1) -> int:
    """Prompts in one generation call of `generate`: batch_size // n (at least one), all without
    batch_size."""
    return prompts if not batch_size else min(prompts, max(1, batch_size // n))


def generate_arrays(model, inputs: dict, key, params: SamplingParams, *, stops=None, pad_id: int | None = None,
                    mesh=None, family=None, n: int = 1) -> dict:
    """Lower level: `inputs` from `prepare` (NumPy, the same n). Returns NumPy tokens, logprobs,
    lengths, stopped for the first `inputs['num_rows']` rows."""
    family = family or families.for_model(model.config)
    pad_id = model.config.pad_token_id if pad_id is None else pad_id
    stops = stop_ids(model.config, params) if stops is None else tuple(stops)
    rows = inputs["num_rows"]
    arrays = {k: v for k, v in inputs.items() if k != "num_rows"}
    graphdef, state = nnx.split(model)
    out = _generate(graphdef, state, to_device(arrays, mesh, family), key, knobs(params, stops, pad_id),
                    max_new_tokens=params.max_new_tokens, mesh=mesh, family=family, n=n)
    return {k: np.asarray(v)[:rows] for k, v in out.items()}


def generate(model, batch: dict, params: SamplingParams, key, *, tokenizer=None, mesh=None,
             batch_size: int | None = None, family=None, n: int = 1) -> Generation:
    """Main API: a host batch from data_pipeline (input_ids, attention_mask, pixel_values,
    image_grid_thw; right- or left-padded) -> one Generation row per batch row, or with n > 1
    n rows per batch row (row b's at b*n .. b*n+n-1), each prompt encoded and prefilled once:
    the tokens of `batch` with every row repeated n times (rows of one prompt contiguous).

    batch_size: generated rows per call (config key sampling.batch_size), so that the KV cache of
    a large batch fits; a call takes batch_size // n prompts (at least one). Every call pads its
    prompts to the whole batch's length bucket and each row samples with its own key (its index in
    the whole output), so the tokens do not depend on it.
    family: the model family (default: families.for_model(model.config))."""
    family = family or families.for_model(model.config)
    pad_id = tokenizer.pad_id if tokenizer is not None else model.config.pad_token_id
    data_shards = 1 if mesh is None else sharding.batch_shards(mesh)
    stops = stop_ids(model.config, params, tokenizer)
    B = np.asarray(batch["input_ids"]).shape[0]
    step = prompts_per_call(B, batch_size, n)
    length = prompt_length(batch["attention_mask"])
    parts = []
    for start in range(0, B, step):
        chunk = batch if step == B else family.take_rows(batch, range(start, min(start + step, B)), model.config)
        inputs = prepare(chunk, model.config, pad_id, data_shards, length=length, first_row=start, family=family, n=n)
        parts.append(generate_arrays(model, inputs, key, params, stops=stops, pad_id=pad_id, mesh=mesh, family=family,
                                     n=n))
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    gen = Generation(out["tokens"], out["logprobs"], out["lengths"], out["stopped"])
    if tokenizer is not None:
        gen.texts = texts(gen, tokenizer)
    return gen


def texts(gen: Generation, tokenizer) -> list[str]:
    """Each row's tokens before its stop token, decoded (special tokens skipped)."""
    return [tokenizer.decode(row[: n - 1 if stopped else n], skip_special_tokens=True)
            for row, n, stopped in zip(gen.tokens, gen.lengths, gen.stopped)]
