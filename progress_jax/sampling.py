"""Generation: the rollout engine over a fixed set of slots, with continuous batching.

Model-agnostic: the model's family (progress_jax/models/families.py, by its config's model_type)
says what the generation inputs are (position ids, image patches), how they shard and what the
position ids of token 0 are; this module schedules rows into slots, samples and reports log-probs.

`generate` holds `batch_size` rows at once (the slots, config key sampling.batch_size): one KV cache
of slots x (the batch's prompt bucket + max_new_tokens) positions, so memory is bounded by the
slots whatever the batch. A host loop alternates two jitted programs:

- prefill + insert (`_prefill_insert`): the next pending prompts (as many as free slots allow, n
  slots each) are right-padded to their own length bucket (powers of two and their midpoints),
  their images encoded and the prompts prefilled once; each prompt's cache is copied into the n
  slots of its samples, each of which draws its token 0 from the prompt's last logits. The image
  patches are split over the mesh's data axes with their prompts (each device encodes its own
  prompts' images);
- a decode chunk (`_decode_chunk`): up to `chunk` steps of one token per active slot. Each slot
  writes its token's keys and values at its own fill and attends to its filled blocks only: the
  attention loops over the cache's blocks up to the largest fill among the active slots
  (model.decode_slots), so a step costs what the filled part of the cache costs, not its length.

Between chunks the host collects the finished rows and prefills the next pending prompts into their
slots: a finished row costs nothing beyond the chunk it finishes in, and one long row holds its own
slot only.

On a mesh, both programs run on the weights laid out for generating (`place`, config key
sampling.decode_layout), moved once per call: by default whole on every data shard and split over
`tensor` only, so that a decode step gathers no weight.

Keys: row r (prompt r // n's sample r % n) draws its token t with fold_in(fold_in(key, t), r), and
its decode positions continue its prompt's (the family's positions of token 0, plus t), so its
tokens depend on its prompt and the key only, never on the slot it runs in, the slot count, the
chunk length or the other rows: they are the tokens of a static batch holding every prompt n times
(tests/test_engine.py; tests/test_sampling.py against transformers).

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
    """Generation settings; only max_new_tokens shapes the programs (the cache length), the others are
    traced values."""

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
    (special tokens skipped), when a tokenizer was given. `decode_steps`: the decode steps the engine
    ran, each one token for every slot, idle or not (the rows' tokens after token 0, divided by
    decode_steps x slots, is how full the slots were)."""

    tokens: np.ndarray
    logprobs: np.ndarray
    lengths: np.ndarray
    stopped: np.ndarray
    texts: list[str] | None = None
    decode_steps: int = 0


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


def prompt_length(attention_mask) -> int:
    """The length bucket of these prompts' longest (a slot's cache: this + max_new_tokens)."""
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


def input_shardings(inputs: dict, mesh, family) -> dict:
    """Every generation input split over the data axes on its batch axis (family.GENERATION_AXIS):
    token arrays by rows, image patches and their vision indices by batch shard."""
    axis = family.GENERATION_AXIS
    return jax.tree_util.tree_map_with_path(
        lambda path, x: sharding.batch_sharding(mesh, x.ndim, axis[sharding.path_str(path).split("/")[-1]]), inputs)


def to_device(inputs: dict, mesh, family) -> dict:
    """NumPy inputs -> global arrays. Every process holds the whole batch (docs/multihost.md) and
    places the slices its own devices hold."""
    if mesh is None:
        return jax.tree.map(jnp.asarray, inputs)
    return jax.tree.map(lambda x, s: jax.make_array_from_callback(x.shape, s, lambda idx: x[idx]),
                        inputs, input_shardings(inputs, mesh, family))


