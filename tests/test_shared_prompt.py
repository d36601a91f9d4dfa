"""GRPO with shared prompts (grpo.shared_prompt): a group's rows hold its prompt once and several of
its responses, each response seeing the prompt and itself only. The reference is the layout with a
copy of the prompt per rollout: per-token log-probs, entropy, the loss, its metrics and the updated
weights must be the same, with images, under micro-batching, remat and chunked attention, with LoRA
and with every weight trained (the vision tower included), on 1 device and on 8."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import grpo as grpo_config
from progress_jax import loading, lora, sampling, sharding
from progress_jax.models import families, qwen2_5_vl
from progress_jax.train import loop, programs, rollouts, schedule
from tests.test_sft import CFG, host_batch, lora_model

N, NEW = 4, 8  # rollouts per prompt, max new tokens
FAMILY = families.get("qwen2_5_vl")


def _prompts():
    """Two prompts with images (two, then one; 8 x 8 patches each), as the sampler's real rows."""
    host = host_batch([(10, 2), (14, 1)], seed=3, L=64, P=256)
    host["records"] = [{}, {}]
    return host


def _generation(seed=0):
    """N responses per prompt of 1 to NEW tokens (one of each group the longest possible)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, NEW + 1, 2 * N)
    lengths[::N] = NEW
    tokens = rng.integers(10, CFG.text.vocab_size, (2 * N, NEW)).astype(np.int32)
    return sampling.Generation(tokens, np.zeros(tokens.shape, np.float32), lengths, np.ones(2 * N, bool))


def _micro_batches(mesh, micro_batch_size, shared):
    rows, per_row = rollouts.layout(micro_batch_size, N, sharding.batch_shards(mesh), shared)
    packing = rollouts.Packing(rows, per_row, rollouts.length_buckets((64,), per_row * NEW), (256, 512, 1024),
                               FAMILY, CFG, mesh)
    adv = np.linspace(-1.5, 2.0, 2 * N).astype(np.float32)
    seqs = rollouts.rollout_sequences(_prompts(), _generation(), FAMILY, CFG, N, adv, per_row)
    return packing.micro_batches(seqs, CFG.pad_token_id), per_row


def _response_values(values, batch):
    """The values at response tokens, in rollout order (both layouts keep it)."""
    mask = np.asarray(batch["loss_mask"])[:, :, 1:] > 0
    return np.asarray(values)[mask]


def _full_model():
    return qwen2_5_vl.init(CFG, seed=2)


def _run(model, mesh, micro_batch_size, shared, rank, remat="none", chunk=0, loss_chunk=0):
    """(per-token response log-probs, the update's metrics, updated params, rollouts per row, the
    micro-batches) of one layout."""
    cfg = grpo_config.get_config()
    cfg.grpo.kl_coef = 0.05
    loading.set_attention_chunk(model, chunk)
    parts, params = loop.split(model, lora.trainable_filter(rank, freeze_vision=False))
    tx = schedule.make_optimizer(1e-2, 0.0, 0.0, 10, 1.0, eps=1e-4)
    batch, per_row = _micro_batches(mesh, micro_batch_size, shared)
    logp = jax.jit(programs.make_logp_fn(parts, 0.8, mesh, remat, loss_chunk=loss_chunk))(params, parts.frozen, batch)
    # Old log-probs away from the current ones (clipping, dual clip), the reference a shifted copy
    # (KL): both a function of the response token alone, so the same in both layouts.
    shift = 1.5 * jnp.sin(batch["input_ids"][:, :, 1:].astype(jnp.float32))
    batch["old_logp"] = logp + shift
    batch["ref_logp"] = logp - 0.5 * shift
    update = jax.jit(programs.make_update(parts, tx, cfg.grpo, 0.8, mesh, remat, loss_chunk))
    state, m = update(loop.init_state(params, tx, 0), parts.frozen, batch)
    return _response_values(logp, batch), jax.device_get(m), jax.device_get(state["params"]), per_row, batch


def _assert_same(reference, other):
    (logp_a, m_a, p_a), (logp_b, m_b, p_b) = reference[:3], other[:3]
    assert logp_a.shape == logp_b.shape and logp_a.size == int(_generation().lengths.sum())
    np.testing.assert_allclose(logp_b, logp_a, rtol=2e-5, atol=2e-5)
    assert m_a["clip_frac"] > 0 and m_a["dual_clip_frac"] > 0 and m_a["kl"] > 0
    for key in ("loss", "pg_loss", "kl", "clip_frac", "dual_clip_frac", "entropy", "grad_norm", "response_tokens"):
        np.testing.assert_allclose(m_b[key], m_a[key], rtol=2e-5, atol=1e-6, err_msg=key)
    # Adam's first step is lr * g / (|g| + eps): where |g| is near eps (1e-4), the summation order of
    # the two layouts' micro-batches moves an update by a few 1e-6 (seen: 3.2e-6 in one embedding
    # element of 262144). atol 1e-5 is a thousandth of the step (lr 1e-2), far below a wrong gradient.
    for name in p_a:
        np.testing.assert_allclose(p_b[name], p_a[name], rtol=2e-5, atol=1e-5, err_msg=name)


def _one_device():
    return sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])


def test_lora_on_one_device_and_on_eight():
    """8 rollouts per micro-batch: 8 rows with a copy of the prompt each, or 2 rows of a prompt
    and its 4 responses; on 8 devices (4 batch shards), 16 per micro-batch: 4 rows, the 2 groups
    and 2 empty rows."""
    assert len(jax.devices()) == 8
    model = lora_model(seed=1)
    repeated = _run(model, _one_device(), 8, False, 8)
    shared = _run(model, _one_device(), 8, True, 8)
    assert (repeated[3], shared[3]) == (1, N)
    assert repeated[4]["input_ids"].shape[:2] == (1, 8) and shared[4]["input_ids"].shape[:2] == (1, 2)
    _assert_same(repeated, shared)
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    eight = _run(model, mesh, 16, True, 8)
    assert eight[4]["input_ids"].shape[:2] == (1, 4)
    _assert_same(repeated, eight)


def test_every_weight_trained_with_split_groups_remat_and_chunks():
    """Every weight trained (the vision tower too), against 2 rollouts per micro-batch: each group
    split over two rows (the prompt computed once per row), 4 micro-batches, with remat, attention
    in query blocks and log-probs in position blocks."""
    model = qwen2_5_vl.init(CFG, seed=2)
    repeated = _run(model, _one_device(), 8, False, 0)
    shared = _run(model, _one_device(), 2, True, 0, remat="full", chunk=16, loss_chunk=16)
    assert shared[3] == 2 and shared[4]["input_ids"].shape[:2] == (4, 1)
    assert any("visual" in name for name in repeated[2])
    _assert_same(repeated, shared)
