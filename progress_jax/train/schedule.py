"""Learning-rate schedule and the AdamW optimizer shared by the SFT and GRPO trainers.

Only trainable leaves (LoRA, or all parameters when `lora.rank = 0`) are updated and carry
Adam moments: the rest go through optax.set_to_zero, so frozen weights cost no optimizer memory.
"""
from __future__ import annotations

import math

import jax
import optax
from flax import nnx

TRAIN, FREEZE = "train", "freeze"


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """ceil(ratio * total), as transformers' TrainingArguments.get_warmup_steps."""
    return math.ceil(total_steps * warmup_ratio)


def cosine_schedule(lr: float, total_steps: int, warmup_ratio: float) -> optax.Schedule:
    """Linear warmup from 0 to `lr` over ceil(warmup_ratio * total_steps) steps, then cosine
    decay to 0 at `total_steps` (transformers' get_cosine_schedule_with_warmup)."""
    if total_steps < 1 or not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"need total_steps >= 1 and 0 <= warmup_ratio < 1, "
                         f"got total_steps={total_steps}, warmup_ratio={warmup_ratio}")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup_steps(total_steps, warmup_ratio),
        decay_steps=total_steps, end_value=0.0)


def mask_from_filter(state: nnx.State, wrt) -> nnx.State:
    """Trainable mask for an nnx.State: True where the variable matches the NNX filter `wrt`
    (e.g. nnx.LoRAParam), with the State's own tree structure, ready for `make_optimizer`."""
    predicate = nnx.filterlib.to_predicate(wrt)

    def key(k):  # DictKey in nnx.State; SequenceKey/GetAttrKey should another container appear
        return getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))

    return jax.tree.map_with_path(
        lambda path, var: bool(predicate(tuple(key(k) for k in path), var)), state,
        is_leaf=lambda x: isinstance(x, nnx.Variable))


def make_optimizer(lr: float, weight_decay: float, warmup_ratio: float, total_steps: int,
                   clip_norm: float | None, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   trainable_mask=None) -> optax.GradientTransformation:
    """AdamW (decoupled weight decay on every trainable leaf) after global-norm clipping of the
    trainable gradients, with the cosine schedule above. `trainable_mask`: a pytree of bools
    matching (a prefix of) the parameters, or a callable params -> such a pytree; None trains all."""
    tx = optax.adamw(cosine_schedule(lr, total_steps, warmup_ratio), b1=b1, b2=b2, eps=eps,
                     weight_decay=weight_decay)
    if clip_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(clip_norm), tx)
    if trainable_mask is None:
        return tx

    def labels(params):
        mask = trainable_mask(params) if callable(trainable_mask) else trainable_mask
        return jax.tree.map(lambda m: TRAIN if m else FREEZE, mask)

    return optax.multi_transform({TRAIN: tx, FREEZE: optax.set_to_zero()}, labels)