def knobs(params: SamplingParams, stops) -> dict:
    """The generation programs' traced settings (NumPy scalars; the stop ids padded with -1 to a
    power of two, so that their number rarely changes the program)."""
    stop_arr = np.full(_pow2(len(stops), 4), -1, np.int32)
    stop_arr[: len(stops)] = stops
    return {"temperature": np.float32(params.temperature), "top_p": np.float32(params.top_p),
            "top_k": np.int32(params.top_k), "logprobs_at_temperature": np.bool_(params.logprobs_at_temperature),
            "stop_ids": stop_arr}


def texts(gen: Generation, tokenizer) -> list[str]:
    """Each row's tokens before its stop token, decoded (special tokens skipped)."""
    return [tokenizer.decode(row[: n - 1 if stopped else n], skip_special_tokens=True)
            for row, n, stopped in zip(gen.tokens, gen.lengths, gen.stopped)]


BLOCK = 256  # cache slots per attention block: a decode step reads whole blocks up to the largest fill
CHUNK = 32  # decode steps per jitted call: a finished row idles for at most the rest of its chunk


def _replicated(tree, mesh):
    return tree if mesh is None else jax.lax.with_sharding_constraint(tree, NamedSharding(mesh, P()))


def slot_shardings(model, mesh) -> dict:
    """The slots' state on the mesh: the cache as the model shards it, the per-slot values with
    their slots (split over the data axes)."""
    vec, cache = sharding.batch_sharding(mesh, 1), model.cache_sharding(mesh)
    return {"cache": {"k": cache, "v": cache}, "fill": vec, "step": vec, "prev": vec, "row": vec, "limit": vec,
            "pos": sharding.batch_sharding(mesh, 2, 1), "active": vec}


def _placed(slots, model, mesh):
    return slots if mesh is None else jax.lax.with_sharding_constraint(slots, slot_shardings(model, mesh))


@functools.partial(jax.jit, static_argnames=("graphdef", "slots", "length", "mesh"))
def _init_slots(graphdef, state, *, slots: int, length: int, mesh):
    """The engine's state: each slot's KV cache [layers, slots, length, ...], its fill (keys in its
    cache), the index of the token its next step draws, that token's predecessor, its row, the
    decode position of its row's token 0, its row's token limit, and whether it is generating."""
    model = nnx.merge(graphdef, state)
    zeros = jnp.zeros((slots,), jnp.int32)
    return _placed({"cache": model.init_cache(slots, length), "fill": zeros, "step": zeros, "prev": zeros,
                    "row": zeros, "limit": zeros, "pos": jnp.zeros((3, slots), jnp.int32),
                    "active": jnp.zeros((slots,), bool)},
                   model, mesh)


@functools.partial(jax.jit, static_argnames=("graphdef", "mesh", "family"), donate_argnames=("slots",))
def _prefill_insert(graphdef, state, slots, inputs, rows, slot_ids, key, knobs, *, mesh, family):
    """Prefill the group's prompts (right-padded [G, L]) once, then for each entry i of `rows` (one
    per slot: "row" a row's global index, "prompt" its prompt in the group, "limit" its most new
    tokens) sample its token 0 and insert the row into slot slot_ids[i] (out of range: no row)."""
    model = nnx.merge(graphdef, state)
    mask = inputs["attention_mask"]
    G, L = mask.shape
    x = family.prompt_embeddings(model, inputs)
    hidden, cache = model.decode(x, inputs["position_ids"], mask, model.init_cache(G, L, mesh=mesh), 0)
    real = mask.sum(1).astype(jnp.int32)
    last = jnp.take_along_axis(hidden, jnp.maximum(real - 1, 0)[:, None, None], axis=1)[:, 0]
    prompt, limit, rows = rows["prompt"], rows["limit"], rows["row"]
    tok, logp = pick(model.logits(last)[prompt], key, 0, knobs, rows)
    go = ~jnp.isin(tok, knobs["stop_ids"]) & (limit > 1)
    pos = family.decode_position_ids(inputs, 0)[:, :, 0].astype(jnp.int32)  # [3, G]: of token 0

    def put(a, v, axis=0):
        return a.at[(slice(None),) * axis + (slot_ids,)].set(v, mode="drop")

    slots = {"cache": {k: c.at[:, slot_ids, :L].set(cache[k][:, prompt].astype(c.dtype), mode="drop")
                       for k, c in slots["cache"].items()},
             "fill": put(slots["fill"], real[prompt]), "step": put(slots["step"], jnp.ones_like(tok)),
             "prev": put(slots["prev"], tok), "row": put(slots["row"], rows),
             "limit": put(slots["limit"], limit), "pos": put(slots["pos"], pos[:, prompt], 1),
             "active": put(slots["active"], go)}
    return _placed(slots, model, mesh), _replicated({"tokens": tok, "logprobs": logp}, mesh)


