"""Building blocks shared by the vision tower and the language model."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from progress_jax.chunked import map_positions


class Linear(nnx.Module):
    """y = x @ kernel + bias, kernel stored [in, out]. LoRA factors, when injected by
    progress_jax.lora, live beside the kernel as `lora_a` [in, r] and `lora_b` [r, out]."""

    def __init__(self, din: int, dout: int, *, bias: bool, dtype, param_dtype, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        self.kernel = nnx.Param(init(rngs.params(), (din, dout), param_dtype))
        self.bias = nnx.Param(jnp.zeros((dout,), param_dtype)) if bias else None
        self.lora_a = None
        self.lora_b = None
        self.lora_mask = None  # stacked layers whose LoRA targets select some layers: 1/0 per layer
        self.lora_scale = 0.0
        self.lora_dropout = 0.0
        self.dtype = dtype

    def __call__(self, x, *, dropout_rng=None):
        x = x.astype(self.dtype)
        y = matmul(x, self.kernel[...])
        if self.lora_a is not None:
            xl = x
            if dropout_rng is not None and self.lora_dropout > 0:
                keep = jax.random.bernoulli(dropout_rng, 1.0 - self.lora_dropout, x.shape)
                xl = jnp.where(keep, x / (1.0 - self.lora_dropout), 0).astype(self.dtype)
            a = self.lora_a[...].astype(self.dtype)
            b = self.lora_b[...].astype(self.dtype)
            scale = jnp.asarray(self.lora_scale, self.dtype)
            if self.lora_mask is not None:  # this layer's on/off (a scalar inside the layer scan)
                scale = scale * self.lora_mask[...].astype(self.dtype)
            y = y + (xl @ a @ b) * scale
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


def matmul(x, w, transpose_w: bool = False):
    """x [..., in] @ w [in, out] (w [out, in] with transpose_w) in x's dtype."""
    if w.dtype == x.dtype == jnp.float32 or jax.default_backend() != "cpu":
        return jax.lax.dot_general(x, w.astype(x.dtype), _dims(x, transpose_w))
    return _late_matmul(x, w, transpose_w)


def _dims(x, transpose_w: bool):
    return (((x.ndim - 1,), (1 if transpose_w else 0,)), ((), ()))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _late_matmul(x, w, transpose_w):
    return jax.lax.dot_general(x, _tie(w, x), _dims(x, transpose_w))


def _tie(w, x):
    """w in x's dtype, computed from x too (an integer OR of w's bits with a zero derived from
    x's first element, exact for any value): a conversion that cannot run before x exists, be
    hoisted out of a loop, or be shared with the conversion for another use."""
    bits = {2: jnp.uint16, 4: jnp.uint32}
    xb = jax.lax.bitcast_convert_type(x.reshape(-1)[0], bits[x.dtype.itemsize])
    zero = (xb == xb + 1).astype(bits[w.dtype.itemsize])  # always 0
    wb = jax.lax.bitcast_convert_type(w, bits[w.dtype.itemsize]) | zero
    return jax.lax.bitcast_convert_type(wb, w.dtype).astype(x.dtype)


def _late_matmul_fwd(x, w, transpose_w):
    return _late_matmul(x, w, transpose_w), (x, w)


def _late_matmul_bwd(transpose_w, res, g):
    x, w = res
    dx = jax.lax.dot_general(g, _tie(w, g), (((g.ndim - 1,), (0 if transpose_w else 1,)), ((), ())))
    lead = tuple(range(x.ndim - 1))
    dw = jax.lax.dot_general(x, g.astype(x.dtype), ((lead, lead), ((), ())))  # [in, out]
    return dx.astype(x.dtype), (dw.T if transpose_w else dw).astype(w.dtype)


_late_matmul.defvjp(_late_matmul_fwd, _late_matmul_bwd)


def redraw_fan_in(module: nnx.Module, rngs: nnx.Rngs, param_dtype) -> None:
    """Every Linear kernel under `module` drawn again from N(0, 1/fan_in) (stacked layers' kernels
    [layers, in, out] too): the `fan_in` init of Qwen25VLConfig."""
    for _, m in nnx.iter_graph(module):
        if isinstance(m, Linear):
            shape = m.kernel.get_value().shape
            m.kernel.set_value((jax.random.normal(rngs.params(), shape, jnp.float32) * shape[-2] ** -0.5).astype(param_dtype))


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, *, eps: float, param_dtype):
        self.weight = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps = eps

    def __call__(self, x):
        # Normalise in float32, scale in the input dtype, as transformers does.
        dtype = x.dtype
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(dtype) * xf.astype(dtype)


