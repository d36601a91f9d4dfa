"""The rollout engine: generation over a fixed set of slots with continuous batching.

`generate` (the API of the jobs' `rollout` program, jobs.Rollout) holds `slots` rows at once
(sampling.batch_size; memory is bounded by it: one KV cache of slots x (prompt bucket +
max_new_tokens) positions). A host loop alternates two jitted programs:

- prefill + insert (`_prefill_insert`): a group of pending prompts (as many as free slots allow,
  n slots each) is right-padded to its own length bucket, encoded (images included) and prefilled
  once; each prompt's cache is copied into the n slots of its samples, each of which draws its
  token 0 from the prompt's last logits;
- a decode chunk (`_decode_chunk`): `chunk` steps of one token per active slot. Each slot writes its
  token's keys and values at its own fill and attends to its filled blocks only: the attention
  loops over the cache's blocks up to the largest fill among the active slots
  (model.decode_slots, layers.block_decode_attention), so a step costs what the filled part of the
  cache costs, not its allocated length.

Between chunks the host collects the finished rows and puts the next pending prompts into their
slots, so a finished row costs nothing beyond the chunk it finishes in, and one long row holds its
own slot only.

Keys and results: row r (prompt r // n's sample r % n) draws its token t with
fold_in(fold_in(key, t), r) (sampling.pick), its decode positions continue its prompt's
(family.decode_position_ids of step 0, plus t), so its tokens depend on its prompt and the key only,
never on the slot it runs in, the slot count, the chunk length or the other rows; they are the tokens
of one static batch holding every prompt n times, log-probs to float tolerance
(tests/test_engine.py, tests/test_sampling.py against transformers).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from progress_jax import sampling, sharding
from progress_jax.models import families

BLOCK = 256  # cache slots per attention block: a decode step reads whole blocks up to the largest fill
CHUNK = 32  # decode steps per jitted call: a finished row idles for at most the rest of its chunk


def _replicated(tree, mesh):
    return tree if mesh is None else jax.lax.with_sharding_constraint(tree, NamedSharding(mesh, P()))


@functools.partial(jax.jit, static_argnames=("graphdef", "slots", "length", "mesh"))
def _init_slots(graphdef, state, *, slots: int, length: int, mesh):
    model = nnx.merge(graphdef, state)
    zeros = jnp.zeros((slots,), jnp.int32)
    return {"cache": model.init_cache(slots, length, mesh=mesh), "fill": zeros, "step": zeros, "prev": zeros,
            "row": zeros, "pos": jnp.zeros((3, slots), jnp.int32), "active": jnp.zeros((slots,), bool)}


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "mesh", "family", "n"),
                   donate_argnames=("slots",))
def _prefill_insert(graphdef, state, slots, inputs, rows, slot_ids, key, knobs, *, max_new_tokens: int, mesh,
                    family, n: int):
    """Prefill the group's prompts (right-padded [G, L]) once, sample token 0 of their n rows each
    (`rows` [G * n]: the rows' global indices) and insert row i into slot slot_ids[i] (out of
    range: not inserted, a padding prompt's rows)."""
    model = nnx.merge(graphdef, state)
    mask = inputs["attention_mask"]
    G, L = mask.shape
    x = family.prompt_embeddings(model, inputs)
    hidden, cache = model.decode(x, inputs["position_ids"], mask, model.init_cache(G, L, mesh=mesh), 0)
    real = mask.sum(1).astype(jnp.int32)
    last = jnp.take_along_axis(hidden, jnp.maximum(real - 1, 0)[:, None, None], axis=1)[:, 0]
    prompt = jnp.arange(G * n) // n
    tok, logp = sampling.pick(model.logits(last)[prompt], key, 0, knobs, rows)
    go = ~jnp.isin(tok, knobs["stop_ids"]) & (max_new_tokens > 1)
    pos = family.decode_position_ids(inputs, 0)[:, :, 0].astype(jnp.int32)  # [3, G]: of token 0

    def put(a, v, axis=0):
        return a.at[(slice(None),) * axis + (slot_ids,)].set(v, mode="drop")

    slots = {"cache": {k: c.at[:, slot_ids, :L].set(cache[k][:, prompt].astype(c.dtype), mode="drop")
                       for k, c in slots["cache"].items()},
             "fill": put(slots["fill"], real[prompt]), "step": put(slots["step"], jnp.ones_like(tok)),
             "prev": put(slots["prev"], tok), "row": put(slots["row"], rows), "pos": put(slots["pos"], pos[:, prompt], 1),
             "active": put(slots["active"], go)}
    return slots, _replicated({"tokens": tok, "logprobs": logp}, mesh)


@functools.partial(jax.jit, static_argnames=("graphdef", "steps", "block", "max_new_tokens", "mesh"),
                   donate_argnames=("slots",))
def _decode_chunk(graphdef, state, slots, key, knobs, *, steps: int, block: int, max_new_tokens: int, mesh):
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
        tok, logp = sampling.pick(model.logits(hidden[:, 0]), key, s["step"], knobs, s["row"])
        stop = jnp.isin(tok, knobs["stop_ids"]) | (s["step"] + 1 >= max_new_tokens)
        out = {"tokens": out["tokens"].at[:, i].set(tok), "logprobs": out["logprobs"].at[:, i].set(logp),
               "emitted": out["emitted"].at[:, i].set(act)}
        s = {**s, "cache": cache, "fill": jnp.where(act, fill + 1, s["fill"]),
             "step": jnp.where(act, s["step"] + 1, s["step"]), "prev": jnp.where(act, tok, s["prev"]),
             "active": act & ~stop}
        return i + 1, s, out

    _, slots, out = jax.lax.while_loop(cond, body, (jnp.int32(0), slots, out))
    return slots, _replicated({**out, "active": slots["active"]}, mesh)


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
    G = -(-sampling._pow2(len(real)) // data_shards) * data_shards
    L = sampling.prompt_length(np.asarray(group["attention_mask"]))
    out_ids, out_mask = np.full((G, L), pad_id, np.int32), np.zeros((G, L), np.int32)
    for g, r in enumerate(real):
        out_ids[g, :r.size], out_mask[g, :r.size] = r, 1
    out_mask[len(real):, 0] = 1  # padding prompts: one token, so that no row is fully masked
    return family.generation_inputs({**group, "input_ids": out_ids, "attention_mask": out_mask}, config, data_shards,
                                    lambda p: sampling._pow2(p, sampling.MIN_PATCHES))


def generate(model, batch: dict, params: sampling.SamplingParams, key, *, tokenizer=None, mesh=None,
             batch_size: int | None = None, family=None, n: int = 1, chunk: int = CHUNK,
             block: int = BLOCK) -> sampling.Generation:
    """A host batch from data_pipeline (input_ids, attention_mask, pixel_values, image_grid_thw;
    either padding side) -> one sampling.Generation row per batch row, or with n > 1 n rows per
    batch row (row b's at b*n .. b*n+n-1), each prompt encoded and prefilled once.
    batch_size: the slots (rows generated at once; default every row); chunk: decode steps per
    jitted call; block: the attention's block of cache slots. None of these changes a row's tokens.
    family: default families.for_model(model.config)."""
    family = family or families.for_model(model.config)
    pad_id = tokenizer.pad_id if tokenizer is not None else model.config.pad_token_id
    shards = 1 if mesh is None else sharding.batch_shards(mesh)
    stops = sampling.stop_ids(model.config, params, tokenizer)
    settings = sampling.knobs(params, stops, pad_id)
    N = params.max_new_tokens
    B = np.asarray(batch["input_ids"]).shape[0]
    S = slot_count(batch_size, B * n, n, shards)
    graphdef, state = nnx.split(model)
    slots = _init_slots(graphdef, state, slots=S,
                        length=cache_length(sampling.prompt_length(batch["attention_mask"]), N, block), mesh=mesh)

    tokens = np.full((B * n, N), pad_id, np.int32)
    logprobs = np.zeros((B * n, N), np.float32)
    lengths = np.zeros((B * n,), np.int32)
    pending, free, held = list(range(B)), list(range(S)), {}  # held: slot -> row
    stop_set = set(stops)

    def emit(r, tok, logp):
        tokens[r, lengths[r]], logprobs[r, lengths[r]] = tok, logp
        lengths[r] += 1

    while pending or held:
        group = pending[: len(free) // n]
        if group:
            del pending[: len(group)]
            inputs = prefill_inputs(batch, group, model.config, pad_id, shards, family)
            G = inputs["input_ids"].shape[0]
            rows = np.zeros((G * n,), np.int32)
            slot_ids = np.full((G * n,), S, np.int32)  # out of range: not inserted
            for i, p in enumerate(group):
                rows[i * n:(i + 1) * n] = np.arange(p * n, (p + 1) * n)
                for j in range(n):
                    slot_ids[i * n + j] = free.pop(0)
            slots, first = _prefill_insert(graphdef, state, slots, sampling.to_device(inputs, mesh, family),
                                           jnp.asarray(rows), jnp.asarray(slot_ids), key, settings, max_new_tokens=N,
                                           mesh=mesh, family=family, n=n)
            first = jax.tree.map(np.asarray, first)
            for i in range(len(group) * n):
                emit(rows[i], first["tokens"][i], first["logprobs"][i])
                if int(first["tokens"][i]) in stop_set or N == 1:
                    free.append(int(slot_ids[i]))
                else:
                    held[int(slot_ids[i])] = int(rows[i])
            free.sort()
        if not held:
            continue
        slots, out = _decode_chunk(graphdef, state, slots, key, settings, steps=chunk, block=block,
                                   max_new_tokens=N, mesh=mesh)
        out = jax.tree.map(np.asarray, out)
        for s, r in list(held.items()):
            for i in np.flatnonzero(out["emitted"][s]):
                emit(r, out["tokens"][s, i], out["logprobs"][s, i])
            if not out["active"][s]:
                del held[s]
                free.append(s)
        free.sort()

    last = tokens[np.arange(B * n), lengths - 1]
    gen = sampling.Generation(tokens, logprobs, lengths, np.isin(last, list(stop_set)))
    if tokenizer is not None:
        gen.texts = sampling.texts(gen, tokenizer)
    return gen
