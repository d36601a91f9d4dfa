"""Qwen2.5-VL as a model family: everything the jobs need to know about this model beyond its
forward pass, behind the interface of progress_jax.models.families (one module per family).

- architecture / build / load / save_pretrained / PRESETS: the model from a Hub checkpoint or a
  built-in preset, and back to the Hub layout;
- BATCH_AXIS, PATCH_KEYS, stack_micro: host batches -> model inputs (M-RoPE position ids, image
  patches and vision window/attention indices per batch shard) and how they shard;
- row_images, take_rows, vision_token_ids: which images belong to which prompt row (GRPO
  rollouts, sampling batches), and the special tokens a text continuation must not hold;
- GENERATION_AXIS, generation_inputs, prompt_embeddings, decode_position_ids: the sampler's
  inputs (M-RoPE positions, patches per batch shard), how they shard, and decode positions;
- flops_per_token: the training FLOP count for MFU;
- PARTITION_RULES: how the parameters shard (sharding.PartitionRules; also model.partition_rules);
- save_orbax / load_orbax, causal_attention: for the tools (the Orbax layout of the parameters; the
  language model's attention, which tools/gpu_check.py checks against cuDNN's).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from flax import nnx

from progress_jax.models.flops import train_flops_per_token
from progress_jax.models.qwen2_5_vl import config as config_module
from progress_jax.models.qwen2_5_vl import positions, weights
from progress_jax.models.qwen2_5_vl.model import Qwen25VL
from progress_jax.models.qwen2_5_vl.layers import causal_attention  # noqa: F401 (the family's attention)
from progress_jax.models.qwen2_5_vl.partition import PARTITION_RULES  # noqa: F401 (the family's partition rules)
from progress_jax.models.qwen2_5_vl.weights import load_orbax, save_orbax  # noqa: F401 (the family's Orbax layout)

MODEL_TYPE = config_module.Qwen25VLConfig.model_type  # config.json's model_type
PRESETS = tuple(config_module.PRESETS)

# Batch axis (after the leading micro-batch axis) of each model input; patch arrays: their batch-shard axis.
BATCH_AXIS = {"input_ids": 1, "attention_mask": 1, "position_ids": 2, "pixel_values": 1, "window_index": 1,
              "reverse_index": 1, "rope_hw": 1, "window_groups": 1, "image_groups": 1}
PATCH_KEYS = ("pixel_values", "window_index", "reverse_index", "rope_hw", "window_groups", "image_groups")


def architecture(path: str, preset: str) -> config_module.Qwen25VLConfig:
    """`path`'s config.json (nothing else is read), else the preset."""
    return config_module.Qwen25VLConfig.from_json(path) if path else config_module.preset(preset)


def build(config, seed: int, dtype, param_dtype):
    """A randomly initialised model of `config`."""
    return Qwen25VL(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(seed))


def load(path: str, dtype, compute_dtype, mesh=None):
    return weights.from_pretrained(path, dtype=dtype, compute_dtype=compute_dtype, mesh=mesh)


def save_pretrained(model, directory: str, max_shard_bytes: int = 5 * 2**30, overwrite: bool = False) -> None:
    weights.save_pretrained(model, directory, max_shard_bytes=max_shard_bytes, overwrite=overwrite)


