"""GRPO trainer: the update is exact under micro-batching and on a mesh, and the mean reward rises
on a toy task."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import grpo as grpo_config
from data_pipeline.tokenizer import load_tokenizer
from progress_jax import lora, sharding
from progress_jax.models import qwen2_5_vl
from progress_jax.models.qwen2_5_vl import family as qwen
from progress_jax import jobs
from progress_jax.train import grpo, loop, programs, schedule
from tests.test_sft import CFG, host_batch, lora_model


def _config(**train):
    c = grpo_config.get_config()
    c.grpo.n, c.grpo.rollout_batch_size, c.grpo.kl_coef = 4, 4, 0.05
    c.lora.rank = 8
    c.train.update(dict(lr=1e-2, batch_size=4, micro_batch_size=8, steps=6, epochs=1.0, **train))
    c.sampling.max_new_tokens, c.sampling.temperature, c.sampling.top_p = 8, 1.0, 1.0
    c.data.length_buckets, c.data.patch_buckets = (64,), (256,)
    return c


def _update_inputs(model, k, seed=0):
    """Four rollout rows split into k micro-batches, with perturbed old log-probs and random
    advantages so that clipping, dual clipping and the KL term are all exercised."""
    rows = [(20, 1), (12, 2), (30, 0), (16, 1)]
    host = host_batch(rows, seed=seed, L=72, P=256)
    per = len(rows) // k
    chunks = []
    for i in range(k):
        sl = slice(i * per, (i + 1) * per)
        grid_rows = [r[1] for r in rows]
        i0, i1 = sum(grid_rows[: sl.start]), sum(grid_rows[: sl.stop])
        chunks.append({"input_ids": host["input_ids"][sl], "attention_mask": host["attention_mask"][sl],
                       "loss_mask": host["loss_mask"][sl], "pixel_values": host["pixel_values"][64 * i0:64 * i1 + 64],
                       "image_grid_thw": np.array([(1, 8, 8)] * (i1 - i0) + [(0, 0, 0)], np.int32)})
    batch = jax.tree.map(jnp.asarray, qwen.stack_micro(chunks, model.config))
    batch["advantages"] = jnp.asarray(np.array([1.0, -1.0, 0.5, -2.0], np.float32).reshape(k, per))
    return batch


def test_update_is_exact_under_micro_batching():
    cfg = _config()
    model = lora_model(seed=1)
    parts, params = loop.split(model, lora.trainable_filter(8))
    # eps 1e-4: Adam's first step is lr * g / (|g| + eps), which for eps 1e-8 turns float32 rounding
    # of near-zero gradients into lr-sized differences.
    tx = schedule.make_optimizer(1e-2, 0.0, 0.0, 10, 1.0, eps=1e-4)
    logp_fn = jax.jit(programs.make_logp_fn(parts, 1.0))
    ref_fn = jax.jit(programs.make_logp_fn(parts, 1.0, off=True))
    update = jax.jit(programs.make_update(parts, tx, cfg.grpo, 1.0))
    results = []
    for k in (1, 2):
        batch = _update_inputs(model, k)
        logp = logp_fn(params, parts.frozen, batch)
        noise = jax.random.normal(jax.random.key(3), (4, logp.shape[-1])).reshape(logp.shape)
        batch["old_logp"] = logp + 1.5 * noise  # ratios away from 1: clipping and dual clip happen
        batch["ref_logp"] = ref_fn(params, parts.frozen, batch)
        state = loop.init_state(params, tx, 0)
        new_state, m = update(state, parts.frozen, batch)
        results.append((new_state["params"], jax.device_get(m)))
    (p1, m1), (p2, m2) = results
    assert m1["clip_frac"] > 0 and m1["dual_clip_frac"] > 0 and m1["kl"] > 0
    for key in ("loss", "pg_loss", "kl", "clip_frac", "entropy", "grad_norm", "response_tokens"):
        np.testing.assert_allclose(m1[key], m2[key], rtol=1e-5, atol=1e-6)
    moved = 0
    for name in p1:
        np.testing.assert_allclose(p1[name], p2[name], rtol=1e-5, atol=1e-6)
        moved += int(not np.array_equal(np.asarray(p1[name]), np.asarray(params[name])))
    assert moved > 0


def test_log_probs_and_update_in_position_blocks_equal_the_whole():
    """train.loss_chunk: log-probs, entropy and the update computed 7 positions at a time (72 - 1 =
    71 positions: the last block padded) equal the whole-sequence computation."""
    cfg = _config()
    model = lora_model(seed=1)
    parts, params = loop.split(model, lora.trainable_filter(8))
    batch = _update_inputs(model, 1)
    mb = jax.tree.map(lambda a: a[0], batch)
    whole = programs.token_logps(parts.model(params, parts.frozen), mb, 0.7)
    blocks = programs.token_logps(parts.model(params, parts.frozen), mb, 0.7, loss_chunk=7)
    for a, b in zip(whole, blocks):
        assert a.shape == b.shape == (4, 71)
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    logp = jax.jit(programs.make_logp_fn(parts, 1.0))(params, parts.frozen, batch)
    batch["old_logp"] = logp + 0.5 * jax.random.normal(jax.random.key(3), logp.shape)
    tx = schedule.make_optimizer(1e-2, 0.0, 0.0, 10, 1.0, eps=1e-4)
    out = []
    for chunk in (0, 7):
        update = jax.jit(programs.make_update(parts, tx, _no_kl(cfg.grpo), 1.0, loss_chunk=chunk))
        new_state, m = update(loop.init_state(params, tx, 0), parts.frozen, batch)
        out.append((new_state["params"], jax.device_get(m)))
    (p0, m0), (p1, m1) = out
    for key in ("loss", "pg_loss", "entropy", "grad_norm"):
        np.testing.assert_allclose(m1[key], m0[key], rtol=1e-5, atol=1e-6)
    # Adam normalises each gradient: where one is near zero, its rounding (the summation order
    # differs between the two programs, and with the thread count) shows in its parameter at ~1e-6.
    for name in p0:
        np.testing.assert_allclose(p1[name], p0[name], rtol=1e-5, atol=5e-6)


def _no_kl(g):
    g = g.copy_and_resolve_references()
    g.kl_coef = 0.0
    return g


def test_sharded_update_equals_one_device():
    """The job's jitted update (explicit shardings, rows split over a 4-device fsdp mesh) gives the
    one-device update's loss, metrics and new parameters."""
    cfg = _config()
    model = lora_model(seed=1)
    parts, params = loop.split(model, lora.trainable_filter(8))
    tx = optax.sgd(1.0)  # new params = params - gradient: compares the gradients themselves
    batch = _update_inputs(model, 1)
    logp = jax.jit(programs.make_logp_fn(parts, 1.0))(params, parts.frozen, batch)
    batch["old_logp"] = logp + 1.5 * jax.random.normal(jax.random.key(3), logp.shape)
    batch["ref_logp"] = jax.jit(programs.make_logp_fn(parts, 1.0, off=True))(params, parts.frozen, batch)
    state = loop.init_state(params, tx, 0)
    p1, m1 = jax.jit(programs.make_update(parts, tx, cfg.grpo, 1.0))(state, parts.frozen, batch)

    mesh = sharding.make_mesh(1, 4, 1, devices=jax.devices()[:4])
    host = jax.device_get(batch)
    state_sh = loop.state_shardings(jax.eval_shape(lambda: state), mesh, model.partition_rules)
    frozen_sh = sharding.param_shardings(parts.frozen, mesh, model.partition_rules)
    batch_sh = loop.batch_shardings(host, mesh, qwen)
    update = loop.jit_step(programs.make_update(parts, tx, cfg.grpo, 1.0, mesh), mesh, state_sh, frozen_sh, batch_sh)
    p2, m2 = update(jax.device_put(loop.init_state(params, tx, 0), state_sh), jax.device_put(parts.frozen, frozen_sh),
                    loop.to_device(host, batch_sh, qwen))
    assert p2["params"][next(iter(p2["params"]))].sharding.mesh.devices.size == 4
    m1, m2 = jax.device_get(m1), jax.device_get(m2)
    assert m1["grad_norm"] > 0 and m1["clip_frac"] > 0
    for key in ("loss", "pg_loss", "kl", "clip_frac", "entropy", "grad_norm", "response_tokens"):
        np.testing.assert_allclose(m1[key], m2[key], rtol=1e-5, atol=1e-6)
    for name in p1["params"]:
        np.testing.assert_allclose(p1["params"][name], p2["params"][name], rtol=1e-5, atol=1e-6)


