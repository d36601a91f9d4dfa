"""The rollout engine (sampling.generate) on the tiny Qwen2.5-VL with images: its tokens are
those of a static batch (a plain prefill + decode loop over the whole cache, kept here as the
reference), and a row's tokens depend on its prompt and key only, never on the scheduling (slot
count, chunk length, attention block, order of the prompts)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from progress_jax import sampling
from progress_jax.models import qwen2_5_vl
from progress_jax.models.qwen2_5_vl import family as qwen
from tests.test_sampling_vision import prompts
from tools import bench_rollout

CFG = qwen2_5_vl.tiny()
N = 20  # new tokens


@pytest.fixture(scope="module")
def model():
    return qwen2_5_vl.init(CFG, seed=0)


@functools.partial(jax.jit, static_argnums=0)
def _prefill(graphdef, state, inputs, kv_mask, cache):
    model = nnx.merge(graphdef, state)
    hidden, cache = model.decode(qwen.prompt_embeddings(model, inputs), inputs["position_ids"], kv_mask, cache, 0)
    return model.logits(hidden[:, -1]), cache


_pick = jax.jit(sampling.pick)


@functools.partial(jax.jit, static_argnums=0)
def _decode(graphdef, state, tok, position_ids, kv_mask, cache, index):
    model = nnx.merge(graphdef, state)
    hidden, cache = model.decode(model.embed(tok[:, None]), position_ids, kv_mask, cache, index)
    return model.logits(hidden[:, 0]), cache


def static_generate(model, batch, params, key, n) -> sampling.Generation:
    """The reference: every prompt n times, left-padded to one length and prefilled, then one decode
    loop over the whole cache until every row has stopped (the sampler before the engine)."""
    B = len(batch["input_ids"])
    rep = qwen.take_rows(batch, np.repeat(np.arange(B), n), CFG)
    real = [r[m > 0] for r, m in zip(rep["input_ids"], rep["attention_mask"])]
    R, L = len(real), max(map(len, real))
    ids, mask = np.zeros((R, L), np.int32), np.zeros((R, L), np.int32)
    for b, r in enumerate(real):
        ids[b, L - len(r):], mask[b, L - len(r):] = r, 1
    inputs = jax.tree.map(jnp.asarray, qwen.generation_inputs({**rep, "input_ids": ids, "attention_mask": mask}, CFG))
    stops = sampling.stop_ids(CFG, params)
    knobs = sampling.knobs(params, stops)
    kv_mask = jnp.concatenate([inputs["attention_mask"], jnp.ones((R, N), jnp.int32)], axis=1)
    graphdef, state = nnx.split(model)
    logits, cache = _prefill(graphdef, state, inputs, kv_mask, model.init_cache(R, L + N))
    rows = jnp.arange(R)
    tokens, logprobs = np.zeros((R, N), np.int32), np.zeros((R, N), np.float32)
    lengths, done = np.zeros(R, np.int32), np.zeros(R, bool)
    for t in range(N):
        if t:
            logits, cache = _decode(graphdef, state, jnp.asarray(tokens[:, t - 1]),
                                    qwen.decode_position_ids(inputs, t - 1), kv_mask, cache, L + t - 1)
        tok, logp = map(np.asarray, _pick(logits, key, t, knobs, rows))
        tokens[:, t], logprobs[:, t] = np.where(done, CFG.pad_token_id, tok), np.where(done, 0, logp)
        lengths += ~done
        done |= np.isin(tok, stops)
        if done.all():
            break
    return sampling.Generation(tokens, logprobs, lengths, done)


BATCH = prompts([[(1, 8, 8)], [], [(1, 4, 8), (1, 8, 4)]], last_text=40, padding=0)


def stopping(model, params):
    """params with a stop token that ends some rows early and not others (found on the reference's
    own free run: a token a row draws once and some other row never draws)."""
    free = static_generate(model, BATCH, params, jax.random.key(3), n=2).tokens
    for tok in np.unique(free[:, 2:N - 4]):
        hit = (free == tok).any(1)
        if 0 < hit.sum() < len(free):
            return sampling.SamplingParams(**{**params.__dict__, "stop_token_ids": (int(tok),)})
    raise AssertionError("no stop token splits the rows")


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_engine_gives_the_static_batch_tokens_whatever_the_schedule(model, temperature):
    params = stopping(model, sampling.SamplingParams(max_new_tokens=N, temperature=temperature, top_p=0.9))
    expected = static_generate(model, BATCH, params, jax.random.key(3), n=2)
    assert len(set(expected.lengths)) > 1 and expected.stopped.any()  # rows end at different steps
    # All rows at once; 4 slots (two prompts at a time, the third starting as soon as one's two rows
    # end) in chunks of 3 steps, with attention blocks of 8 cache slots.
    for slots, chunk, block in ((6, 32, 256), (4, 3, 8)):
        got = sampling.generate(model, BATCH, params, jax.random.key(3), n=2, batch_size=slots, chunk=chunk,
                              block=block)
        np.testing.assert_array_equal(got.lengths, expected.lengths)
        np.testing.assert_array_equal(got.stopped, expected.stopped)
        np.testing.assert_array_equal(got.tokens, expected.tokens)
        np.testing.assert_allclose(got.logprobs, expected.logprobs, atol=1e-5)
    if temperature == 0:  # greedy: the prompts in another order give their rows in that order
        order = [2, 0, 1]
        got = sampling.generate(model, qwen.take_rows(BATCH, order, CFG), params, jax.random.key(3), n=2, batch_size=6)
        rows = np.ravel([[2 * p, 2 * p + 1] for p in order])
        np.testing.assert_array_equal(got.tokens, expected.tokens[rows])
        np.testing.assert_array_equal(got.lengths, expected.lengths[rows])


def test_slots_bound_the_cache():
    """Memory: one cache of slots x (prompt bucket + max_new_tokens, in whole blocks) whatever the
    number of rows; the slots a multiple of the batch shards, at least one prompt's n rows."""
    assert sampling.slot_count(8, 64 * 4, 4) == 8 and sampling.slot_count(None, 12, 4) == 12
    assert sampling.slot_count(2, 12, 4) == 4 and sampling.slot_count(6, 12, 1, data_shards=4) == 8
    assert sampling.cache_length(384, 300, block=256) == 768


