"""Qwen2 decoder with GQA, q/k/v biases, SwiGLU, RMSNorm and M-RoPE; optional KV cache.

The model holds its decoder layers as one DecoderLayer whose parameters carry a leading layer axis
and scans over it (model.Qwen25VL.decode); the KV cache is stacked the same way."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .config import TextConfig
from .layers import Linear, RMSNorm, SwiGLU, apply_rope, block_decode_attention, causal_attention


def mrope_cos_sin(position_ids, cfg: TextConfig):
    """position_ids (3, B, T) -> cos, sin [B, T, 1, head_dim] in float32.

    The head_dim/2 frequencies are split in contiguous chunks `mrope_section`; chunk i takes
    its angle from axis i (t, h, w)."""
    half = cfg.head_dim // 2
    inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, half, dtype=jnp.float32) * 2 / cfg.head_dim))
    freqs = position_ids.astype(jnp.float32)[..., None] * inv  # [3, B, T, half]
    axis_of_freq = jnp.asarray(np.repeat(np.arange(3), cfg.mrope_section))
    freqs = jnp.take_along_axis(freqs, axis_of_freq[None, None, None, :], axis=0)[0]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    return jnp.cos(emb), jnp.sin(emb)


class Attention(nnx.Module):
    def __init__(self, cfg: TextConfig, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d, h, kv = cfg.hidden_size, cfg.head_dim, cfg.num_key_value_heads
        self.q_proj = Linear(d, cfg.num_attention_heads * h, bias=True, **kw)
        self.k_proj = Linear(d, kv * h, bias=True, **kw)
        self.v_proj = Linear(d, kv * h, bias=True, **kw)
        self.o_proj = Linear(cfg.num_attention_heads * h, d, bias=False, **kw)
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_attention_heads, kv, h
        self.attention_chunk = 0  # query block size (model.attention_chunk, loading.set_attention_chunk)

    def __call__(self, x, cos, sin, mask, cache=None, cache_index=None, dropout_rng=None, layer=0):
        """cache: the stacked cache {"k", "v": [layers, B, S, K, H]}; this layer writes its keys and
        values into slot `layer` at cache_index (in place in the carried buffer) and attends to them."""
        B, T, _ = x.shape
        rq, rk, rv, ro = (None,) * 4 if dropout_rng is None else jax.random.split(dropout_rng, 4)
        q = self.q_proj(x, dropout_rng=rq).reshape(B, T, self.num_heads, self.head_dim)
        k = self.k_proj(x, dropout_rng=rk).reshape(B, T, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x, dropout_rng=rv).reshape(B, T, self.num_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            at = (layer, 0, cache_index, 0, 0)
            cache = {"k": jax.lax.dynamic_update_slice(cache["k"], k[None].astype(cache["k"].dtype), at),
                     "v": jax.lax.dynamic_update_slice(cache["v"], v[None].astype(cache["v"].dtype), at)}
            k = jax.lax.dynamic_index_in_dim(cache["k"], layer, keepdims=False).astype(q.dtype)
            v = jax.lax.dynamic_index_in_dim(cache["v"], layer, keepdims=False).astype(q.dtype)
        # mask: kv_mask [B, S]; queries sit at key slots cache_index .. cache_index + T - 1.
        out = causal_attention(q, k, v, mask, 0 if cache_index is None else cache_index, self.attention_chunk)
        return self.o_proj(out.reshape(B, T, -1), dropout_rng=ro), cache

    def decode_slots(self, x, cos, sin, cache, fill, blocks, block: int, layer):
        """One token per slot (the rollout engine, progress_jax/sampling.py): x [S, 1, D]; slot s
        writes its key and value at cache slot fill[s] and attends to slots 0 .. fill[s], reading
        only the cache's first `blocks` blocks of `block` slots (layers.block_decode_attention)."""
        S = x.shape[0]
        q = self.q_proj(x).reshape(S, 1, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(S, 1, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(S, 1, self.num_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        rows = jnp.arange(S)
        cache = {"k": cache["k"].at[layer, rows, fill].set(k[:, 0].astype(cache["k"].dtype)),
                 "v": cache["v"].at[layer, rows, fill].set(v[:, 0].astype(cache["v"].dtype))}
        out = block_decode_attention(q[:, 0], cache["k"], cache["v"], layer, fill + 1, blocks, block)
        return self.o_proj(out.reshape(S, 1, -1).astype(x.dtype)), cache


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: TextConfig, *, dtype, param_dtype, rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=param_dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=param_dtype)
        self.self_attn = Attention(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.mlp = SwiGLU(
            cfg.hidden_size, cfg.intermediate_size, bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )

    def __call__(self, x, cos, sin, mask, cache=None, cache_index=None, dropout_rng=None, layer=0):
        """dropout_rng: a key for LoRA dropout (training); None runs without dropout. layer: this
        layer's index in the stacked cache."""
        ra, rm = (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
        h, cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, cache_index, dropout_rng=ra,
                                  layer=layer)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x), dropout_rng=rm), cache

    def decode_slots(self, x, cos, sin, cache, fill, blocks, block: int, layer):
        """One token per slot (Attention.decode_slots)."""
        h, cache = self.self_attn.decode_slots(self.input_layernorm(x), cos, sin, cache, fill, blocks, block, layer)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), cache