def test_lora_off_reference_is_the_base_model():
    model = lora_model(seed=2)
    parts, params = loop.split(model, lora.trainable_filter(8))
    batch = _update_inputs(model, 1)
    ref = jax.jit(programs.make_logp_fn(parts, 1.0, off=True))(params, parts.frozen, batch)
    base = qwen2_5_vl.init(CFG, seed=2)  # the same base weights, no LoRA at all
    bparts, bparams = loop.split(base, lora.trainable_filter(0))
    expected = jax.jit(programs.make_logp_fn(bparts, 1.0))(bparams, bparts.frozen, batch)
    np.testing.assert_allclose(ref, expected, atol=1e-5)


def test_mean_reward_rises_on_toy_task():
    """Reward = share of generated tokens from the lower half of a 64-token vocabulary (about 0.5
    for the random policy): a few GRPO steps must raise it clearly, in the steps' own rewards and
    in the fixed-key probe."""
    cfg = _config()
    cfg.lora.rank = 0
    small = dataclasses.replace(CFG, text=dataclasses.replace(CFG.text, vocab_size=64))
    model = qwen2_5_vl.init(small, seed=0)
    tokenizer = load_tokenizer(None)
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    half = small.text.vocab_size // 2

    def reward_fn(gen, records):
        out = []
        for row, n in zip(gen.tokens, gen.lengths):
            r = float(np.mean(row[:n] < half))
            out.append({"overall": r, "low_half": r})
        return out

    step = grpo.Step(jobs.grpo_spec(cfg, mesh, model=model), tokenizer, reward_fn=reward_fn)
    state = step.spec.setup.state  # the loop's state: the step takes it and returns the next
    prompts = host_batch([(20, 1), (12, 2), (30, 0), (16, 1)], seed=5, cfg=small, L=64, P=256)
    prompts["records"] = ["p0", "p1", "p2", "p3"]
    probe_keys = list(jax.random.split(jax.random.key(99), 2))
    before = step.probe(state["params"], [prompts], probe_keys)
    assert step.probe(state["params"], [prompts], probe_keys) == before  # same policy, same keys: the same probe
    # Two keys: each key's own mean, and the probe their mean (each key samples the same rollouts' count).
    keys_means = [before["probe/overall_key0"], before["probe/overall_key1"]]
    assert keys_means[0] != keys_means[1]
    assert before["probe/overall"] == pytest.approx(np.mean(keys_means))
    assert step.probe(state["params"], [prompts], probe_keys[1:])["probe/overall"] == pytest.approx(keys_means[1])
    rewards = []
    for s in range(6):
        state, metrics = step(state, prompts, jax.random.key(s))
        rewards.append(metrics["reward/overall"])
    assert int(state["step"]) == 6  # one update per step (rollout_batch_size = batch_size)
    assert np.mean(rewards[-2:]) > np.mean(rewards[:2]) + 0.15, rewards
    after = step.probe(state["params"], [prompts], probe_keys)
    assert after["probe/low_half"] > before["probe/low_half"] + 0.15, (before, after)


