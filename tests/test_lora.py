"""LoRA: injection on the LM only, optimizer state only for LoRA leaves with the base frozen,
merge + Hub export loaded by transformers, and the LoRA-off view for the GRPO reference."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from transformers import Qwen2_5_VLForConditionalGeneration

from progress_jax import lora
from progress_jax.models import qwen2_5_vl
from progress_jax.models.qwen2_5_vl import family as qwen
from progress_jax.train import loop, programs, schedule
from tests import hf_reference as ref
from tests.test_sft import CFG, ROWS, host_batch, lora_model


def test_inject_adapts_every_lm_linear_and_nothing_else():
    model = qwen2_5_vl.init(CFG)
    ids = host_batch([(20, 0)])["input_ids"]
    before = np.asarray(model(ids))
    paths = lora.inject(model, 8, 16.0, 0.05)
    t = CFG.text
    assert len(paths) == 7 * t.num_hidden_layers and not any(p.startswith("visual") for p in paths)
    d, h, kv, m = t.hidden_size, t.head_dim, t.num_key_value_heads, t.intermediate_size
    per_layer = 8 * ((d + t.num_attention_heads * h) * 2 + 2 * (d + kv * h) + 2 * (d + m) + (m + d))
    assert lora.param_count(model) == per_layer * t.num_hidden_layers
    q = model.layers.self_attn.q_proj  # stacked: factors [layers, in, r] / [layers, r, out]
    assert q.lora_scale == 2.0 and not np.any(q.lora_b[...])
    assert q.lora_a.shape == (t.num_hidden_layers, d, 8)
    for a in q.lora_a[...]:  # each layer's A drawn from PEFT's kaiming-uniform bound
        assert 0.5 / np.sqrt(d) < np.abs(a).max() <= 1 / np.sqrt(d)
    assert not np.array_equal(q.lora_a[...][0], q.lora_a[...][1])
    # B = 0: the adapted model computes exactly the base model.
    np.testing.assert_array_equal(np.asarray(model(ids)), before)


def test_rank0_trains_the_language_model_only():
    model = qwen2_5_vl.init(CFG)
    parts, params = loop.split(model, lora.trainable_filter(0))
    assert "embed_tokens" in params and "layers/self_attn/q_proj/kernel" in params
    assert not any(k.startswith("visual") for k in params)
    assert any(p[0] == "visual" for p, _ in nnx.to_flat_state(parts.frozen))


def test_optimizer_state_is_lora_only_and_base_stays_bit_identical():
    model = lora_model()
    base = {k: np.array(v) for k, v in loop.split(model, nnx.Not(nnx.LoRAParam))[1].items()}
    parts, params = loop.split(model, lora.trainable_filter(8))
    tx = schedule.make_optimizer(1e-2, 0.01, 0.1, 10, 1.0)
    state = loop.init_state(params, tx, seed=0)
    opt_sizes = sum(x.size for x in jax.tree.leaves(state["opt"]) if x.ndim > 0)
    assert opt_sizes == 2 * lora.param_count(model)
    step = jax.jit(programs.make_step(parts, tx))
    batch = jax.tree.map(jnp.asarray, qwen.stack_micro([host_batch(ROWS)], CFG))
    start = {k: np.array(v) for k, v in params.items()}
    for _ in range(3):
        state, _ = step(state, parts.frozen, batch)
    trained = parts.model(state["params"])
    after = loop.split(trained, nnx.Not(nnx.LoRAParam))[1]
    assert after.keys() == base.keys()
    for k, v in base.items():
        np.testing.assert_array_equal(np.asarray(after[k]), v)
    assert all(not np.array_equal(np.asarray(state["params"][k]), start[k]) for k in start)


def test_merged_export_loads_in_transformers_with_the_same_logits(tmp_path):
    hf = ref.hf_model(tied=False)
    hf.save_pretrained(tmp_path / "base")
    model = qwen2_5_vl.from_pretrained(str(tmp_path / "base"))
    lora.inject(model, 4, 8.0, 0.05, seed=3)
    for i, (_, lin) in enumerate(lora._linears(model)):
        if lin.lora_b is not None:
            lin.lora_b.set_value(0.1 * jax.random.normal(jax.random.key(i), lin.lora_b.shape))
    ids, mask, pv, grid = ref.batch()
    ours = np.asarray(model(ids, attention_mask=mask, pixel_values=pv, image_grid_thw=grid))
    qwen2_5_vl.save_pretrained(lora.merge(model), str(tmp_path / "merged"))
    exported = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    theirs = ref.hf_logits(exported, ids, mask, pv, grid)
    real = mask.astype(bool)
    assert np.abs(ours[real] - theirs[real]).max() <= 2e-4
    base = ref.hf_logits(hf, ids, mask, pv, grid)
    assert np.abs(base[real] - theirs[real]).max() > 1e-2  # the LoRA update is really in the export


def test_lora_off_gives_the_base_model():
    model = lora_model()
    parts, params = loop.split(model, lora.trainable_filter(8))
    ids = host_batch([(20, 0)])["input_ids"]
    base = qwen2_5_vl.init(CFG)  # same seed: the weights before injection
    off = parts.model(lora.lora_off(params))
    np.testing.assert_array_equal(np.asarray(off(ids)), np.asarray(base(ids)))
    assert np.abs(np.asarray(parts.model(params)(ids)) - np.asarray(base(ids))).max() > 1e-4
