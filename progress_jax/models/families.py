"""Model families by config.json's `model_type`: the one place a job or a tool learns which model code
to use.

A family is an object (progress_jax/models/qwen2_5_vl/family.py is a module) with the members of
`Family`, checked when it registers (or, for a built-in entry of FAMILIES, when first imported).
A new family is one such object plus one `register` call (or one line in FAMILIES).
"""
from __future__ import annotations

import importlib
import json
import os
from typing import Any, Protocol


class Family(Protocol):
    """What the jobs use of a model family. The model it builds carries a config with
    `model_type` (see `for_model`) and `partition_rules` (PARTITION_RULES), and has embed(token
    ids), decode(x, position_ids, kv_mask, cache, index), logits(hidden), init_cache(batch,
    length, mesh), cache_sharding(mesh) and decode_slots(x, position_ids, fill, cache, blocks,
    block) (one token per slot of the rollout engine, attending to each slot's filled blocks):
    the trainers' and the sampler's forward pass."""

    MODEL_TYPE: str  # config.json's model_type
    PRESETS: tuple  # built-in architectures by name (model.preset)
    PARTITION_RULES: Any  # progress_jax.sharding.PartitionRules: parameter paths -> PartitionSpec
    BATCH_AXIS: dict  # model input -> its batch axis after the micro-batch axis
    PATCH_KEYS: tuple  # inputs split per batch shard with their rows' images
    GENERATION_AXIS: dict  # generation input -> its batch axis

    # The model: its architecture (a Hub directory's config.json, else a preset), a random model
    # of it, the weights of a Hub checkpoint, and the Hub layout written back.
    def architecture(self, path: str, preset: str) -> Any: ...
    def build(self, config, seed: int, dtype, param_dtype) -> Any: ...
    def load(self, path: str, dtype, compute_dtype, mesh=None) -> Any: ...
    def save_pretrained(self, model, directory: str, max_shard_bytes: int, overwrite: bool) -> None: ...

    # Training: host batches -> stacked micro-batches of model inputs; FLOPs for MFU.
    def stack_micro(self, host_batches: list, config, shards: int = 1) -> dict: ...
    def flops_per_token(self, config, seq_len: int, lora_on: bool) -> float: ...

    # Host batches by row (GRPO rollouts, sampling batches).
    def row_images(self, batch: dict, config) -> list: ...
    def take_rows(self, batch: dict, rows, config) -> dict: ...
    def vision_token_ids(self, config) -> Any: ...

    # Generation (progress_jax/sampling.py): inputs of a prompt group, their sharding, embeddings and
    # the positions of generated token `step` (linear in step: the engine adds the step to step 0's).
    def generation_inputs(self, prompts: dict, config, shards: int = 1, patch_bucket=None) -> dict: ...
    def prompt_embeddings(self, model, inputs: dict) -> Any: ...
    def decode_position_ids(self, inputs: dict, step) -> Any: ...

    # Tools: the model's parameters as an Orbax checkpoint and back (tools/convert_checkpoint.py);
    # the language model's attention, which tools/gpu_check.py checks against cuDNN's fused kernel.
    def save_orbax(self, model, directory: str, overwrite: bool) -> None: ...
    def load_orbax(self, directory: str, dtype) -> Any: ...
    def causal_attention(self, q, k, v, kv_mask, q_offset, chunk: int) -> Any: ...


MEMBERS = tuple(Family.__annotations__) + tuple(
    n for n, v in vars(Family).items() if callable(v) and not n.startswith("_"))
FUNCTIONS = MEMBERS[len(Family.__annotations__):]


def check(family, model_type: str):
    """`family` if it has every member of Family (functions callable), else a TypeError naming
    what it lacks."""
    missing = [n for n in MEMBERS if not hasattr(family, n)]
    not_callable = [n for n in FUNCTIONS if hasattr(family, n) and not callable(getattr(family, n))]
    if missing or not_callable:
        raise TypeError(f"model family {model_type!r} is not a Family (progress_jax/models/families.py): "
                        + "; ".join(([f"missing {', '.join(missing)}"] if missing else [])
                                    + ([f"not callable: {', '.join(not_callable)}"] if not_callable else [])))
    return family


# model_type -> module path, imported on first use.
FAMILIES: dict[str, object] = {"qwen2_5_vl": "progress_jax.models.qwen2_5_vl.family"}


def register(model_type: str, family) -> None:
    """Add a family (a module or any object with the members of Family) for `model_type`."""
    FAMILIES[model_type] = check(family, model_type)


def get(model_type: str):
    if model_type not in FAMILIES:
        raise ValueError(f"no model family for model_type {model_type!r}; known: {sorted(FAMILIES)} "
                         f"(see progress_jax/models/families.py)")
    family = FAMILIES[model_type]
    if isinstance(family, str):  # a built-in entry, checked once on first use
        family = FAMILIES[model_type] = check(importlib.import_module(family), model_type)
    return family


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
        raise ValueError(f"cannot read {file} ({e})") from None
    if not isinstance(value, str):
        raise ValueError(f"{file} has no model_type")
    return value


def for_path(path: str):
    """The family of a checkpoint directory, by its config.json's `model_type`."""
    return get(model_type(path))


def for_preset(name: str):
    """The family whose PRESETS holds `name`."""
    for name_ in FAMILIES:
        family = get(name_)
        if name in family.PRESETS:
            return family
    raise ValueError(f"no model family has the preset {name!r}; known: {preset_names()}")


def for_config(cfg):
    """The family of the job's model: model.path's config.json, else model.preset's."""
    key, value = ("model.path", cfg.model.path) if cfg.model.path else ("model.preset", cfg.model.preset)
    try:
        return for_path(value) if cfg.model.path else for_preset(value)
    except ValueError as e:
        raise ValueError(f"config key {key}: {e}") from None


def preset_names() -> list[str]:
    """Every family's presets (model.preset's choices)."""
    return sorted(p for name in FAMILIES for p in get(name).PRESETS)
