"""Qwen2.5-VL as a model family: everything the jobs need to know about this model beyond its
forward pass, behind the interface of progress_jax.models.families (one module per family).

- load / init / PRESETS: the model from a Hub checkpoint or a built-in preset;
- BATCH_AXIS, PATCH_KEYS, stack_micro, offset_process_local: host batches -> model inputs
  (M-RoPE position ids, vision window/attention indices) and how they shard;
- row_images, vision_token_ids: which images belong to which prompt row (GRPO rollouts), and the
  special tokens a text continuation must not hold;
- flops_per_token: the training FLOP count for MFU.
"""
from __future__ import annotations

import jax
import numpy as np

from progress_jax.models.qwen2_5_vl import config as config_module
from progress_jax.models.qwen2_5_vl import positions

MODEL_TYPE = "qwen2_5_vl"  # config.json's model_type
PRESETS = tuple(config_module.PRESETS)

# Batch axis (after the leading micro-batch axis) of each model input; patch arrays use the patch axis.
BATCH_AXIS = {"input_ids": 1, "attention_mask": 1, "position_ids": 2, "pixel_values": 1, "window_index": 1,
              "reverse_index": 1, "rope_hw": 1, "window_groups": 1, "image_groups": 1}
PATCH_KEYS = ("pixel_values", "window_index", "reverse_index", "rope_hw", "window_groups", "image_groups")


def load(path: str, dtype, compute_dtype, mesh=None):
    from progress_jax.models.qwen2_5_vl.weights import from_pretrained

    return from_pretrained(path, dtype=dtype, compute_dtype=compute_dtype, mesh=mesh)


def init(preset: str, seed: int, dtype, param_dtype):
    from progress_jax.models import qwen2_5_vl

    return qwen2_5_vl.init(config_module.preset(preset), seed=seed, dtype=dtype, param_dtype=param_dtype)


def stack_micro(host_batches: list[dict], config) -> dict:
    """Pipeline host batches -> model inputs stacked on a leading micro-batch axis, padded to the
    largest length and patch count among them (padding changes no loss term); loss_mask kept."""
    L = max(b["input_ids"].shape[1] for b in host_batches)
    P = max(b["pixel_values"].shape[0] for b in host_batches)
    out = []
    for b in host_batches:
        pad_l = L - b["input_ids"].shape[1]
        padded = {
            "input_ids": np.pad(b["input_ids"], ((0, 0), (0, pad_l)), constant_values=config.pad_token_id),
            "attention_mask": np.pad(b["attention_mask"], ((0, 0), (0, pad_l))),
            "pixel_values": np.pad(b["pixel_values"], ((0, P - b["pixel_values"].shape[0]), (0, 0))),
            "image_grid_thw": b["image_grid_thw"],
        }
        inputs = positions.model_inputs(padded, config)
        inputs.pop("rope_deltas")
        inputs["loss_mask"] = np.pad(b["loss_mask"], ((0, 0), (0, pad_l))).astype(np.int32)
        out.append(inputs)
    for key in positions.GROUP_KEYS:  # attention groups: one shape for all micro-batches
        rows = max(o["vision"][key].shape[0] for o in out)
        width = max(o["vision"][key].shape[1] for o in out)
        for o in out:
            o["vision"][key] = positions.pad_groups(o["vision"], rows, width, key)
    return jax.tree.map(lambda *xs: np.stack(xs), *out)


def offset_process_local(batch: dict, process_index: int, unit: int = 4) -> dict:
    """Several processes: this process's vision indices -> global ones (its patches follow those of
    the lower-ranked processes; equal patch counts and group shapes per process)."""
    if "vision" not in batch:
        return batch
    vis, num_patches = batch["vision"], batch["pixel_values"].shape[1]
    out = dict(vis)
    for k in ("window_index", "reverse_index"):
        out[k] = vis[k] + process_index * (num_patches // unit)
    for k in ("window_groups", "image_groups"):
        out[k] = np.where(vis[k] >= 0, vis[k] + process_index * num_patches, -1)
    return {**batch, "vision": out}


def row_images(batch: dict, config) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per batch row: (its image_grid_thw rows, its pixel_values rows); one vision_start per image."""
    grid = positions.valid_grids(batch["image_grid_thw"])
    counts = (np.asarray(batch["input_ids"]) == config.vision_start_token_id).sum(1)
    if counts.sum() != len(grid):
        raise ValueError(f"prompts hold {counts.sum()} images but image_grid_thw lists {len(grid)}")
    img_end = np.cumsum(counts)
    patch_end = np.concatenate([[0], np.cumsum(grid.prod(-1))])
    return [(grid[e - c:e], batch["pixel_values"][patch_end[e - c]:patch_end[e]]) for c, e in zip(counts, img_end)]


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
