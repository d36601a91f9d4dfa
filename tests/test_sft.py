"""SFT loss and train step: the loss against torch cross-entropy on transformers' logits, exact
gradient accumulation, the sharded step against the single-device step, remat and chunking."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from progress_jax import lora, sharding
from progress_jax.models import qwen2_5_vl
from progress_jax.models.qwen2_5_vl import family as qwen
from progress_jax.train import loop, programs, schedule
from tests import hf_reference as ref

_T = qwen2_5_vl.tiny()  # two decoder layers and two vision blocks keep compile times short
CFG = dataclasses.replace(_T, text=dataclasses.replace(_T.text, num_hidden_layers=2),
                          vision=dataclasses.replace(_T.vision, depth=2, fullatt_block_indexes=(1,)))


def host_batch(rows, seed=0, cfg=CFG, L=64, P=256):
    """A pipeline-style host batch: per row `rows[i]` = (text tokens, images of grid (1, 8, 8))."""
    rng = np.random.default_rng(seed)
    ids = np.full((len(rows), L), cfg.pad_token_id, np.int32)
    att, loss = np.zeros_like(ids), np.zeros_like(ids)
    grids = []
    for b, (n_text, n_img) in enumerate(rows):
        seq = list(rng.integers(10, cfg.text.vocab_size, 4))
        for _ in range(n_img):
            seq += [cfg.vision_start_token_id] + [cfg.image_token_id] * 16 + [cfg.vision_end_token_id]
            grids.append((1, 8, 8))
        seq += list(rng.integers(10, cfg.text.vocab_size, n_text))
        ids[b, :len(seq)], att[b, :len(seq)] = seq, 1
        loss[b, len(seq) - n_text // 2:len(seq)] = 1  # the second half of the trailing text is the target
    pv = np.zeros((P, 1176), np.float32)
    pv[:64 * len(grids)] = rng.standard_normal((64 * len(grids), 1176)).astype(np.float32)
    grid = np.zeros((4, 3), np.int32)
    if grids:
        grid[:len(grids)] = grids
    return {"input_ids": ids, "attention_mask": att, "loss_mask": loss, "pixel_values": pv, "image_grid_thw": grid}


def lora_model(seed=0, rank=8, randomize_b=True):
    model = qwen2_5_vl.init(CFG, seed=seed)
    lora.inject(model, rank, 16.0, 0.05, seed=seed)
    if randomize_b:  # B = 0 at init would hide LoRA from every comparison
        for i, (_, lin) in enumerate(lora._linears(model)):
            if lin.lora_b is not None:
                lin.lora_b.set_value(0.05 * jax.random.normal(jax.random.key(100 + i), lin.lora_b.shape))
    return model


ROWS = [(20, 1), (12, 2), (30, 0), (16, 1)]


def test_loss_equals_torch_cross_entropy_on_transformers_logits(tmp_path):
    hf = ref.hf_model(tied=True)
    hf.save_pretrained(tmp_path)
    model = qwen2_5_vl.from_pretrained(str(tmp_path))
    ids, mask, pv, grid = ref.batch()
    loss_mask = np.zeros_like(mask)
    loss_mask[0, 20:30] = loss_mask[1, 8:18] = 1
    host = {"input_ids": ids, "attention_mask": mask, "loss_mask": loss_mask, "pixel_values": pv,
            "image_grid_thw": grid}
    batch = jax.tree.map(jnp.asarray, qwen.stack_micro([host], model.config))
    parts, params = loop.split(model, lora.trainable_filter(0))
    loss, _, n = jax.jit(lambda p: programs.loss_and_grads(parts, p, parts.frozen, batch))(params)

    logits = torch.tensor(ref.hf_logits(hf, ids, mask, pv, grid))
    w = torch.tensor(loss_mask[:, 1:], dtype=torch.bool)
    expected = torch.nn.functional.cross_entropy(logits[:, :-1][w], torch.tensor(ids[:, 1:])[w])
    assert int(n) == int(w.sum())
    assert abs(float(loss) - float(expected)) <= 1e-5


def test_accumulation_equals_one_big_batch():
    model = lora_model()
    parts, params = loop.split(model, lora.trainable_filter(8))
    big = host_batch(ROWS, P=256)
    # The same rows as two micro-batches of two, each with its own images (and its own shapes).
    a = host_batch(ROWS[:2], P=256)
    b = host_batch(ROWS[2:], P=128)
    for key in ("input_ids", "attention_mask", "loss_mask"):
        a[key], b[key] = big[key][:2], big[key][2:, :48]
    b["pixel_values"][:64] = big["pixel_values"][192:256]
    a["pixel_values"][:192] = big["pixel_values"][:192]
    b["image_grid_thw"][:] = 0
    b["image_grid_thw"][0] = (1, 8, 8)
    a["image_grid_thw"][:] = 0
    a["image_grid_thw"][:3] = (1, 8, 8)
    one = jax.tree.map(jnp.asarray, qwen.stack_micro([big], CFG))
    two = jax.tree.map(jnp.asarray, qwen.stack_micro([a, b], CFG))
    assert two["input_ids"].shape[0] == 2
    f = jax.jit(lambda p, b: programs.loss_and_grads(parts, p, parts.frozen, b))
    l1, g1, n1 = f(params, one)
    l2, g2, n2 = f(params, two)
    assert float(n1) == float(n2) == sum(t // 2 for t, _ in ROWS)
    assert abs(float(l1) - float(l2)) <= 1e-6 * abs(float(l1))
    for k in g1:
        np.testing.assert_allclose(g2[k], g1[k], rtol=1e-5, atol=1e-7)
    assert max(float(jnp.abs(g).max()) for g in g1.values()) > 1e-4


def test_chunked_loss_and_remat_change_nothing():
    model = lora_model()
    parts, params = loop.split(model, lora.trainable_filter(8))
    batch = jax.tree.map(jnp.asarray, qwen.stack_micro([host_batch(ROWS)], CFG))
    l0, g0, _ = jax.jit(lambda p: programs.loss_and_grads(parts, p, parts.frozen, batch))(params)
    for remat, chunk in (("full", 24), ("dots", 0)):
        l1, g1, _ = jax.jit(lambda p: programs.loss_and_grads(parts, p, parts.frozen, batch, remat=remat,
                                                         loss_chunk=chunk))(params)
        assert abs(float(l1) - float(l0)) <= 1e-5
        for k in g0:
            np.testing.assert_allclose(g1[k], g0[k], rtol=1e-4, atol=1e-7)


def test_dropout_changes_the_loss_only_with_a_key():
    model = lora_model()
    parts, params = loop.split(model, lora.trainable_filter(8))
    batch = jax.tree.map(jnp.asarray, qwen.stack_micro([host_batch(ROWS)], CFG))
    f = jax.jit(lambda p, rng: programs.loss_and_grads(parts, p, parts.frozen, batch, rng=rng)[0])
    l0 = jax.jit(lambda p: programs.loss_and_grads(parts, p, parts.frozen, batch)[0])(params)
    l1, l2 = f(params, jax.random.PRNGKey(1)), f(params, jax.random.PRNGKey(1))
    assert float(l1) == float(l2) and abs(float(l1) - float(l0)) > 1e-6


def _one_step(mesh, model):
    parts, params = loop.split(model, lora.trainable_filter(8))
    # eps 1e-4: Adam's first step is lr * g / (|g| + eps), which for eps 1e-8 turns float32 rounding
    # of near-zero gradients into lr-sized differences.
    tx = schedule.make_optimizer(1e-3, 0.01, 0.0, 10, 1.0, eps=1e-4)
    state = loop.init_state(params, tx, seed=0)
    state_sh = loop.state_shardings(jax.eval_shape(lambda: state), mesh, model.partition_rules)
    state = jax.device_put(state, state_sh)
    frozen_sh = sharding.param_shardings(parts.frozen, mesh, model.partition_rules)
    frozen = jax.device_put(parts.frozen, frozen_sh)
    batch = qwen.stack_micro([host_batch(ROWS)], CFG)
    batch_sh = loop.batch_shardings(batch, mesh, qwen)
    step = loop.jit_step(programs.make_step(parts, tx, mesh, dropout=True), mesh, state_sh, frozen_sh, batch_sh)
    new, metrics = step(state, frozen, loop.to_device(batch, batch_sh, qwen))
    return new, metrics


def test_sharded_step_equals_single_device_step():
    assert len(jax.devices()) == 8
    single, m1 = _one_step(sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]), lora_model())
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    sharded, m8 = _one_step(mesh, lora_model())
    q = sharded["params"]["layers/self_attn/q_proj/lora_b"]  # stacked [layers, r, out]
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, None, "tensor")
    assert abs(float(m1["loss"]) - float(m8["loss"])) <= 1e-5
    assert abs(float(m1["grad_norm"]) - float(m8["grad_norm"])) <= 1e-5 * float(m1["grad_norm"])
    for k, v in single["params"].items():
        np.testing.assert_allclose(np.asarray(sharded["params"][k]), np.asarray(v), atol=1e-5)
    assert int(sharded["step"]) == 1


def test_config_errors_name_the_key(tmp_path):
    from configs.sft import get_config
    from progress_jax import config_check, data_files

    for key, value, pattern in (("train.lr", -1.0, "train.lr must be > 0"),
                                ("model.remat", "some", "model.remat must be one of"),
                                ("lora.dropout", 1.0, "lora.dropout must be < 1")):
        c = get_config()
        section, name = key.split(".")
        c[section][name] = value
        with pytest.raises(config_check.ConfigError, match=pattern):
            config_check.check(c)
    c = get_config()
    c.train.batch_size, c.train.micro_batch_size = 6, 4
    with pytest.raises(config_check.ConfigError, match="train.batch_size"):
        config_check.check(c)
    with pytest.raises(FileNotFoundError, match="train.init_params"):
        data_files.check_init_params(str(tmp_path / "nothing"), "train.init_params")
    c.lock()  # as main.py's config flag does: an unknown key is refused by name
    with pytest.raises(AttributeError, match="no_such_key"):
        c.train.no_such_key = 1
