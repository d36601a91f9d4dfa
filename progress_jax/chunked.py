"""Per-position functions computed a block of positions at a time, for memory.

Two users: attention (queries in blocks: [heads, chunk, keys] scores instead of [heads, L, keys];
models/qwen2_5_vl/layers.py) and the full-vocabulary logits of the SFT loss and the GRPO log-probs
(one 30000-token row's float32 logits are 17 GiB; train/programs.py). With `chunk` > 0
only one block's intermediates exist at once, and the backward pass recomputes each block instead
of keeping them (jax.checkpoint on the block). Exact: each position is computed as without blocks.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def map_positions(fn, chunk: int, *arrays):
    """fn(*blocks) for blocks of `chunk` positions of arrays [B, T, ...] (axis 1), its outputs (a
    pytree of [B, c, ...] arrays) put back together as [B, T, ...]. chunk <= 0 or >= T: one call.
    The last block is zero-padded; its padded positions are dropped from the outputs."""
    T = arrays[0].shape[1]
    if chunk <= 0 or chunk >= T:
        return fn(*arrays)
    n = -(-T // chunk)
    pad = n * chunk - T

    def split(a):
        a = jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
        return jnp.moveaxis(a.reshape(a.shape[0], n, chunk, *a.shape[2:]), 1, 0)

    def join(y):  # [n, B, c, ...] -> [B, T, ...]
        y = jnp.moveaxis(y, 0, 1)
        return y.reshape(y.shape[0], n * chunk, *y.shape[3:])[:, :T]

    _, ys = jax.lax.scan(jax.checkpoint(lambda _, xs: (None, fn(*xs))), None, tuple(split(a) for a in arrays))
    return jax.tree.map(join, ys)
