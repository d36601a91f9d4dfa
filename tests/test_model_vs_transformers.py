"""The Flax Qwen2.5-VL against transformers' PyTorch model on tiny random checkpoints (float32)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from progress_jax.models import qwen2_5_vl, safetensors_io
from progress_jax import sharding
from tests import hf_reference as ref

TOL = 2e-4


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def checkpoint(request, tmp_path_factory):
    model = ref.hf_model(tied=request.param, seed=1 if request.param else 2)
    path = tmp_path_factory.mktemp("hf_tied" if request.param else "hf_untied")
    model.save_pretrained(path)
    return model, str(path)


def test_checkpoint_uses_hub_layout(checkpoint):
    hf, path = checkpoint
    names = set(safetensors_io.open_checkpoint(path))
    assert "visual.patch_embed.proj.weight" in names and "model.embed_tokens.weight" in names
    assert ("lm_head.weight" in names) == (not hf.config.tie_word_embeddings)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_logits_match(checkpoint, padding_side):
    hf, path = checkpoint
    model = qwen2_5_vl.from_pretrained(path)
    ids, mask, pv, grid = ref.batch(padding_side)
    expected = ref.hf_logits(hf, ids, mask, pv, grid)
    got = np.asarray(model(ids, attention_mask=mask, pixel_values=pv, image_grid_thw=grid))
    real = mask.astype(bool)
    assert np.abs(got[real] - expected[real]).max() <= TOL
    assert np.abs(expected[real]).max() > 0.1  # the comparison is not between near-zero values


def test_vision_tower_matches(checkpoint):
    hf, path = checkpoint
    model = qwen2_5_vl.from_pretrained(path)
    _, _, pv, grid = ref.batch()
    with torch.no_grad():
        expected = hf.model.visual(torch.tensor(pv), grid_thw=torch.tensor(grid)).pooler_output.numpy()
    # Pad the patch rows as the data pipeline does: extra rows must not disturb real outputs.
    pv_padded = np.concatenate([pv, np.ones((64, pv.shape[1]), np.float32)])
    vis = jax.tree.map(jnp.asarray, qwen2_5_vl.vision_inputs(grid, pv_padded.shape[0], model.config))
    got = np.asarray(model.visual(jnp.asarray(pv_padded), vis))
    assert got.shape[0] == expected.shape[0] + 16
    assert np.abs(got[: expected.shape[0]] - expected).max() <= TOL


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_rope_index_matches(checkpoint, padding_side):
    hf, _ = checkpoint
    ids, mask, _, grid = ref.batch(padding_side)
    cfg = qwen2_5_vl.Qwen25VLConfig.from_dict(hf.config.to_dict())
    pos, deltas = qwen2_5_vl.get_rope_index(ids, grid, mask, cfg)
    ref_pos, ref_deltas = hf.model.get_rope_index(
        torch.tensor(ids),
        mm_token_type_ids=torch.tensor((ids == ref.IMAGE).astype(np.int64)),
        image_grid_thw=torch.tensor(grid),
        attention_mask=torch.tensor(mask),
    )
    real = np.broadcast_to(mask.astype(bool), pos.shape)
    np.testing.assert_array_equal(pos[real], ref_pos.numpy()[real])
    np.testing.assert_array_equal(deltas, ref_deltas.numpy())
    assert (pos[~real] == 1).all()


def test_kv_cache_decode_matches_full_forward(checkpoint):
    _, path = checkpoint
    model = qwen2_5_vl.from_pretrained(path)
    ids, mask, pv, grid = ref.batch("left")
    prep = model.prepare(ids, mask, pv, grid)
    vision = jax.tree.map(jnp.asarray, prep["vision"])
    full = np.asarray(model.forward(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(prep["position_ids"]), pv, vision))

    n_prompt, L = ids.shape[1] - 4, ids.shape[1]  # prefill all but the last 4 tokens, then decode
    cache = model.init_cache(2, L + 3)
    kv_mask = np.zeros((2, L + 3), np.int32)
    kv_mask[:, :L] = mask
    kv_mask = jnp.asarray(kv_mask)
    pos = jnp.asarray(prep["position_ids"])
    x = model.embed(jnp.asarray(ids[:, :n_prompt]), pv, vision)
    hidden, cache = model.decode(x, pos[:, :, :n_prompt], kv_mask, cache, 0)
    steps = [np.asarray(model.logits(hidden))]
    for t in range(n_prompt, L):
        x = model.embed(jnp.asarray(ids[:, t : t + 1]))
        hidden, cache = model.decode(x, pos[:, :, t : t + 1], kv_mask, cache, t)
        steps.append(np.asarray(model.logits(hidden)))
    stepped = np.concatenate(steps, axis=1)
    real = mask.astype(bool)
    assert np.abs(stepped[real] - full[real]).max() <= TOL
    # Decode positions follow transformers' rule: (real tokens so far - 1) + rope delta.
    np.testing.assert_array_equal(
        prep["position_ids"][:, :, -1], np.broadcast_to(mask.sum(1) - 1 + prep["rope_deltas"][:, 0], (3, 2))
    )


def test_bfloat16_compute_close(checkpoint):
    """bf16 activations and weights: 8 mantissa bits give ~4e-3 relative error per op; through
    2+3 blocks the logits stay within 5% of their range of the float32 result."""
    hf, path = checkpoint
    model = qwen2_5_vl.from_pretrained(path, dtype=jnp.bfloat16)
    ids, mask, pv, grid = ref.batch()
    expected = ref.hf_logits(hf, ids, mask, pv, grid)
    got = np.asarray(model(ids, attention_mask=mask, pixel_values=pv, image_grid_thw=grid))
    real = mask.astype(bool)
    scale = np.abs(expected[real]).max()
    assert np.abs(got[real] - expected[real]).max() <= 0.05 * scale
    assert np.abs(got[real] - expected[real]).max() > 1e-5  # really computed in bf16


def test_sharded_load_matches(checkpoint):
    hf, path = checkpoint
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    model = qwen2_5_vl.from_pretrained(path, mesh=mesh)
    q = model.layers.self_attn.q_proj.kernel[...]  # stacked [layers, in, out]: no mesh axis on the layers
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape == (2, 32, 32)
    ids, mask, pv, grid = ref.batch()
    expected = ref.hf_logits(hf, ids, mask, pv, grid)
    got = np.asarray(model(ids, attention_mask=mask, pixel_values=pv, image_grid_thw=grid))
    real = mask.astype(bool)
    assert np.abs(got[real] - expected[real]).max() <= TOL


def test_transformers5_layout_and_sharded_files(checkpoint, tmp_path):
    """Same weights renamed to model.visual.* / model.language_model.*, split over two files."""
    hf, path = checkpoint
    tensors = {k: np.array(v) for k, v in safetensors_io.open_checkpoint(path).items()}
    renamed = {}
    for k, v in tensors.items():
        if k.startswith("visual."):
            k = "model." + k
        elif k.startswith("model."):
            k = "model.language_model." + k[len("model.") :]
        renamed[k] = v
    safetensors_io.save_checkpoint(renamed, str(tmp_path), max_shard_bytes=200_000)
    assert os.path.exists(tmp_path / "model.safetensors.index.json")
    with open(os.path.join(path, "config.json")) as f:
        (tmp_path / "config.json").write_text(f.read())
    model = qwen2_5_vl.from_pretrained(str(tmp_path))
    ids, mask, pv, grid = ref.batch()
    expected = ref.hf_logits(hf, ids, mask, pv, grid)
    got = np.asarray(model(ids, attention_mask=mask, pixel_values=pv, image_grid_thw=grid))
    assert np.abs(got[mask.astype(bool)] - expected[mask.astype(bool)]).max() <= TOL


def test_flat_hub_config_layout():
    """The Hub's config.json for Qwen2.5-VL-3B keeps text fields and rope at the top level."""
    flat = {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
        "image_token_id": 151655,
        "video_token_id": 151656,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "eos_token_id": 151645,
        "bos_token_id": 151643,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "vision_config": {
            "depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
            "num_heads": 16, "in_chans": 3, "out_hidden_size": 2048, "patch_size": 14,
            "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "temporal_patch_size": 2,
        },
    }
    assert qwen2_5_vl.Qwen25VLConfig.from_dict(flat) == qwen2_5_vl.qwen2_5_vl_3b()


