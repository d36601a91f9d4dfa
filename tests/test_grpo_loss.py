"""GRPO loss pieces against a plain float64 NumPy reference written from the EasyR1 / verl definitions (docs/recipes.md)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from progress_jax.train.grpo_loss import (count_tokens, group_advantages, grpo_loss, low_var_kl,
                                          policy_loss)


# ---- independent reference: loops, float64 ----------------------------------------------------

def ref_advantages(rewards, n, kind):
    out = []
    for g in range(0, len(rewards), n):
        group = [float(r) for r in rewards[g:g + n]]
        mean = sum(group) / n
        for r in group:
            if n == 1:
                out.append(0.0)
            elif kind == "drgrpo":
                out.append(r - mean)
            else:
                std = math.sqrt(sum((x - mean) ** 2 for x in group) / (n - 1))
                out.append((r - mean) / (std + 1e-6))
    return np.array(out)


def ref_token_losses(logp, old, ref, adv, cl=0.2, ch=0.3, c=3.0):
    b, t = logp.shape
    pg = np.zeros((b, t))
    kl = np.zeros((b, t))
    clipped = np.zeros((b, t))
    dual = np.zeros((b, t))
    for i in range(b):
        a = float(adv[i])
        for j in range(t):
            log_r = min(max(float(logp[i, j]) - float(old[i, j]), -20.0), 20.0)
            ratio = math.exp(log_r)
            l1 = -a * ratio
            l2 = -a * min(max(ratio, 1 - cl), 1 + ch)
            loss = max(l1, l2)
            clipped[i, j] = float(l2 > l1)
            if a < 0:
                dual[i, j] = float(-a * c < loss)
                loss = min(loss, -a * c)
            pg[i, j] = loss
            x = min(max(float(ref[i, j]) - float(logp[i, j]), -20.0), 20.0)
            kl[i, j] = min(max(math.exp(x) - x - 1, -10.0), 10.0)
    return pg, kl, clipped, dual


def ref_total(logp, old, ref, adv, mask, kl_coef):
    pg, kl, _, _ = ref_token_losses(logp, old, ref, adv)
    n = mask.sum()
    return (pg * mask).sum() / n + kl_coef * (kl * mask).sum() / n


def random_batch(seed, b=8, t=13, spread=0.5):
    rng = np.random.default_rng(seed)
    logp = -rng.uniform(0.05, 4.0, (b, t))
    old = logp + rng.normal(0, spread, (b, t))  # ratios well inside and outside the clip range
    ref = logp + rng.normal(0, spread * 2, (b, t))
    adv = rng.normal(0, 1.5, b)
    lengths = rng.integers(1, t + 1, b)
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float64)
    return logp, old, ref, adv, mask


f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731


# ---- tests ------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 4, 5])
@pytest.mark.parametrize("kind", ["grpo", "drgrpo"])
def test_group_advantages(n, kind):
    rng = np.random.default_rng(n)
    rewards = rng.normal(0, 1, 6 * n)
    rewards[:n] = 0.7  # a group with identical rewards -> 0 advantage
    got = np.asarray(group_advantages(f32(rewards), n, kind=kind))
    np.testing.assert_allclose(got, ref_advantages(rewards.astype(np.float32), n, kind), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[:n], 0.0)


def test_group_advantages_refuses_ragged_groups():
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(jnp.zeros(6), 4)
    with pytest.raises(ValueError, match="kind"):
        group_advantages(jnp.zeros(4), 2, kind="ppo")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_policy_loss_and_kl_per_token(seed):
    logp, old, ref, adv, mask = random_batch(seed, spread=1.0)
    pg_ref, kl_ref, clip_ref, dual_ref = ref_token_losses(logp, old, ref, adv)
    pg, stats = policy_loss(f32(logp), f32(old), f32(adv), f32(mask))
    np.testing.assert_allclose(np.asarray(pg), pg_ref * mask, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(stats["clipped"]), clip_ref * mask)
    np.testing.assert_allclose(np.asarray(low_var_kl(f32(logp), f32(ref))), kl_ref, rtol=1e-5, atol=1e-5)
    # The random data must exercise every branch, or this test proves little.
    ratio = np.exp(logp - old)
    assert ((ratio > 1.3) & (adv[:, None] > 0)).any() and ((ratio < 0.8) & (adv[:, None] < 0)).any()
    np.testing.assert_array_equal(np.asarray(stats["dual_clipped"]), dual_ref * mask)
    assert (dual_ref * mask).sum() > 0


def test_extreme_log_ratios_are_clamped():
    logp = f32([[0.0, -50.0, 0.0]])
    old = f32([[-50.0, 0.0, 0.0]])
    ref = f32([[-50.0, 0.0, -3.0]])
    pg_ref, kl_ref, _, _ = ref_token_losses(np.asarray(logp), np.asarray(old), np.asarray(ref), np.array([-2.0]))
    pg, _ = policy_loss(logp, old, f32([-2.0]), jnp.ones((1, 3)))
    np.testing.assert_allclose(np.asarray(pg), pg_ref, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(low_var_kl(logp, ref)), kl_ref, rtol=1e-5)
    assert np.asarray(low_var_kl(logp, ref))[0, 0] == 10.0  # exp(20) clamped to 10


def test_total_loss_and_gradient_match_reference():
    logp, old, ref, adv, mask = random_batch(5)
    kl_coef = 0.1
    loss_fn = lambda lp: grpo_loss(lp, f32(old), f32(ref), f32(adv), f32(mask),  # noqa: E731
                                   count_tokens(mask), kl_coef=kl_coef)[0]
    loss, grad = jax.value_and_grad(loss_fn)(f32(logp))
    np.testing.assert_allclose(float(loss), ref_total(logp, old, ref, adv, mask, kl_coef), rtol=1e-5)
    # Central differences of the float64 reference, token by token.
    h = 1e-6
    fd = np.zeros_like(logp)
    for idx in np.ndindex(*logp.shape):
        up, dn = logp.copy(), logp.copy()
        up[idx] += h
        dn[idx] -= h
        fd[idx] = (ref_total(up, old, ref, adv, mask, kl_coef) - ref_total(dn, old, ref, adv, mask, kl_coef)) / (2 * h)
    np.testing.assert_allclose(np.asarray(grad), fd, rtol=1e-3, atol=1e-6)


def test_micro_batches_sum_to_one_batch_values_and_grads():
    logp, old, ref, adv, mask = random_batch(7, b=12, t=9)
    args = [f32(x) for x in (old, ref, adv, mask)]
    num_tokens = count_tokens(mask)

    def loss(lp, old, ref, adv, mask):
        return grpo_loss(lp, old, ref, adv, mask, num_tokens, kl_coef=0.05)

    step = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (full, full_metrics), full_grad = step(f32(logp), *args)
    total, grads, metrics = 0.0, [], {k: 0.0 for k in full_metrics}
    for sl in (slice(0, 3), slice(3, 8), slice(8, 12)):  # unequal micro-batches
        (part, m), g = step(f32(logp[sl]), *(a[sl] for a in args))
        total += part
        grads.append(g)
        metrics = {k: metrics[k] + m[k] for k in metrics}
    np.testing.assert_allclose(float(total), float(full), rtol=1e-6)
    np.testing.assert_allclose(np.concatenate(grads), np.asarray(full_grad), rtol=1e-6, atol=1e-9)
    for k in full_metrics:
        np.testing.assert_allclose(float(metrics[k]), float(full_metrics[k]), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(float(full), ref_total(logp, old, ref, adv, mask, 0.05), rtol=1e-5)
    # Clip fraction over the global batch, from the reference.
    _, _, clip_ref, _ = ref_token_losses(logp, old, ref, adv)
    np.testing.assert_allclose(float(full_metrics["clip_frac"]), (clip_ref * mask).sum() / mask.sum(), rtol=1e-6)


def test_no_reference_means_no_kl_term():
    logp, old, ref, adv, mask = random_batch(9)
    loss, metrics = grpo_loss(f32(logp), f32(old), None, f32(adv), f32(mask), count_tokens(mask))
    assert "kl" not in metrics
    np.testing.assert_allclose(float(loss), ref_total(logp, old, ref, adv, mask, 0.0), rtol=1e-5)
