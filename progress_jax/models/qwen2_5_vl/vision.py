"""Qwen2.5-VL vision tower: patch embedding, 2-D RoPE, window/full attention blocks, merger."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .config import VisionConfig
from .layers import Linear, RMSNorm, SwiGLU, apply_rope, attention, scan_layers, stacked


class VisionAttention(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.qkv = Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=True, **kw)
        self.proj = Linear(cfg.hidden_size, cfg.hidden_size, bias=True, **kw)
        self.num_heads = cfg.num_heads
        # Query block size (model.attention_chunk, loading.set_attention_chunk): a full-attention
        # block over a 16384-patch image would hold [16, 16384, 16384] float32 scores (16 GiB).
        self.attention_chunk = 0

    def __call__(self, x, cos, sin, groups):
        P, D = x.shape
        q, k, v = jnp.split(self.qkv(x).reshape(P, 3, self.num_heads, D // self.num_heads), 3, axis=1)
        q, k = apply_rope(q[:, 0], cos, sin), apply_rope(k[:, 0], cos, sin)
        return self.proj(grouped_attention(q, k, v[:, 0], groups, self.attention_chunk).reshape(P, D))


def grouped_attention(q, k, v, groups, chunk: int = 0):
    """Attention within each row of `groups` [G, N] (positions into q/k/v [P, heads, d], -1 padded):
    gathered into a batch of G sequences, padding keys masked, results scattered back. Cost is
    that of the windows / images, not of all P x P pairs; rows of P in no group come out zero.
    chunk: queries of a group in blocks of that many (progress_jax.chunked; 0 = one block)."""
    valid = groups >= 0
    idx = jnp.where(valid, groups, 0)
    out = attention(q[idx], k[idx], v[idx], valid[:, None, None, :], chunk)
    dest = jnp.where(valid, groups, q.shape[0]).reshape(-1)
    return jnp.zeros_like(q).at[dest].set(out.reshape(-1, *q.shape[1:]), mode="drop")


class VisionBlock(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs):
        self.norm1 = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=param_dtype)
        self.norm2 = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=param_dtype)
        self.attn = VisionAttention(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.mlp = SwiGLU(
            cfg.hidden_size, cfg.intermediate_size, bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )

    def __call__(self, x, cos, sin, groups):
        x = x + self.attn(self.norm1(x), cos, sin, groups)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs):
        unit_dim = cfg.hidden_size * cfg.spatial_merge_size**2
        kw = dict(bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.ln_q = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=param_dtype)
        self.fc1 = Linear(unit_dim, unit_dim, **kw)
        self.fc2 = Linear(unit_dim, cfg.out_hidden_size, **kw)
        self.unit_dim = unit_dim

    def __call__(self, x):
        x = self.ln_q(x).reshape(-1, self.unit_dim)
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class VisionTower(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs):
        self.cfg = cfg
        # Conv3d with kernel == stride over a [C, T, p, p] patch row is a linear map.
        self.patch_embed = Linear(cfg.patch_dim, cfg.hidden_size, bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        # One VisionBlock with a leading axis of `depth` on its parameters, run under scan.
        self.blocks = stacked(lambda r: VisionBlock(cfg, dtype=dtype, param_dtype=param_dtype, rngs=r), cfg.depth, rngs)
        self.merger = PatchMerger(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def rope(self, rope_hw):
        cfg = self.cfg
        quarter = cfg.head_dim // 2
        inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, quarter, 2, dtype=jnp.float32) / quarter))
        freqs = rope_hw.astype(jnp.float32)[:, :, None] * inv  # [P, 2, head_dim/4]
        freqs = freqs.reshape(freqs.shape[0], -1)
        emb = jnp.concatenate([freqs, freqs], axis=-1)[:, None, :]  # [P, 1, head_dim]
        return jnp.cos(emb), jnp.sin(emb)

    def __call__(self, pixel_values, vis, remat: str = "none"):
        """pixel_values [P, patch_dim]; vis: positions.vision_inputs(...) as arrays; remat: the
        blocks' rematerialisation policy (none | full | dots).
        Returns merged features [P / merge**2, out_hidden] in the processor's order."""
        cfg = self.cfg
        unit = cfg.spatial_merge_size**2
        x = self.patch_embed(pixel_values)
        P, D = x.shape
        x = x.reshape(P // unit, unit, D)[vis["window_index"]].reshape(P, D)
        cos, sin = self.rope(vis["rope_hw"])
        # Full-attention blocks attend within each image, the others within windows: a per-block
        # flag picks the groups inside the one compiled body.
        full = jnp.asarray([i in cfg.fullatt_block_indexes for i in range(cfg.depth)])

        def block_step(block, x, is_full):
            return jax.lax.cond(is_full, lambda: block(x, cos, sin, vis["image_groups"]),
                                lambda: block(x, cos, sin, vis["window_groups"]))

        x = scan_layers(self.blocks, block_step, x, full, remat=remat)
        return self.merger(x)[vis["reverse_index"]]