def test_nested_config_matches_transformers(checkpoint):
    hf, path = checkpoint
    cfg = qwen2_5_vl.Qwen25VLConfig.from_json(path)
    tc = hf.config.text_config
    assert cfg.text.rope_theta == tc.rope_parameters["rope_theta"]
    assert list(cfg.text.mrope_section) == tc.rope_parameters["mrope_section"]
    assert cfg.text.rms_norm_eps == tc.rms_norm_eps
    assert cfg.tie_word_embeddings == hf.config.tie_word_embeddings
    assert cfg.image_token_id == ref.IMAGE


def test_mismatched_weights_listed(checkpoint, tmp_path):
    _, path = checkpoint
    tensors = {k: np.array(v) for k, v in safetensors_io.open_checkpoint(path).items()}
    del tensors["model.norm.weight"]
    tensors["model.layers.0.mlp.up_proj.weight"] = np.zeros((5, 64), np.float32)
    tensors["model.extra.weight"] = np.zeros((3,), np.float32)
    safetensors_io.save_checkpoint(tensors, str(tmp_path))
    with open(os.path.join(path, "config.json")) as f:
        (tmp_path / "config.json").write_text(f.read())
    with pytest.raises(ValueError) as err:
        qwen2_5_vl.from_pretrained(str(tmp_path))
    msg = str(err.value)
    assert "missing: model.norm.weight expected [64]" in msg
    assert "wrong shape: model.layers.0.mlp.up_proj.weight expected [96, 64] found [5, 64]" in msg
    assert "unexpected: model.extra.weight [3]" in msg


def test_export_loads_in_transformers(checkpoint, tmp_path):
    """Our Hub-layout export is read by transformers and gives the same logits; bit-exact tensors."""
    hf, path = checkpoint
    model = qwen2_5_vl.from_pretrained(path)
    qwen2_5_vl.save_pretrained(model, str(tmp_path))
    before = safetensors_io.open_checkpoint(path)
    after = safetensors_io.open_checkpoint(str(tmp_path))
    assert set(before) == set(after)
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
    from transformers import Qwen2_5_VLForConditionalGeneration

    reloaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
    ids, mask, pv, grid = ref.batch()
    real = mask.astype(bool)
    diff = ref.hf_logits(reloaded, ids, mask, pv, grid)[real] - ref.hf_logits(hf, ids, mask, pv, grid)[real]
    assert np.abs(diff).max() == 0.0
