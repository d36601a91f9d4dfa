"""Query-chunked attention (layers.causal_attention / layers.attention with chunk > 0): the same
values and gradients as one block, against a NumPy reference; the model's logits unchanged by
model.attention_chunk; and the compiled memory of forward+backward growing linearly with length."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from progress_jax import loading
from progress_jax.models import qwen2_5_vl
from progress_jax.models.qwen2_5_vl.config import Qwen25VLConfig, TextConfig, VisionConfig
from progress_jax.models.qwen2_5_vl.layers import attention, causal_attention


def _qkv(B, T, S, N=4, K=2, H=8, seed=0):
    r = np.random.default_rng(seed)
    return tuple(jnp.asarray(r.normal(size=s), jnp.float32) for s in ((B, T, N, H), (B, S, K, H), (B, S, K, H)))


def _reference(q, k, v, kv_mask, offset):
    """Softmax attention written out per query in float64: query t sees key s iff
    s <= offset + t and kv_mask[s]; None for queries with no visible key."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    B, T, N, H = q.shape
    group = N // k.shape[2]
    out = np.full(q.shape, np.nan)
    for b in range(B):
        for t in range(T):
            seen = np.flatnonzero(np.asarray(kv_mask[b]) & (np.arange(k.shape[1]) <= offset + t))
            if not len(seen):
                continue
            for n in range(N):
                s = k[b, seen, n // group] @ q[b, t, n] / np.sqrt(H)
                p = np.exp(s - s.max())
                out[b, t, n] = (p / p.sum()) @ v[b, seen, n // group]
    return out


# (T, S, offset, padding): training (right-padded, S = T), a prefill into a longer KV cache
# (left-padded prompts), and a block of queries deeper into the cache.
CASES = [(37, 37, 0, "right"), (23, 40, 0, "left"), (11, 40, 17, "left")]


def _kv_mask(B, S, T, offset, padding):
    m = np.ones((B, S), bool)
    if padding == "right":
        m[0, T - 9:] = False
        m[1, T - 2:] = False
    else:  # left-padded prompts; the slots after the queries are the (empty) rest of the cache
        m[0, :6] = False
        m[1, :1] = False
        m[:, offset + T:] = False
    return m


@pytest.mark.parametrize("T,S,offset,padding", CASES)
def test_chunked_values_and_gradients_match(T, S, offset, padding):
    B = 2
    q, k, v = _qkv(B, T, S)
    kv_mask = _kv_mask(B, S, T, offset, padding)
    ref = _reference(q, k, v, kv_mask, offset)
    valid = ~np.isnan(ref[..., 0, 0])  # queries with at least one visible key
    w = jnp.asarray(np.random.default_rng(1).normal(size=q.shape) * valid[..., None, None], jnp.float32)

    @jax.jit
    def run_all(q, k, v):  # one compile: every chunk size's output and gradients (d out . w)
        results = []
        for chunk in chunks:
            out, vjp = jax.vjp(lambda q, k, v: causal_attention(q, k, v, kv_mask, offset, chunk), q, k, v)
            results.append((out, vjp(w)))
        return results

    chunks = (0, 4, T - 1)  # T is never a multiple of 4 here; T - 1 leaves a last block of one query

    (out0, grads0), *rest = run_all(q, k, v)
    np.testing.assert_allclose(np.asarray(out0)[valid], ref[valid], atol=2e-5)
    for out, grads in rest:
        np.testing.assert_allclose(np.asarray(out)[valid], ref[valid], atol=2e-5)
        np.testing.assert_allclose(np.asarray(out), np.asarray(out0), atol=1e-5)  # garbage rows too
        for g, g0 in zip(grads, grads0):
            np.testing.assert_allclose(np.asarray(g), np.asarray(g0), atol=1e-5)
        assert float(jnp.abs(grads[1]).max()) > 0


def test_traced_offset_and_explicit_masks():
    """The cache index may be traced (decode loop); attention() chunks a [B, 1, T, S] mask along T
    and leaves a key-only mask (vision groups) whole."""
    B, T, S = 2, 10, 30
    q, k, v = _qkv(B, T, S)
    kv_mask = _kv_mask(B, S, T, 12, "left")
    ref = causal_attention(q, k, v, kv_mask, 12)
    traced = jax.jit(lambda i: causal_attention(q, k, v, kv_mask, i, 4))(jnp.int32(12))
    np.testing.assert_allclose(np.asarray(traced), np.asarray(ref), atol=1e-6)

    full = (np.arange(S)[None, :] <= 12 + np.arange(T)[:, None])[None, None] & kv_mask[:, None, None, :]
    np.testing.assert_allclose(np.asarray(attention(q, k, v, full, chunk=3)), np.asarray(ref), atol=1e-6)
    keys = kv_mask[:, None, None, :]
    np.testing.assert_allclose(np.asarray(attention(q, k, v, keys, chunk=3)),
                               np.asarray(attention(q, k, v, keys)), atol=1e-6)


def _text_model(layers=2, seed=0):
    cfg = qwen2_5_vl.tiny()
    cfg = Qwen25VLConfig(vision=VisionConfig(depth=1, hidden_size=32, intermediate_size=32, num_heads=2,
                                             out_hidden_size=32, fullatt_block_indexes=(0,)),
                         text=TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                         rope_theta=10000.0, mrope_section=(1, 1, 2)),
                         image_token_id=cfg.image_token_id, video_token_id=cfg.video_token_id,
                         vision_start_token_id=cfg.vision_start_token_id,
                         vision_end_token_id=cfg.vision_end_token_id, eos_token_id=cfg.eos_token_id,
                         pad_token_id=cfg.pad_token_id)
    return qwen2_5_vl.init(cfg, seed=seed)


def test_model_logits_and_cache_unchanged_by_chunking():
    """Tiny model: training forward (right padding, with and without remat) and generation
    (left-padded prefill into a KV cache, then one decode step) give the same logits."""
    model = _text_model()
    B, L = 2, 21
    ids = np.random.default_rng(0).integers(8, 64, size=(B, L))
    mask = np.ones((B, L), np.int32)
    mask[1, 15:] = 0
    prep = jax.tree.map(jnp.asarray, model.prepare(ids, mask))

    from flax import nnx

    def run(chunk):  # one compile per chunk size
        loading.set_attention_chunk(model, chunk)
        graphdef, state = nnx.split(model)

        @jax.jit
        def f(state):
            m = nnx.merge(graphdef, state)
            train = [m.forward(prep["input_ids"], prep["attention_mask"], prep["position_ids"], remat=remat)
                     for remat in ("none", "full")]
            # Generation: left-padded prompts prefill L slots of a cache of L + 3, then one token.
            left = jnp.asarray(np.concatenate([mask[:, ::-1], np.ones((B, 3), np.int32)], 1))
            h, cache = m.decode(m.embed(prep["input_ids"]), jnp.broadcast_to(jnp.arange(L), (3, B, L)), left,
                                m.init_cache(B, L + 3), 0)
            h2, _ = m.decode(m.embed(prep["input_ids"][:, :1]), jnp.full((3, B, 1), L), left, cache, jnp.int32(L))
            return train + [m.logits(h), m.logits(h2)]

        return f(state)

    ref = run(0)
    assert model.layers.self_attn.attention_chunk == 0
    got = run(4)
    assert model.layers.self_attn.attention_chunk == 4  # the one stacked module of every layer
    for a, b in zip(got, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def _temp_bytes(model, L, chunk):
    """XLA's temp bytes of the compiled forward+backward of the decoder at length L (compile only)."""
    from flax import nnx

    loading.set_attention_chunk(model, chunk)
    graphdef, params = nnx.split(model)
    D = model.config.text.hidden_size

    def loss(params, x, pos, kv):
        hidden, _ = nnx.merge(graphdef, params).decode(x, pos, kv)
        return jnp.sum(hidden.astype(jnp.float32) ** 2)

    args = (jax.ShapeDtypeStruct((1, L, D), jnp.float32), jax.ShapeDtypeStruct((3, 1, L), jnp.int32),
            jax.ShapeDtypeStruct((1, L), jnp.int32))
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, *args).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_memory_grows_linearly_with_chunking():
    """Doubling the length: temporaries x ~4 without chunking (the [N, L, L] scores), x ~2 with
    query blocks of 64 (the [N, 64, L] scores of one block)."""
    model = _text_model(layers=2)
    plain = [_temp_bytes(model, L, 0) for L in (512, 1024)]
    blocks = [_temp_bytes(model, L, 64) for L in (512, 1024)]
    assert plain[1] / plain[0] > 3.3, plain
    assert blocks[1] / blocks[0] < 2.5, blocks
    assert blocks[1] * 4 < plain[1], (blocks, plain)


def test_vision_tower_unchanged_by_chunking():
    """model.attention_chunk reaches the vision blocks too: image features with queries in blocks
    of 5 (the tiny images' full-attention groups hold 64 patches) equal one block."""
    from progress_jax.models.qwen2_5_vl import family
    from tests.test_sft import CFG, host_batch

    model = qwen2_5_vl.init(CFG, seed=0)
    batch = family.stack_micro([host_batch([(20, 1), (12, 2), (30, 0)], L=72, P=256)], CFG)
    mb = jax.tree.map(lambda a: jnp.asarray(a[0]), batch)
    embed = jax.jit(lambda m, ids, pv, vis: m.embed(ids, pv, vis))
    outs = []
    for chunk in (0, 5):
        loading.set_attention_chunk(model, chunk)
        assert model.visual.blocks.attn.attention_chunk == chunk
        outs.append(np.asarray(embed(model, mb["input_ids"], mb["pixel_values"], mb["vision"])))
    assert np.abs(outs[0]).max() > 0
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-5)