class SwiGLU(nnx.Module):
    def __init__(self, dim: int, hidden: int, *, bias: bool, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(bias=bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gate_proj = Linear(dim, hidden, **kw)
        self.up_proj = Linear(dim, hidden, **kw)
        self.down_proj = Linear(hidden, dim, **kw)

    def __call__(self, x, dropout_rng=None):
        # One LoRA-dropout key per projection (PEFT draws a separate mask for each adapter).
        g, u, d = (None,) * 3 if dropout_rng is None else jax.random.split(dropout_rng, 3)
        h = jax.nn.silu(self.gate_proj(x, dropout_rng=g)) * self.up_proj(x, dropout_rng=u)
        return self.down_proj(h, dropout_rng=d)


def rotate_half(x):
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x, cos, sin):
    """Rotate-half RoPE in float32; cos/sin broadcast against x [..., T, heads, head_dim]."""
    xf = x.astype(jnp.float32)
    return (xf * cos + rotate_half(xf) * sin).astype(x.dtype)


def attention(q, k, v, mask, chunk: int = 0):
    """q [B, T, N, H], k/v [B, S, K, H] (N a multiple of K), mask bool broadcastable to [B, N, T, S].

    One call for vision windows, padding and any explicit mask; fully masked rows (padding
    queries) come out as finite garbage that callers ignore. chunk > 0: queries in blocks of
    `chunk` (progress_jax.chunked); the mask is split with them where it has a T axis."""
    mask = jnp.asarray(mask)
    mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    if mask.shape[2] == 1:
        return map_positions(lambda qb: _sdpa(qb, k, v, mask), chunk, q)
    rows = jnp.moveaxis(mask, 2, 1)  # [B|1, T, N|1, S]: split into query blocks with q
    return map_positions(lambda qb, m: _sdpa(qb, k, v, jnp.moveaxis(m, 1, 2)), chunk, q, rows)


def causal_attention(q, k, v, kv_mask, q_offset=0, chunk: int = 0):
    """Causal attention with key padding and prompt-sharing segments, the mask built per query
    block from small inputs.

    q [B, T, N, H] at key slots q_offset .. q_offset + T - 1 (q_offset: the KV-cache index, 0
    without a cache); k/v [B, S, K, H]; kv_mask [B, S] codes each key slot: 0 padding (right in
    training, left in generation), 1 a token every later token of the row sees, k >= 2 a token of
    segment k, seen only by tokens of segment k. Query t (at slot q = q_offset + t) sees key s iff
    s <= q, kv_mask[s] > 0 and kv_mask[s] is 1 or kv_mask[q]. With codes 0/1 only (every row but a
    GRPO group's: its prompt 1, its responses 2, 3, ...; docs/model.md) this is plain causal
    attention with padding. chunk: query block size (0: one block; progress_jax.chunked), so that
    attention's memory grows with T * chunk, not T * T."""
    S = k.shape[1]
    codes = jnp.asarray(kv_mask).astype(jnp.int32)  # [B, S]
    kv = codes[:, None, None, :]  # [B, 1, 1, S]

    def block(qb, slots):  # slots [1, C]: the key slot of each query of the block
        causal = jnp.arange(S)[None, :] <= slots[0][:, None]  # [C, S]
        own = jnp.take(codes, slots[0], axis=1)[:, None, :, None]  # [B, 1, C, 1]: each query's segment
        return _sdpa(qb, k, v, causal[None, None] & (kv > 0) & ((kv == 1) | (kv == own)))

    return map_positions(block, chunk, q, (q_offset + jnp.arange(q.shape[1]))[None])


def block_decode_attention(q, k_cache, v_cache, layer, lengths, blocks, block: int):
    """Attention of one query per row over the first lengths[b] key slots of a stacked cache,
    reading only its first `blocks` blocks of `block` slots (a loop with a dynamic bound and an
    online softmax), so that a decode step costs what the filled part of the cache costs, not its
    allocated length. q [B, N, H]; k_cache/v_cache [layers, B, S, K, H] (S a multiple of block);
    layer: the layer's index in the cache; every row needs lengths >= 1. Returns [B, N, H] float32."""
    B, N, H = q.shape
    K = k_cache.shape[3]
    qg = q.astype(jnp.float32).reshape(B, K, N // K, H) / jnp.sqrt(jnp.float32(H))

    def step(b, carry):
        m, l, acc = carry
        at = (layer, 0, b * block, 0, 0)
        kb = jax.lax.dynamic_slice(k_cache, at, (1, B, block, K, H))[0].astype(jnp.float32)
        vb = jax.lax.dynamic_slice(v_cache, at, (1, B, block, K, H))[0].astype(jnp.float32)
        s = jnp.einsum("bkgh,bskh->bkgs", qg, kb)
        valid = (b * block + jnp.arange(block))[None, :] < lengths[:, None]  # [B, block]
        s = jnp.where(valid[:, None, None, :], s, -jnp.inf)
        m_new = jnp.maximum(m, s.max(-1))  # finite from block 0 on (every row sees slot 0)
        p = jnp.exp(s - m_new[..., None])
        corr = jnp.exp(m - m_new)
        return m_new, l * corr + p.sum(-1), acc * corr[..., None] + jnp.einsum("bkgs,bskh->bkgh", p, vb)

    init = (jnp.full((B, K, N // K), -jnp.inf, jnp.float32), jnp.zeros((B, K, N // K), jnp.float32),
            jnp.zeros((B, K, N // K, H), jnp.float32))
    _, l, acc = jax.lax.fori_loop(0, blocks, step, init)
    return (acc / l[..., None]).reshape(B, N, H)


def _sdpa(q, k, v, mask):
    # XLA implementation (portable); a GPU alternative for training is in docs/model.md.
    return jax.nn.dot_product_attention(q, k, v, mask=mask).astype(q.dtype)


# ---- stacked layers under scan ---------------------------------------------------------------

# Rematerialisation of a scanned layer: full saves only each layer's input; dots keeps matmul outputs.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def stacked(make, n: int, rngs: nnx.Rngs):
    """`n` layers `make(rngs)` as ONE module whose parameters carry a leading layer axis of size n
    (each layer initialised from its own split of the rngs)."""
    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def build(r):
        return make(r)

    return build(rngs)


def scan_layers(module, body, carry, xs, remat: str = "none"):
    """carry = body(layer_i, carry, xs_i) for each layer i of a `stacked` module, as one
    jax.lax.scan: the layer is compiled once whatever the depth. xs: per-layer inputs (leading
    axis n). remat: none | full | dots, the rematerialisation policy of the scanned body."""
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat must be one of {sorted(REMAT_POLICIES)}, got {remat!r}")
    graphdef, state = nnx.split(module)
    leaves, treedef = jax.tree.flatten(state)
    # XLA:CPU slices a bfloat16 array in float32 and hoists the conversion of the whole stack out
    # of the loop (a float32 copy of every layer's weights): such leaves are sliced as integer bits
    # inside the body instead (layer_of), the others are scanned over.
    narrow = [_narrow(x) for x in leaves]
    scanned = [x for x, nw in zip(leaves, narrow) if not nw]
    n = leaves[0].shape[0]

    def step(c, inp):
        sl, i, x = inp
        sl = iter(sl)
        layer = [layer_of(w, i) if nw else next(sl) for w, nw in zip(leaves, narrow)]
        return body(nnx.merge(graphdef, jax.tree.unflatten(treedef, layer)), c, x), None

    if REMAT_POLICIES[remat] is not None:
        step = jax.checkpoint(step, policy=REMAT_POLICIES[remat], prevent_cse=False)
    return jax.lax.scan(step, carry, (scanned, jnp.arange(n), xs))[0]


def _narrow(x) -> bool:
    return jax.default_backend() == "cpu" and x.dtype in (jnp.bfloat16, jnp.float16)


@jax.custom_vjp
def layer_of(w, i):
    """w[i] of a stacked 16-bit array, sliced as its integer bits (see scan_layers)."""
    bits = jax.lax.bitcast_convert_type(w, jnp.uint16)
    return jax.lax.bitcast_convert_type(jax.lax.dynamic_index_in_dim(bits, i, keepdims=False), w.dtype)


def _layer_of_fwd(w, i):
    return layer_of(w, i), (w, i)


def _layer_of_bwd(res, g):
    w, i = res  # (trained 16-bit stacked weights only: their cotangent, one layer filled)
    return jax.lax.dynamic_update_index_in_dim(jnp.zeros_like(w), g.astype(w.dtype), i, 0), None


layer_of.defvjp(_layer_of_fwd, _layer_of_bwd)
