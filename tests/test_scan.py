"""Decoder layers and vision blocks stacked and run under scan: the compiled program does not grow
with depth, remat applies to the scanned bodies (decoder and vision tower) without changing the
gradients, and LoRA targets keep their per-layer meaning."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from progress_jax import export, lora
from progress_jax.models import qwen2_5_vl
from progress_jax.models.qwen2_5_vl import family as qwen
from progress_jax.train import loop, programs
from tests.test_sft import host_batch

ROWS = [(20, 1), (12, 2)]


def _config(layers: int, blocks: int):
    t = qwen2_5_vl.tiny()
    return dataclasses.replace(t, text=dataclasses.replace(t.text, num_hidden_layers=layers),
                               vision=dataclasses.replace(t.vision, depth=blocks, fullatt_block_indexes=(1, blocks - 1)))


def _train_step_hlo(layers: int, blocks: int) -> str:
    """StableHLO text of the LoRA loss-and-gradients program (images included), lowered only."""
    cfg = _config(layers, blocks)
    model = qwen2_5_vl.init(cfg)
    lora.inject(model, 4, 8.0)
    parts, params = loop.split(model, lora.trainable_filter(4))
    batch = jax.tree.map(jnp.asarray, qwen.stack_micro([host_batch(ROWS, cfg=cfg)], cfg))
    fn = jax.jit(lambda p, f, b: programs.loss_and_grads(parts, p, f, b, rng=jax.random.key(0), remat="full"))
    return fn.lower(params, parts.frozen, batch).as_text()  # weights and batch as arguments, not constants


def _ops(hlo: str) -> int:
    return sum(1 for line in hlo.splitlines() if " = " in line)


def test_program_size_does_not_grow_with_depth():
    small, deep = _train_step_hlo(2, 2), _train_step_hlo(6, 6)
    # A Python loop over layers would repeat every layer's (and block's) ops: 3x the layer part.
    assert abs(_ops(deep) - _ops(small)) <= 0.02 * _ops(small), (_ops(small), _ops(deep))
    assert abs(len(deep) - len(small)) <= 0.02 * len(small)
    assert "stablehlo.while" in deep  # the layers run as a loop


def _full_param_grads(remat: str):
    cfg = _config(2, 3)
    model = qwen2_5_vl.init(cfg, seed=1)
    parts, params = loop.split(model, lora.trainable_filter(0, freeze_vision=False))
    batch = jax.tree.map(jnp.asarray, qwen.stack_micro([host_batch(ROWS, cfg=cfg)], cfg))
    fn = jax.jit(lambda p: programs.loss_and_grads(parts, p, parts.frozen, batch, remat=remat)[:2])
    temp = fn.lower(params).compile().memory_analysis().temp_size_in_bytes
    loss, grads = fn(params)
    return float(loss), grads, temp


def test_remat_of_the_scanned_layers_keeps_the_gradients_and_saves_memory():
    l0, g0, temp0 = _full_param_grads("none")
    assert g0["visual/blocks/attn/qkv/kernel"].shape[0] == 3  # stacked vision blocks are trained too
    l1, g1, temp1 = _full_param_grads("full")  # dots: tests/test_sft.py (LoRA)
    assert abs(l1 - l0) <= 1e-5 * abs(l0)
    for k in g0:
        np.testing.assert_allclose(g1[k], g0[k], rtol=1e-4, atol=1e-6, err_msg=k)
    assert temp1 < temp0, (temp1, temp0)  # only each layer's input is kept for the backward pass
    assert float(jnp.abs(g0["visual/blocks/attn/qkv/kernel"]).max()) > 0


def test_lora_targets_read_per_layer():
    model = qwen2_5_vl.init(_config(3, 2))
    paths = lora.inject(model, 4, 8.0, targets=r"^layers/\d+/self_attn/q_proj$")
    assert paths == [f"layers/{i}/self_attn/q_proj" for i in range(3)]
    assert model.layers.self_attn.q_proj.lora_a.shape == (3, 128, 4)
    assert model.layers.self_attn.k_proj.lora_a is None and model.layers.self_attn.q_proj.lora_mask is None


def test_lora_targets_selecting_some_layers():
    """v_proj adapted in layers 0 and 2 of 3: the LoRA model equals the base model with
    scale * A_i @ B_i added (in NumPy) to v_proj's kernel of those two layers only."""
    cfg = _config(3, 2)
    model, base = qwen2_5_vl.init(cfg), qwen2_5_vl.init(cfg)
    paths = lora.inject(model, 4, 8.0, targets=r"^layers/(0|2)/self_attn/v_proj$")
    assert paths == ["layers/0/self_attn/v_proj", "layers/2/self_attn/v_proj"]
    v = model.layers.self_attn.v_proj
    v.lora_b.set_value(0.05 * jax.random.normal(jax.random.key(1), v.lora_b.shape))
    assert lora.param_count(model) == 2 * 4 * (128 + 64)
    kernel = np.array(base.layers.self_attn.v_proj.kernel[...])
    for i in (0, 2):
        kernel[i] += 2.0 * np.asarray(v.lora_a[...][i]) @ np.asarray(v.lora_b[...][i])
    base.layers.self_attn.v_proj.kernel.set_value(jnp.asarray(kernel))
    ids = host_batch([(20, 0), (12, 0)], cfg=cfg)["input_ids"]
    assert np.abs(np.asarray(model(ids)) - np.asarray(qwen2_5_vl.init(cfg)(ids))).max() > 1e-3
    np.testing.assert_allclose(np.asarray(model(ids)), np.asarray(base(ids)), atol=2e-5)
    # Layer 1's factors get no gradient; its lora_b stays zero-effect.
    parts, params = loop.split(model, lora.trainable_filter(4))
    batch = jax.tree.map(jnp.asarray, qwen.stack_micro([host_batch(ROWS, cfg=cfg)], cfg))
    _, grads, _ = programs.loss_and_grads(parts, params, parts.frozen, batch)
    g = np.asarray(grads["layers/self_attn/v_proj/lora_a"])
    assert not g[1].any() and g[0].any() and g[2].any()
    meta = {"lora": {"rank": 4, "alpha": 8.0, "targets": r"^layers/(0|2)/self_attn/v_proj$"}}
    _, tensors = export.peft_adapter(params, meta)  # PEFT keys of the selected layers only
    assert sorted(tensors) == [f"base_model.model.model.language_model.layers.{i}.self_attn.v_proj.lora_{ab}.weight"
                               for i in (0, 2) for ab in "AB"]
    merged = lora.merge(model)
    np.testing.assert_allclose(np.asarray(merged(ids)), np.asarray(base(ids)), atol=2e-5)