@functools.partial(jax.jit, static_argnames=("graphdef", "steps", "block", "mesh"), donate_argnames=("slots",))
def _decode_chunk(graphdef, state, slots, key, knobs, *, steps: int, block: int, mesh):
    """Up to `steps` decode steps of every active slot (fewer when all finish). Returns the slots
    and per slot and step the token, its log-prob and whether the slot was active (emitted it)."""
    model = nnx.merge(graphdef, state)
    S = slots["fill"].shape[0]
    out = {"tokens": jnp.zeros((S, steps), jnp.int32), "logprobs": jnp.zeros((S, steps), jnp.float32),
           "emitted": jnp.zeros((S, steps), bool)}

    def cond(carry):
        i, s, _ = carry
        return (i < steps) & jnp.any(s["active"])

    def body(carry):
        i, s, out = carry
        act = s["active"]
        fill = jnp.where(act, s["fill"], 0)  # an idle slot writes into and reads its own block 0 only
        blocks = (jnp.max(jnp.where(act, fill + 1, 1)) + block - 1) // block
        pos = (s["pos"] + s["step"] - 1)[:, :, None]  # of `prev`, generated token step - 1
        hidden, cache = model.decode_slots(model.embed(s["prev"][:, None]), pos, fill, s["cache"], blocks, block)
        tok, logp = pick(model.logits(hidden[:, 0]), key, s["step"], knobs, s["row"])
        stop = jnp.isin(tok, knobs["stop_ids"]) | (s["step"] + 1 >= s["limit"])
        out = {"tokens": out["tokens"].at[:, i].set(tok), "logprobs": out["logprobs"].at[:, i].set(logp),
               "emitted": out["emitted"].at[:, i].set(act)}
        s = {**s, "cache": cache, "fill": jnp.where(act, fill + 1, s["fill"]),
             "step": jnp.where(act, s["step"] + 1, s["step"]), "prev": jnp.where(act, tok, s["prev"]),
             "active": act & ~stop}
        return i + 1, s, out

    _, slots, out = jax.lax.while_loop(cond, body, (jnp.int32(0), slots, out))
    return _placed(slots, model, mesh), _replicated({**out, "active": slots["active"]}, mesh)


LAYOUTS = ("tensor", "fsdp")  # the weights' layout while generating (config key sampling.decode_layout)


def place(model, mesh, layout: str = "tensor"):
    """The model with its weights in the engine's layout (config key sampling.decode_layout):

    - "tensor": in the model's compute dtype (model.dtype), split over the mesh's `tensor` axis as
      in training (column-parallel in-projections, row-parallel out-projections) and whole on every
      device of the data axes: a decode step reads the weights where they lie and communicates only
      the tensor axis's activations. Costs the weights / mesh.tensor bytes per device (at
      mesh.tensor = 1 all of them) beside the training state. The model casts every weight to its
      compute dtype where it uses it, so the cast changes no value: float32 master weights
      (GRPO's paper recipe) take half the bytes and the tokens stay the same.
    - "fsdp": as given (the training layout, split over fsdp and tensor): the least memory, but
      every decode step gathers every layer's weights over fsdp.

    Arrays are cast where they lie, then moved once (jax.device_put: a no-op for arrays already
    laid out so, e.g. the eval job's model placed before its batches); ShapeDtypeStructs (the dry
    run) take the dtype and shardings."""
    if layout not in LAYOUTS:
        raise ValueError(f"config key sampling.decode_layout must be one of {LAYOUTS}, got {layout!r}")
    if mesh is None or layout == "fsdp":
        return model
    graphdef, state = nnx.split(model)
    target = sharding.param_shardings(state, mesh, model.partition_rules, drop=("fsdp",))

    def dtype(x):
        return model.dtype if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype

    if all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(state)):
        state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, dtype(x), sharding=s), state, target)
    else:
        state = jax.device_put(jax.tree.map(lambda x: x.astype(dtype(x)), state), target)
    return nnx.merge(graphdef, state)


