"""Qwen2.5-VL as a model family: everything the jobs need to know about this model beyond its
forward pass, behind the interface of progress_jax.models.families (one module per family).

- load / init / PRESETS: the model from a Hub checkpoint or a built-in preset;
- BATCH_AXIS, PATCH_KEYS, stack_micro: host batches -> model inputs (M-RoPE position ids, image
  patches and vision window/attention indices per batch shard) and how they shard;
- row_images, vision_token_ids: which images belong to which prompt row (GRPO rollouts), and the
  special tokens a text continuation must not hold;
- flops_per_token: the training FLOP count for MFU;
- PARTITION_RULES: how the parameters shard (sharding.PartitionRules; also model.partition_rules).
"""
from __future__ import annotations

import jax
import numpy as np

from progress_jax.models.qwen2_5_vl import config as config_module
from progress_jax.models.qwen2_5_vl import positions
from progress_jax.models.qwen2_5_vl.partition import PARTITION_RULES  # noqa: F401 (the family's partition rules)

MODEL_TYPE = "qwen2_5_vl"  # config.json's model_type
PRESETS = tuple(config_module.PRESETS)

# Batch axis (after the leading micro-batch axis) of each model input; patch arrays: their batch-shard axis.
BATCH_AXIS = {"input_ids": 1, "attention_mask": 1, "position_ids": 2, "pixel_values": 1, "window_index": 1,
              "reverse_index": 1, "rope_hw": 1, "window_groups": 1, "image_groups": 1}
PATCH_KEYS = ("pixel_values", "window_index", "reverse_index", "rope_hw", "window_groups", "image_groups")


def load(path: str, dtype, compute_dtype, mesh=None):
    from progress_jax.models.qwen2_5_vl.weights import from_pretrained

    return from_pretrained(path, dtype=dtype, compute_dtype=compute_dtype, mesh=mesh)


def init(preset: str, seed: int, dtype, param_dtype):
    from progress_jax.models import qwen2_5_vl

    return qwen2_5_vl.init(config_module.preset(preset), seed=seed, dtype=dtype, param_dtype=param_dtype)


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
        pv = np.zeros((shards, per_shard, b["pixel_values"].shape[1]), np.float32)
        for s in range(shards):
            pv[s, :end[s] - start[s]] = b["pixel_values"][start[s]:end[s]]
        inputs["pixel_values"] = pv
        inputs["vision"] = [positions.vision_inputs(g, per_shard, config) for g in grids]
        inputs["loss_mask"] = np.pad(b["loss_mask"], ((0, 0), (0, pad_l))).astype(np.int32)
        out.append(inputs)
    for key in positions.GROUP_KEYS:  # attention groups: one shape for all micro-batches and shards
        rows = max(v[key].shape[0] for o in out for v in o["vision"])
        width = max(v[key].shape[1] for o in out for v in o["vision"])
        for o in out:
            for v in o["vision"]:
                v[key] = positions.pad_groups(v, rows, width, key)
    for o in out:
        o["vision"] = jax.tree.map(lambda *xs: np.stack(xs), *o["vision"])
    return jax.tree.map(lambda *xs: np.stack(xs), *out)


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
    """metrics_writer.train_flops_per_token for the language model (vision tower not counted):
    N = every decoder linear layer + the output projection; LoRA skips base weight gradients."""
    from progress_jax.train.metrics_writer import train_flops_per_token

    t = config.text
    attn = t.hidden_size * t.head_dim * (t.num_attention_heads * 2 + t.num_key_value_heads * 2)
    mlp = 3 * t.hidden_size * t.intermediate_size
    n = t.num_hidden_layers * (attn + mlp) + t.hidden_size * t.vocab_size
    return train_flops_per_token(n, t.num_hidden_layers, seq_len, t.num_attention_heads * t.head_dim,
                                 backward_factor=1.0 if lora_on else 2.0)