def test_remat_reaches_the_vision_blocks_in_both_trainers():
    """model.remat applies to the scanned vision blocks as well as the decoder layers in GRPO's
    log-probs and SFT's loss (a trained vision tower, GRPO's recipe, kept every block's
    activations without it: 341 GiB per device in the 3B dry run)."""
    import re

    model = lora_model(seed=1)
    parts, params = loop.split(model, lora.trainable_filter(8))
    mb = jax.tree.map(lambda a: a[0], _update_inputs(model, 1))
    fns = {"grpo": lambda p, r: programs.token_logps(parts.model(p, parts.frozen), mb, 1.0, remat=r)[0],
           "sft": lambda p, r: programs.nll_sum(parts.model(p, parts.frozen), mb, remat=r)}
    for name, fn in fns.items():
        for remat, scans in (("none", 0), ("full", 2)):  # the decoder scan and the vision scan
            text = str(jax.make_jaxpr(lambda p: fn(p, remat))(params))
            assert len(re.findall(r"= (?:remat2|checkpoint)\[", text)) == scans, (name, remat)


def test_reward_report_names_the_probe_noise():
    """The demo's report: the probe's curve of its mean over keys, and its noise as the spread of the
    keys' means at one step, beside how far the probe moved."""
    from progress_jax.demo import reward_report

    history = {0: {"probe/overall": 0.5, "probe/overall_key0": 0.48, "probe/overall_key1": 0.52},
               1: {"reward/overall": 0.4}, 2: {"reward/overall": 0.6},
               4: {"probe/overall": 0.6, "probe/overall_key0": 0.59, "probe/overall_key1": 0.61}}
    report = reward_report(history, 16, 4, 2)
    assert "mean reward per step (its own prompts): 0.400 0.600" in report
    assert "16 fixed prompts x 4 rollouts, 2 fixed keys" in report
    assert "step    4: overall 0.600\n" in report  # the keys' own means are not in the curve
    assert "differ by 0.030 at a step on average (at most 0.040); the probe moved +0.100 from step 0 to step 4" in report
    assert "noise" not in reward_report({0: {"probe/overall": 0.5}}, 16, 4, 1)