def slot_count(batch_size: int | None, rows: int, n: int, data_shards: int = 1) -> int:
    """The engine's slots: batch_size (default: every row), at least one prompt's n rows, a multiple
    of the mesh's batch shards."""
    return -(-max(batch_size or rows, n) // data_shards) * data_shards


def cache_length(prompt_length: int, max_new_tokens: int, block: int = BLOCK) -> int:
    """A slot's cache: the prompt bucket + max_new_tokens, in whole blocks."""
    return -(-(prompt_length + max_new_tokens) // block) * block


def prefill_inputs(batch: dict, prompts, config, pad_id: int, data_shards: int, family) -> dict:
    """The group `prompts` (rows of the host batch) right-padded to their length bucket, in a
    power-of-two number of rows that the batch shards divide -> the family's generation inputs."""
    ids, mask = np.asarray(batch["input_ids"]), np.asarray(batch["attention_mask"]) > 0
    group = family.take_rows(batch, list(prompts), config)
    real = [ids[p][mask[p]] for p in prompts]
    G = -(-_pow2(len(real)) // data_shards) * data_shards
    L = prompt_length(np.asarray(group["attention_mask"]))
    out_ids, out_mask = np.full((G, L), pad_id, np.int32), np.zeros((G, L), np.int32)
    for g, r in enumerate(real):
        out_ids[g, :r.size], out_mask[g, :r.size] = r, 1
    out_mask[len(real):, 0] = 1  # padding prompts: one token, so that no row is fully masked
    return family.generation_inputs({**group, "input_ids": out_ids, "attention_mask": out_mask}, config, data_shards,
                                    lambda p: _pow2(p, MIN_PATCHES))


def abstract_slots(model, slots: int, length: int, mesh) -> dict:
    """The engine's state as ShapeDtypeStructs with its shardings (the dry run)."""
    graphdef, state = nnx.split(model)
    shapes = jax.eval_shape(functools.partial(_init_slots, graphdef, slots=slots, length=length, mesh=None), state)
    if mesh is None:
        return shapes
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
                        slot_shardings(model, mesh))


def trace_prefill(model, slots, inputs, rows, slot_ids, key, settings, *, mesh, family):
    """The prefill + insert program that generate runs, traced at (abstract) arguments: `inputs`
    as prefill_inputs gives them, `settings` as knobs() gives them (the dry run)."""
    graphdef, state = nnx.split(model)
    return _prefill_insert.trace(graphdef, state, slots, inputs, rows, slot_ids, key, settings, mesh=mesh,
                                 family=family)


def trace_decode(model, slots, key, settings, *, mesh, chunk: int = CHUNK, block: int = BLOCK):
    """The decode chunk program that generate runs, traced at (abstract) arguments (the dry run)."""
    graphdef, state = nnx.split(model)
    return _decode_chunk.trace(graphdef, state, slots, key, settings, steps=chunk, block=block, mesh=mesh)


def generate(model, batch: dict, params: SamplingParams, key, *, tokenizer=None, mesh=None,
             batch_size: int | None = None, family=None, n: int = 1, chunk: int = CHUNK,
             block: int = BLOCK, max_lengths=None, layout: str = "tensor") -> Generation:
    """A host batch from data_pipeline (input_ids, attention_mask, pixel_values, image_grid_thw;
    either padding side) -> one Generation row per batch row, or with n > 1 n rows per
    batch row (row b's at b*n .. b*n+n-1), each prompt encoded and prefilled once.
    batch_size: the slots (rows generated at once; default every row); chunk: decode steps per
    jitted call; block: the attention's block of cache slots. None of these changes a row's tokens.
    family: default families.for_model(model.config). max_lengths: per generated row, the most
    tokens it draws (default max_new_tokens; tools/bench_rollout.py's answer-length schedule).
    layout: the weights' layout on the mesh while generating (`place`), moved once per call."""
    family = family or families.for_model(model.config)
    pad_id = tokenizer.pad_id if tokenizer is not None else model.config.pad_token_id
    shards = 1 if mesh is None else sharding.batch_shards(mesh)
    stops = stop_ids(model.config, params, tokenizer)
    settings = knobs(params, stops)
    N = params.max_new_tokens
    B = np.asarray(batch["input_ids"]).shape[0]
    S = slot_count(batch_size, B * n, n, shards)
    limits = np.full((B * n,), N, np.int32) if max_lengths is None else np.minimum(max_lengths, N).astype(np.int32)
    model = place(model, mesh, layout)
    graphdef, state = nnx.split(model)
    slots = _init_slots(graphdef, state, slots=S,
                        length=cache_length(prompt_length(batch["attention_mask"]), N, block), mesh=mesh)

    tokens = np.full((B * n, N), pad_id, np.int32)
    logprobs = np.zeros((B * n, N), np.float32)
    lengths = np.zeros((B * n,), np.int32)
    pending, free, held = list(range(B)), list(range(S)), {}  # held: slot -> row
    decode_steps = 0
    stop_set = set(stops)

    def emit(r, tok, logp):
        tokens[r, lengths[r]], logprobs[r, lengths[r]] = tok, logp
        lengths[r] += 1

    while pending or held:
        group = pending[: len(free) // n]
        if group:
            del pending[: len(group)]
            inputs = prefill_inputs(batch, group, model.config, pad_id, shards, family)
            R = len(group) * n  # rows 0 .. R - 1 of the S entries (one per slot) are real
            rows = np.zeros((S,), np.int32)
            rows[:R] = np.ravel([np.arange(p * n, (p + 1) * n) for p in group])
            prompt = np.minimum(np.arange(S) // n, len(group) - 1).astype(np.int32)
            slot_ids = np.full((S,), S, np.int32)  # out of range: no row
            slot_ids[:R] = free[:R]
            del free[:R]
            slots, first = _prefill_insert(graphdef, state, slots, to_device(inputs, mesh, family),
                                           {"row": rows, "prompt": prompt, "limit": limits[rows]}, slot_ids, key,
                                           settings, mesh=mesh, family=family)  # NumPy: the same on every process
            first = jax.tree.map(np.asarray, first)
            for i in range(R):
                emit(rows[i], first["tokens"][i], first["logprobs"][i])
                if int(first["tokens"][i]) in stop_set or limits[rows[i]] == 1:
                    free.append(int(slot_ids[i]))
                else:
                    held[int(slot_ids[i])] = int(rows[i])
            free.sort()
        if not held:
            continue
        slots, out = _decode_chunk(graphdef, state, slots, key, settings, steps=chunk, block=block,
                                   mesh=mesh)
        out = jax.tree.map(np.asarray, out)
        decode_steps += int(out["emitted"].any(0).sum())  # the chunk's steps: until no slot was active
        for s, r in list(held.items()):
            for i in np.flatnonzero(out["emitted"][s]):
                emit(r, out["tokens"][s, i], out["logprobs"][s, i])
            if not out["active"][s]:
                del held[s]
                free.append(s)
        free.sort()

    last = tokens[np.arange(B * n), lengths - 1]
    gen = Generation(tokens, logprobs, lengths, np.isin(last, list(stop_set)), decode_steps=decode_steps)
    if tokenizer is not None:
        gen.texts = texts(gen, tokenizer)
    return gen
