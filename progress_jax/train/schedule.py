"""Learning-rate schedules and the AdamW optimizer shared by the SFT and GRPO trainers.

The trainers hand the optimizer the trained parameters only (train.loop.split), so frozen weights
carry no Adam moments and cost no optimizer memory.
"""
from __future__ import annotations

import math

import optax


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


def constant_schedule(lr: float, total_steps: int, warmup_ratio: float) -> optax.Schedule:
    """Linear warmup from 0 to `lr` over ceil(warmup_ratio * total_steps) steps, then constant
    (EasyR1's optim.lr_scheduler_type default)."""
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"need 0 <= warmup_ratio < 1, got warmup_ratio={warmup_ratio}")
    n = warmup_steps(max(total_steps, 1), warmup_ratio)
    if n == 0:
        return optax.constant_schedule(lr)
    return optax.join_schedules([optax.linear_schedule(0.0, lr, n), optax.constant_schedule(lr)], [n])


SCHEDULES = {"cosine": cosine_schedule, "constant": constant_schedule}


def make_schedule(name: str, lr: float, total_steps: int, warmup_ratio: float) -> optax.Schedule:
    if name not in SCHEDULES:
        raise ValueError(f"config key train.schedule must be one of {sorted(SCHEDULES)}, got {name!r}")
    return SCHEDULES[name](lr, total_steps, warmup_ratio)


def make_optimizer(lr: float, weight_decay: float, warmup_ratio: float, total_steps: int,
                   clip_norm: float | None, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   schedule: str = "cosine") -> optax.GradientTransformation:
    """AdamW (decoupled weight decay on every leaf it is given: the trainers give it the trained
    parameters only) after global-norm clipping, with the named schedule above."""
    tx = optax.adamw(make_schedule(schedule, lr, total_steps, warmup_ratio), b1=b1, b2=b2, eps=eps,
                     weight_decay=weight_decay)
    if clip_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(clip_norm), tx)
    return tx
