"""Model families by config.json's `model_type`: the one place a job learns which model code to use.

A family is a module with the interface of progress_jax/models/qwen2_5_vl/family.py:
- MODEL_TYPE, PRESETS, load, init: the model (its config carries `model_type`, see `for_model`);
- training: BATCH_AXIS, PATCH_KEYS, stack_micro, flops_per_token;
- host batches by row: row_images, take_rows, vision_token_ids (GRPO rollouts, sampling batches);
- generation (progress_jax/sampling.py): GENERATION_AXIS, generation_inputs, prompt_embeddings,
  decode_position_ids. The sampler also calls the model's embed(token ids), decode(x, position_ids,
  kv_mask, cache, index), logits(hidden) and init_cache(batch, length, mesh).
- partitioning: PARTITION_RULES (a progress_jax.sharding.PartitionRules: regexes on parameter
  paths -> PartitionSpec, and the path prefixes of stacked, scanned layers); the family's models
  carry the same object as `model.partition_rules`, which the trainers and loaders read.
A new family is one such module plus one `register` call (or one line in FAMILIES).
"""
from __future__ import annotations

import importlib
import json
import os

# model_type -> module path, imported on first use.
FAMILIES: dict[str, object] = {"qwen2_5_vl": "progress_jax.models.qwen2_5_vl.family"}


def register(model_type: str, family) -> None:
    """Add a family (a module or any object with the family interface) for `model_type`."""
    FAMILIES[model_type] = family


def get(model_type: str):
    if model_type not in FAMILIES:
        raise ValueError(f"no model family for model_type {model_type!r}; known: {sorted(FAMILIES)} "
                         f"(see progress_jax/models/families.py)")
    family = FAMILIES[model_type]
    return importlib.import_module(family) if isinstance(family, str) else family


def for_model(config):
    """The family of a built model, by its config's `model_type` (the sampler's look-up)."""
    return get(config.model_type)


def model_type(path: str) -> str:
    """`model_type` of a Hub checkpoint directory's config.json."""
    file = os.path.join(path, "config.json")
    try:
        with open(file, encoding="utf-8") as f:
            value = json.load(f).get("model_type")
    except (OSError, ValueError) as e:
        raise ValueError(f"config key model.path: cannot read {file} ({e})") from None
    if not isinstance(value, str):
        raise ValueError(f"config key model.path: {file} has no model_type")
    return value


def for_config(cfg):
    """The family of the job's model: model.path's config.json, else the family whose PRESETS
    holds model.preset."""
    if cfg.model.path:
        return get(model_type(cfg.model.path))
    for name in FAMILIES:
        family = get(name)
        if cfg.model.preset in family.PRESETS:
            return family
    raise ValueError(f"config key model.preset: no model family has the preset {cfg.model.preset!r}")
