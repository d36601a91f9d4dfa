"""LoRA on the language model's linear layers: injection, the trainable filter, merge, switch-off.

A LoRA layer computes x @ W + scale * dropout(x) @ A @ B with A [in, r], B [r, out], scale =
alpha / r (PEFT's defaults: A kaiming-uniform, B zeros, so training starts from the base model).
A and B are `nnx.LoRAParam` variables on a model's LoRA-capable linear layers (any module with a
`kernel` [in, out] and the slots `lora_a`, `lora_b`, `lora_scale`, `lora_dropout`, as
models/qwen2_5_vl/layers.Linear), so the NNX filter `nnx.LoRAParam`
selects exactly them.

Stacked layers (the decoder layers, scanned over: model.partition_rules.stacked) hold one Linear
per projection with kernels [layers, in, out] and factors [layers, in, r] / [layers, r, out].
`lora.targets` still reads per layer: it is matched against each layer's path
(`layers/N/self_attn/q_proj`). Where it selects a projection in some layers only, the stacked
projection gets factors for every layer and a `LoRAMask` (1 for the selected layers, 0 for the
others) that switches the update off elsewhere: those layers compute the base model, their factors
get zero gradients, and export writes the selected layers only. `rank = 0` means no LoRA: the whole language model (embeddings included)
is trained, and the vision tower and merger too unless they are frozen (model.freeze_vision).
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from progress_jax import sharding

# q, k, v, o, gate, up and down projections of every decoder layer (per-layer paths, see above).
DEFAULT_TARGETS = r"^layers/\d+/(self_attn/(q|k|v|o)_proj|mlp/(gate|up|down)_proj)$"


class LoRAMask(nnx.Variable):
    """1.0 / 0.0 per layer of a stacked LoRA projection: whether the targets selected that layer."""


def _linears(model):
    for path, module in nnx.iter_modules(model):
        if hasattr(module, "kernel") and hasattr(module, "lora_a"):  # a LoRA-capable linear layer
            yield sharding.path_str(path), module


def _per_layer_paths(model, path: str, lin) -> list[str]:
    """One path per layer of a stacked module (`layers/N/self_attn/q_proj`), else [path]."""
    prefix = model.partition_rules.stacked_prefix(path)
    if prefix is None:
        return [path]
    return [f"{prefix}/{i}/{path[len(prefix) + 1:]}" for i in range(lin.kernel.shape[0])]


def inject(model, rank: int, alpha: float, dropout: float = 0.0, targets: str = DEFAULT_TARGETS,
           seed: int = 0, mesh=None) -> list[str]:
    """Add LoRA factors to every Linear whose '/'-joined per-layer path matches `targets` (in
    place). Returns the adapted per-layer paths. With a mesh, the new factors are placed by the
    model's partition rules."""
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"config key lora.rank must be a positive integer to inject LoRA, got {rank!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"config key lora.dropout must be in [0, 1), got {dropout!r}")
    try:
        pattern = re.compile(targets)
    except re.error as e:
        raise ValueError(f"config key lora.targets is not a valid regex ({e}): {targets!r}") from None
    key = jax.random.key(seed)
    adapted = []
    for i, (path, lin) in enumerate(_linears(model)):
        per_layer = _per_layer_paths(model, path, lin)
        hits = [p for p in per_layer if pattern.search(p)]
        if not hits:
            continue
        if path.startswith("visual/"):
            raise ValueError(f"config key lora.targets matches {hits[0]}: the vision tower stays frozen")
        if lin.lora_a is not None:
            raise ValueError(f"{path} already holds LoRA factors")
        *lead, din, dout = lin.kernel.shape  # lead: (layers,) for a stacked module
        dtype = jnp.float32  # adapters in float32 whatever the base dtype (as PEFT's default)
        # PEFT: kaiming_uniform_(a=sqrt(5)) on A [r, in] -> U(-1/sqrt(in), 1/sqrt(in)), per layer.
        bound = 1.0 / np.sqrt(din)
        a = jax.random.uniform(jax.random.fold_in(key, i), (*lead, din, rank), jnp.float32, -bound, bound)
        # nnx.data: the layer declares the slots as static None until LoRA is injected.
        lin.lora_a = nnx.data(nnx.LoRAParam(a.astype(dtype)))
        lin.lora_b = nnx.data(nnx.LoRAParam(jnp.zeros((*lead, rank, dout), dtype)))
        if len(hits) != len(per_layer):
            on = np.array([p in hits for p in per_layer], np.float32)
            lin.lora_mask = nnx.data(LoRAMask(jnp.asarray(on)))
        lin.lora_scale = float(alpha) / rank
        lin.lora_dropout = float(dropout)
        adapted.extend(hits)
    if not adapted:
        raise ValueError(f"config key lora.targets {targets!r} matches no linear layer of the model")
    if mesh is not None:
        state = nnx.state(model, nnx.Any(nnx.LoRAParam, LoRAMask))
        nnx.update(model, jax.device_put(state, sharding.param_shardings(state, mesh, model.partition_rules)))
    return adapted


def from_config(model, lora_cfg, seed: int = 0, mesh=None) -> list[str]:
    """Apply the `lora` config section: rank 0 -> nothing injected (full-parameter training)."""
    if lora_cfg.rank == 0:
        return []
    return inject(model, lora_cfg.rank, lora_cfg.alpha, lora_cfg.dropout, lora_cfg.targets, seed, mesh)


def trainable_filter(rank: int, freeze_vision: bool = True):
    """NNX filter of the trained variables: LoRA factors, or (rank 0) every Param, the vision
    tower's only when freeze_vision is False."""
    if rank > 0:
        return nnx.LoRAParam
    if not freeze_vision:
        return nnx.Param
    return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("visual")))


def param_count(model) -> int:
    """LoRA parameters of the selected layers (a masked-off layer's factors do not count)."""
    total = 0
    for _, lin in _linears(model):
        if lin.lora_a is not None:
            n = int(np.prod(lin.lora_a.shape)) + int(np.prod(lin.lora_b.shape))
            total += n if lin.lora_mask is None else int(n * np.asarray(lin.lora_mask[...]).mean())
    return total


def merge(model):
    """Fold every LoRA update into its base kernel (W + scale * A @ B, in float32) and remove the
    factors, in place; the result has the plain Qwen2.5-VL parameter tree (for save_pretrained)."""
    for _, lin in _linears(model):
        if lin.lora_a is None:
            continue
        w = lin.kernel[...]
        # A @ B per layer for stacked kernels (matmul batches over the leading layer axis).
        delta = lin.lora_scale * (lin.lora_a[...].astype(jnp.float32) @ lin.lora_b[...].astype(jnp.float32))
        if lin.lora_mask is not None:
            delta = delta * lin.lora_mask[...][:, None, None]
        lin.kernel.set_value((w.astype(jnp.float32) + delta).astype(w.dtype))
        lin.lora_a = lin.lora_b = lin.lora_mask = None
        lin.lora_scale, lin.lora_dropout = 0.0, 0.0
    return model


def lora_off(params):
    """The same parameters with every `lora_b` zeroed: the base model (the GRPO reference policy)
    without a second copy of the base weights. Works on an nnx.State or a dict keyed by paths."""
    def off(path, x):
        return jnp.zeros_like(x) if sharding.path_str(path).endswith("lora_b") else x

    return jax.tree_util.tree_map_with_path(off, params)
