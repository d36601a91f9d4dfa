"""GRPO advantages, clipped policy loss and low-variance KL as in EasyR1 / verl (see docs/recipes.md).

Averages are token-means over the response tokens of the GLOBAL batch: every function that
reduces over tokens takes `num_tokens`, the global count, and returns this micro-batch's
contribution sum / num_tokens, so that summing the contributions (and their gradients) of
all micro-batches gives exactly the one-batch mean.
"""
from __future__ import annotations

import jax.numpy as jnp

LOG_RATIO_CLAMP = 20.0
KL_CLAMP = 10.0


def _groups(rewards, group_size: int):
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim != 1 or group_size < 1 or rewards.shape[0] % group_size:
        raise ValueError(f"rewards of shape {rewards.shape} do not split into groups of {group_size}")
    groups = rewards.reshape(-1, group_size)
    return groups, groups - groups.mean(axis=1, keepdims=True)


def grpo_advantages(rewards, group_size: int, eps: float = 1e-6):
    """(r - group mean) / (unbiased group std + eps); 0 for groups of one."""
    groups, centered = _groups(rewards, group_size)
    if group_size == 1:
        return jnp.zeros_like(centered).reshape(-1)
    return (centered / (groups.std(axis=1, ddof=1, keepdims=True) + eps)).reshape(-1)


def drgrpo_advantages(rewards, group_size: int, eps: float = 1e-6):
    """Dr. GRPO: r - group mean (no division by the std); 0 for groups of one."""
    _, centered = _groups(rewards, group_size)
    return (centered if group_size > 1 else jnp.zeros_like(centered)).reshape(-1)


# Advantage estimators by name (config key grpo.advantage): fn(rewards [N], group_size) -> [N],
# the n rollouts of a prompt contiguous.
ADVANTAGES = {"grpo": grpo_advantages, "drgrpo": drgrpo_advantages}


def group_advantages(rewards, group_size: int, kind: str = "grpo", eps: float = 1e-6):
    """Per-rollout advantages [N] from rewards [N] by the estimator ADVANTAGES[kind]."""
    if kind not in ADVANTAGES:
        raise ValueError(f"advantage kind must be one of {sorted(ADVANTAGES)}, got {kind!r}")
    return ADVANTAGES[kind](rewards, group_size, eps)


def count_tokens(mask):
    """Number of response tokens in `mask`: sum this over the global batch for `num_tokens`."""
    return jnp.sum(jnp.asarray(mask, jnp.float32))


def token_mean(values, mask, num_tokens):
    """This micro-batch's share of the global token-mean: sum(values * mask) / num_tokens."""
    return jnp.sum(values * mask) / num_tokens


def policy_loss(logp, old_logp, advantages, mask, clip_low: float = 0.2, clip_high: float = 0.3,
                dual_clip: float = 3.0):
    """Per-token clipped surrogate with dual clip; logp, old_logp, mask [B, T], advantages [B]
    (one per sequence) or [B, T]. Returns (loss [B, T] with masked tokens zeroed,
    {"clipped", "dual_clipped"} per-token 0/1 indicators on masked tokens, for clip fractions)."""
    mask = jnp.asarray(mask, jnp.float32)
    adv = advantages[:, None] if advantages.ndim == 1 else advantages
    ratio = jnp.exp(jnp.clip(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = jnp.maximum(unclipped, clipped)
    dual = -adv * dual_clip
    use_dual = (adv < 0) & (dual < loss)
    loss = jnp.where(adv < 0, jnp.minimum(loss, dual), loss)
    stats = {"clipped": (clipped > unclipped).astype(jnp.float32) * mask,
             "dual_clipped": use_dual.astype(jnp.float32) * mask}
    return loss * mask, stats


def low_var_kl(logp, ref_logp):
    """k3 estimator of KL(pi || ref) per token: exp(x) - x - 1 with x = ref_logp - logp,
    x clamped to [-20, 20] and the result to [-10, 10]."""
    x = jnp.clip(ref_logp - logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return jnp.clip(jnp.exp(x) - x - 1.0, -KL_CLAMP, KL_CLAMP)


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, num_tokens, kl_coef: float = 1e-2,
              clip_low: float = 0.2, clip_high: float = 0.3, dual_clip: float = 3.0):
    """This micro-batch's contribution to pg + kl_coef * kl, both token-means over the global
    batch's `num_tokens` response tokens. `ref_logp` None (or kl_coef 0) leaves out the KL term.
    Returns (loss, metrics); metrics are contributions too, so they also sum to global means."""
    mask = jnp.asarray(mask, jnp.float32)
    pg, stats = policy_loss(logp, old_logp, advantages, mask, clip_low, clip_high, dual_clip)
    pg_loss = jnp.sum(pg) / num_tokens
    metrics = {"pg_loss": pg_loss,
               "clip_frac": token_mean(stats["clipped"], mask, num_tokens),
               "dual_clip_frac": token_mean(stats["dual_clipped"], mask, num_tokens)}
    loss = pg_loss
    if ref_logp is not None and kl_coef != 0:
        kl = token_mean(low_var_kl(logp, ref_logp), mask, num_tokens)
        metrics["kl"] = kl
        loss = loss + kl_coef * kl
    metrics["loss"] = loss
    return loss, metrics