def stack_micro(host_batches: list[dict], config, shards: int = 1) -> dict:
    """Pipeline host batches -> model inputs stacked on a leading micro-batch axis, padded to the
    largest length and patch count among them (padding changes no loss term); loss_mask kept.

    shards: the batch shards of the mesh (sharding.batch_shards). Rows split into `shards`
    contiguous groups (as the batch axis splits over the data axes); the patches become
    [shards, P_s, 1176], shard s holding the patches of its rows' images, zero-padded, with its own
    vision indices, so that each device runs the vision tower on its own rows' images only.
    P_s: the host batch's patch count / shards (the pipeline buckets per shard), or more where a
    shard needs it. shards = 1 is the host layout itself."""
    L = max(b["input_ids"].shape[1] for b in host_batches)
    spans = [_shard_patch_spans(b, config, shards) if shards > 1 else _one_shard(b) for b in host_batches]
    unit = config.vision.spatial_merge_size ** 2
    per_shard = max(max(-(-b["pixel_values"].shape[0] // shards), int((e - s).max()))
                    for b, (s, e, _) in zip(host_batches, spans))
    per_shard = -(-per_shard // unit) * unit
    out = []
    for b, (start, end, grids) in zip(host_batches, spans):
        pad_l = L - b["input_ids"].shape[1]
        ids = np.pad(b["input_ids"], ((0, 0), (0, pad_l)), constant_values=config.pad_token_id)
        mask = np.pad(b["attention_mask"], ((0, 0), (0, pad_l)))
        inputs = positions.model_inputs({"input_ids": ids, "attention_mask": mask,
                                         "image_grid_thw": b["image_grid_thw"]}, config)
        inputs.pop("rope_deltas")
        # Attention groups for at least the image bucket's images (per shard): one shape per bucket.
        min_groups = -(-len(b["image_grid_thw"]) // shards)
        inputs["pixel_values"], inputs["vision"] = _shard_patches(b["pixel_values"], (start, end, grids), per_shard,
                                                                  config, min_groups)
        inputs["loss_mask"] = np.pad(b["loss_mask"], ((0, 0), (0, pad_l))).astype(np.int32)
        out.append(inputs)
    _stack_vision(out)
    return jax.tree.map(lambda *xs: np.stack(xs), *out)


def _shard_patches(pixel_values, spans, per_shard: int, config, min_groups: int = 0):
    """Patches [shards, per_shard, 1176] (shard s: rows start[s]:end[s] of pixel_values, zero-padded)
    and each shard's vision indices (a list, stacked by _stack_vision)."""
    start, end, grids = spans
    pv = np.zeros((len(start), per_shard, pixel_values.shape[1]), np.float32)
    for s in range(len(start)):
        pv[s, :end[s] - start[s]] = pixel_values[start[s]:end[s]]
    return pv, [positions.vision_inputs(g, per_shard, config, min_groups) for g in grids]


def _stack_vision(inputs: list[dict]) -> None:
    """In place: each input's per-shard vision indices, their attention groups padded to one shape
    (of all inputs and shards), stacked on the shard axis."""
    for key in positions.GROUP_KEYS:
        rows = max(v[key].shape[0] for o in inputs for v in o["vision"])
        width = max(v[key].shape[1] for o in inputs for v in o["vision"])
        for o in inputs:
            for v in o["vision"]:
                v[key] = positions.pad_groups(v, rows, width, key)
    for o in inputs:
        o["vision"] = jax.tree.map(lambda *xs: np.stack(xs), *o["vision"])


def _one_shard(batch: dict):
    grid = positions.valid_grids(batch["image_grid_thw"])
    return np.array([0]), np.array([int(grid.prod(-1).sum())]), [grid]


def _shard_patch_spans(batch: dict, config, shards: int):
    """Per batch shard (contiguous groups of rows): start and end of its patches in the host
    batch's pixel_values (row order), and its image_grid_thw rows; one vision_start per image."""
    grid = positions.valid_grids(batch["image_grid_thw"])
    B = batch["input_ids"].shape[0]
    if B % shards:
        raise ValueError(f"a batch of {B} rows does not split into {shards} batch shards")
    counts = (np.asarray(batch["input_ids"]) == config.vision_start_token_id).sum(1)
    if counts.sum() != len(grid):
        raise ValueError(f"prompts hold {counts.sum()} images but image_grid_thw lists {len(grid)}")
    img_end = np.cumsum(counts.reshape(shards, -1).sum(1))
    img_start = img_end - counts.reshape(shards, -1).sum(1)
    patch_end = np.concatenate([[0], np.cumsum(grid.prod(-1))])
    return patch_end[img_start], patch_end[img_end], [grid[a:e] for a, e in zip(img_start, img_end)]


def row_images(batch: dict, config) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per batch row: (its image_grid_thw rows, its pixel_values rows); one vision_start per image."""
    start, end, grids = _shard_patch_spans(batch, config, batch["input_ids"].shape[0])
    return [(g, batch["pixel_values"][a:e]) for g, a, e in zip(grids, start, end)]


def vision_token_ids(config) -> np.ndarray:
    """Special tokens that only a prompt may hold (a generated one ends the response)."""
    return np.array([config.image_token_id, config.video_token_id, config.vision_start_token_id,
                     config.vision_end_token_id])


def flops_per_token(config, seq_len: int, lora_on: bool) -> float:
    """models.flops.train_flops_per_token for the language model (vision tower not counted):
    N = every decoder linear layer + the output projection; LoRA skips base weight gradients."""
    t = config.text
    attn = t.hidden_size * t.head_dim * (t.num_attention_heads * 2 + t.num_key_value_heads * 2)
    mlp = 3 * t.hidden_size * t.intermediate_size
    n = t.num_hidden_layers * (attn + mlp) + t.hidden_size * t.vocab_size
    return train_flops_per_token(n, t.num_hidden_layers, seq_len, t.num_attention_heads * t.head_dim,
                                 backward_factor=1.0 if lora_on else 2.0)


def take_rows(batch: dict, rows, config) -> dict:
    """The given rows of a host batch (input_ids, attention_mask), each row's images with it."""
    rows = np.asarray(rows)
    out = {k: np.asarray(batch[k])[rows] for k in ("input_ids", "attention_mask")}
    if batch.get("pixel_values") is not None and batch.get("image_grid_thw") is not None:
        images = row_images(batch, config)
        picked = [images[b] for b in rows if len(images[b][0])]
        if picked:
            out["image_grid_thw"] = np.concatenate([g for g, _ in picked])
            out["pixel_values"] = np.concatenate([p for _, p in picked])
    return out


# ---- generation (progress_jax/sampling.py) -------------------------------------------------------

# Batch axis of each generation input (no micro-batch axis); patch arrays: their batch-shard axis.
GENERATION_AXIS = {"input_ids": 0, "attention_mask": 0, "position_ids": 1, "rope_deltas": 0,
                   **dict.fromkeys(PATCH_KEYS, 0)}


def generation_inputs(prompts: dict, config, shards: int = 1, patch_bucket=None) -> dict:
    """Left-padded prompts (input_ids, attention_mask [B, L], padded by the sampler) with their
    host batch's pixel_values and image_grid_thw -> the generation program's NumPy inputs: M-RoPE
    position_ids, rope_deltas (for the decode positions) and, when the prompts hold images, the
    patches per batch shard [shards, P_s, 1176] with their vision indices, laid out as stack_micro
    lays them out for training (rows in `shards` contiguous groups, each group's images with it).
    P_s: patch_bucket(the largest shard's patch count), rounded up to whole merge units."""
    ids = np.asarray(prompts["input_ids"]).astype(np.int32)
    mask = np.asarray(prompts["attention_mask"]).astype(np.int32)
    has_images = prompts.get("pixel_values") is not None and prompts.get("image_grid_thw") is not None
    grid = positions.valid_grids(prompts["image_grid_thw"]) if has_images else np.zeros((0, 3), np.int64)
    position_ids, rope_deltas = positions.get_rope_index(ids, grid, mask, config)
    out = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids, "rope_deltas": rope_deltas}
    n = int(grid.prod(-1).sum())
    if not n:
        return out
    pixel_values = np.asarray(prompts["pixel_values"], np.float32)
    if pixel_values.shape[0] < n:
        raise ValueError(f"image_grid_thw needs {n} patch rows, pixel_values has {pixel_values.shape[0]}")
    spans = _shard_patch_spans({"input_ids": ids, "image_grid_thw": grid}, config, shards)
    unit = config.vision.spatial_merge_size ** 2
    per_shard = int((spans[1] - spans[0]).max())
    per_shard = -(-(patch_bucket or (lambda p: p))(per_shard) // unit) * unit
    out["pixel_values"], out["vision"] = _shard_patches(pixel_values, spans, per_shard, config)
    _stack_vision([out])
    return out


def prompt_embeddings(model, inputs: dict):
    """Traced: the prompt's token embeddings with its image features (each batch shard's tower)."""
    return model.embed(inputs["input_ids"], inputs.get("pixel_values"), inputs.get("vision"))


def decode_position_ids(inputs: dict, step):
    """Traced: position ids [3, B, 1] of generated token `step` (0-based), transformers' rule:
    the row's real prompt tokens + step + its rope delta, on all three M-RoPE axes."""
    first = inputs["attention_mask"].sum(1) + inputs["rope_deltas"][:, 0]
    return jnp.broadcast_to((first + step)[None, :, None], (3, first.shape[0], 1))