def test_max_lengths_cut_rows(model):
    """Per-row limits (the rollout bench's answer-length schedule): each row the prefix of its free
    run up to its limit, the other rows unchanged."""
    params = sampling.SamplingParams(max_new_tokens=N, temperature=1.0, ignore_eos=True)
    free = sampling.generate(model, BATCH, params, jax.random.key(3), n=2, batch_size=6)
    limits = np.array([1, 5, N, 12, 3, N])
    cut = sampling.generate(model, BATCH, params, jax.random.key(3), n=2, batch_size=4, chunk=3, block=8,
                            max_lengths=limits)
    np.testing.assert_array_equal(cut.lengths, limits)
    assert not cut.stopped.any()
    for r, n in enumerate(limits):
        np.testing.assert_array_equal(cut.tokens[r, :n], free.tokens[r, :n])
        assert (cut.tokens[r, n:] == CFG.pad_token_id).all()
    # The schedule in 4 slots, chunks of 3 steps: the first two prompts enter at once (row 0 ends with
    # its token 0); the third waits for a second free slot, which row 1 leaves in the second chunk
    # (its 4 decode steps), so it enters after 6 steps, and its row of N tokens needs N - 1 more.
    assert cut.decode_steps == 6 + N - 1
    # The rollout bench's bounds for this schedule: no schedule runs fewer steps than the longest row's
    # N - 1; a static batch of two prompts per call runs each call to its longest row.
    assert bench_rollout.fewest_steps(limits, 4) == N - 1
    assert bench_rollout.call_steps(limits, 2, 4) == (N - 1) + (N - 1)


def test_decode_layouts_give_the_same_tokens(model):
    """On the 8-device mesh (data 2 x fsdp 2 x tensor 2), the weights laid out for decoding
    (sampling.place "tensor": split over tensor only, whole on each data x fsdp device) and as
    trained ("fsdp": split over fsdp and tensor, gathered at every step) give the same tokens as
    one device's engine, greedy and sampled, rows stopping at different steps."""
    from jax.sharding import PartitionSpec as P

    from progress_jax import sharding

    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    graphdef, state = nnx.split(model)
    trained = nnx.merge(graphdef, jax.device_put(state, sharding.param_shardings(state, mesh, model.partition_rules)))
    placed = sampling.place(trained, mesh, "tensor")
    up, down = placed.layers.mlp.up_proj.kernel[...], placed.layers.mlp.down_proj.kernel[...]
    assert up.sharding.spec == P(None, None, "tensor") and down.sharding.spec == P(None, "tensor", None)
    assert trained.layers.mlp.up_proj.kernel[...].sharding.spec == P(None, "fsdp", "tensor")
    assert sampling.place(trained, mesh, "fsdp") is trained
    for temperature in (0.0, 1.0):
        params = stopping(model, sampling.SamplingParams(max_new_tokens=N, temperature=temperature, top_p=0.9))
        expected = sampling.generate(model, BATCH, params, jax.random.key(3), n=2, batch_size=4, chunk=3, block=8)
        assert expected.stopped.any() and not expected.stopped.all()
        for layout in sampling.LAYOUTS:
            got = sampling.generate(trained, BATCH, params, jax.random.key(3), n=2, batch_size=4, chunk=3, block=8,
                                    mesh=mesh, layout=layout)
            np.testing.assert_array_equal(got.tokens, expected.tokens)
            np.testing.assert_array_equal(got.lengths, expected.lengths)
            np.testing.assert_allclose(got.logprobs, expected.logprobs, atol=1e-5)


def test_decode_layout_casts_master_weights_to_the_compute_dtype():
    """float32 master weights, bfloat16 compute (GRPO's paper recipe): the "tensor" layout holds the
    weights in bfloat16 (half the bytes) and gives the tokens of the training layout, since the
    model casts each weight to bfloat16 where it uses it anyway."""
    from progress_jax import sharding

    model = qwen2_5_vl.init(CFG, seed=0, dtype=jnp.bfloat16, param_dtype=jnp.float32)
    mesh = sharding.make_mesh(data=2, fsdp=4, tensor=1)
    graphdef, state = nnx.split(model)
    trained = nnx.merge(graphdef, jax.device_put(state, sharding.param_shardings(state, mesh, model.partition_rules)))
    placed = sampling.place(trained, mesh, "tensor")
    assert {x.dtype for x in jax.tree.leaves(nnx.state(placed))} == {jnp.dtype(jnp.bfloat16)}
    assert trained.layers.mlp.up_proj.kernel[...].dtype == jnp.float32
    params = sampling.SamplingParams(max_new_tokens=N, temperature=1.0, top_p=0.9)
    got = {layout: sampling.generate(trained, BATCH, params, jax.random.key(3), n=2, batch_size=4, mesh=mesh,
                                     layout=layout) for layout in sampling.LAYOUTS}
    np.testing.assert_array_equal(got["tensor"].tokens, got["fsdp"].tokens)
    np.testing.assert_array_equal(got["tensor"].logprobs, got["fsdp"].logprobs)
