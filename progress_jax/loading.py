"""The model and tokenizer a job starts from: a Hub checkpoint (its family by config.json's
model_type) or a built-in preset, sharded on the mesh, with LoRA and an earlier run's trained
parameters."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from flax import nnx

from data_pipeline.tokenizer import load_tokenizer as _load_tokenizer
from progress_jax import handover, lora, sharding
from progress_jax.errors import InputNotFound, UserError
from progress_jax.models import families

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def load_model(cfg, mesh=None):
    """model.path -> the checkpoint (its family by config.json's model_type); empty -> a random
    model of preset model.preset (seed cfg.seed), sharded on mesh."""
    param, compute = DTYPES[cfg.model.param_dtype], DTYPES[cfg.model.compute_dtype]
    if cfg.model.path and not os.path.isdir(cfg.model.path):
        raise InputNotFound(f"config key model.path: no directory {cfg.model.path}")
    family = families.for_config(cfg)
    if cfg.model.path:
        return set_attention_chunk(family.load(cfg.model.path, param, compute, mesh), cfg.model.attention_chunk)
    model = family.build(family.architecture("", cfg.model.preset), cfg.seed, compute, param)
    if mesh is not None:
        state = nnx.state(model)
        shardings = sharding.param_shardings(state, mesh, family.PARTITION_RULES)
        nnx.update(model, jax.device_put(state, shardings))
    return set_attention_chunk(model, cfg.model.attention_chunk)


def set_attention_chunk(model, chunk: int):
    """model.attention_chunk onto every module of `model` with an `attention_chunk` attribute (a
    family's attention layers: queries in blocks of `chunk`, 0 = one block). Returns the model."""
    modules = [m for _, m in nnx.iter_graph(model) if hasattr(m, "attention_chunk")]
    for m in modules:
        m.attention_chunk = int(chunk)
    return model


def load_tokenizer(cfg):
    return _load_tokenizer(cfg.model.path or None)


def load_policy(cfg, mesh, init_dir: str = ""):
    """The model to train: base weights, LoRA injected per cfg.lora, and (init_dir) the trained
    parameters an earlier SFT/GRPO run wrote with handover.save_trainable."""
    model = load_model(cfg, mesh)
    lora.from_config(model, cfg.lora, seed=cfg.seed, mesh=mesh)
    if init_dir:
        params, meta = handover.load_trainable(init_dir)
        preset = meta.get("model_preset")
        if preset and not meta.get("model_path") and not cfg.model.path and preset != cfg.model.preset:
            raise UserError(f"{init_dir} holds weights of the {preset} preset, but model.preset is "
                            f"{cfg.model.preset}: set --config.model.preset={preset}")
        handover.assign(model, params)
    return model