def test_layer_of_slices_16_bit_stacks_with_the_gradient_of_indexing():
    from progress_jax.models.qwen2_5_vl.layers import layer_of

    w = jnp.asarray(np.random.default_rng(0).standard_normal((3, 4, 5)), jnp.bfloat16)
    c = jnp.arange(20, dtype=jnp.bfloat16).reshape(4, 5)
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(layer_of(w, i), np.float32), np.asarray(w[i], np.float32))
        g = jax.grad(lambda w: jnp.sum(layer_of(w, i) * c).astype(jnp.float32))(w)
        np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(jnp.zeros_like(w).at[i].set(c), np.float32))


def test_checkpoints_of_the_per_layer_layout_are_refused_clearly(tmp_path):
    import json

    import orbax.checkpoint as ocp

    from progress_jax import handover

    cfg = qwen2_5_vl.tiny()
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_hf_dict()))
    with ocp.StandardCheckpointer() as ckpt:  # params/ as written before the layers were stacked
        ckpt.save(str(tmp_path / "params"), {"layers": {"0": {"w": jnp.ones(2)}}, "embed_tokens": jnp.ones(3)})
    with pytest.raises(ValueError, match="one entry per decoder layer .*orbax-to-hub"):
        qwen2_5_vl.load_orbax(str(tmp_path))
    model = qwen2_5_vl.init(_config(2, 2))
    lora.inject(model, 4, 8.0)
    old = {"layers/0/self_attn/q_proj/lora_a": np.zeros((128, 4), np.float32)}
    with pytest.raises(ValueError, match="one tensor per decoder layer"):
        handover.assign(model, old)


@pytest.mark.parametrize("init", ["normal", "fan_in"])
def test_random_init_draws_every_linear_kernel_at_its_scale(init):
    """`init` reaches every Linear kernel, stacked layers and blocks included, each layer its own draw:
    transformers' N(0, 0.02^2), or N(0, 1/fan_in) (the tiny preset's, for training from scratch)."""
    from flax import nnx
    from progress_jax.models.qwen2_5_vl.layers import Linear
    model = qwen2_5_vl.init(dataclasses.replace(qwen2_5_vl.tiny(), init=init), seed=0)
    kernels = {path: np.asarray(m.kernel[...]) for path, m in nnx.iter_graph(model) if isinstance(m, Linear)}
    assert len(kernels) == 15  # decoder: q k v o gate up down; vision: qkv proj gate up down, merger fc1 fc2, patch embed
    for path, k in kernels.items():
        want = 0.02 if init == "normal" else k.shape[-2] ** -0.5
        assert abs(k.std() / want - 1) < 0.1, (path, k.std(), want)
        if k.ndim == 3:  # a stack: layers differ
            assert not np.allclose(k[0], k[1]), path
