"""Trained parameters handed from one job to the next (SFT -> GRPO -> eval): one safetensors file
of the trained tensors by '/'-joined parameter path plus a JSON file saying what they sit on.

Neutral ground: training writes it, evaluation and the next training job read it, and neither
side imports the other.
"""
from __future__ import annotations

import hashlib
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_pipeline.paths import atomic_output
from progress_jax.errors import InputNotFound, UserError
from progress_jax.models import safetensors_io
from progress_jax.sharding import path_str

TRAINABLE_FILE = "trainable.safetensors"
TRAINABLE_META = "trainable.json"


class TrainableDamaged(UserError, ValueError):
    """trainable.safetensors is not the file its trainable.json was written with."""


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def save_trainable(directory: str, params: dict, meta: dict, carry_from: str = "") -> str:
    """`<directory>/trainable.safetensors`: one tensor per trained parameter, named by its
    '/'-joined path (LoRA factors, or all trained weights when lora.rank = 0; stacked decoder
    layers as one tensor [layers, ...], e.g. `layers/self_attn/q_proj/lora_a`), plus
    `trainable.json` (the lora config, the base model and the tensors file's sha256, checked by
    load_trainable). Written on process 0, atomically, the tensors first.

    carry_from: the save_trainable directory the run started from (train.init_params); its
    parameters that `params` lacks are written too (a vision tower trained before and frozen in
    this run), so that the directory alone holds every weight that differs from the base model."""
    if jax.process_count() > 1:  # every process joins the gather of the arrays spread over them
        from jax.experimental import multihost_utils

        params = multihost_utils.process_allgather(params, tiled=True)
    if jax.process_index() != 0:
        return directory
    os.makedirs(directory, exist_ok=True)
    arrays = {k: np.asarray(jax.device_get(v)) for k, v in params.items()}
    if carry_from:
        arrays = {**{k: v for k, v in load_trainable(carry_from)[0].items() if k not in arrays}, **arrays}
    path = os.path.join(directory, TRAINABLE_FILE)
    safetensors_io.save_file(arrays, path)  # atomic itself
    with atomic_output(os.path.join(directory, TRAINABLE_META)) as f:
        json.dump({**meta, "sha256": file_sha256(path)}, f, indent=2)
    return directory


def not_a_final_dir(directory: str, name: str, key: str = "") -> InputNotFound:
    """The error for a directory without `name`, pointing at its final/ when it is a run directory."""
    hint = (f"; give {os.path.join(directory, 'final')}, the run's final/" if
            os.path.isfile(os.path.join(directory, "final", name)) else " (expected the final/ of an SFT or GRPO run)")
    return InputNotFound(f"{f'config key {key}: ' if key else ''}no {name} in {directory}{hint}")


def load_trainable(directory: str) -> tuple[dict, dict]:
    """(params, meta) written by `save_trainable`; a tensors file whose sha256 is not the one
    recorded with it is refused (files written before checksums were recorded are not checked)."""
    path = os.path.join(directory, TRAINABLE_FILE)
    if not os.path.isfile(path):
        raise not_a_final_dir(directory, TRAINABLE_FILE)
    meta = read_meta(directory)
    if "sha256" in meta and file_sha256(path) != meta["sha256"]:
        raise TrainableDamaged(f"{path} is damaged: its sha256 is not the one recorded in {TRAINABLE_META} when it "
                               "was written (retrain, or restore the file from a copy)")
    return {k: np.asarray(v) for k, v in safetensors_io.open_tensors(path).items()}, meta


def read_meta(directory: str) -> dict:
    """`trainable.json` of a save_trainable directory: the lora config and the base model."""
    path = os.path.join(directory, TRAINABLE_META)
    if not os.path.isfile(path):
        raise not_a_final_dir(directory, TRAINABLE_META)
    with open(path) as f:
        try:
            meta = json.load(f)
        except ValueError as e:
            raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    return meta


def assign(model, params: dict) -> None:
    """Write flat trained params into the model in place (e.g. the SFT output before GRPO)."""
    flat = dict(nnx.to_flat_state(nnx.state(model)))
    by_key = {path_str(p): p for p in flat}
    unknown = sorted(set(params) - set(by_key))
    if unknown and any(re.match(r"^layers/\d+/", k) for k in unknown):
        raise ValueError(f"trained parameters {unknown[:2]}...: one tensor per decoder layer, written by a progress_jax "
                         "before the decoder layers were stacked (now layers/... [layers, ...]); export it with that "
                         "version (tools/export.py) or retrain")
    if unknown:
        raise ValueError(f"trained parameters not in the model: {unknown[:5]} (LoRA rank/targets differ?)")
    for k, value in params.items():
        var = flat[by_key[k]]
        if tuple(var.shape) != tuple(value.shape):
            raise ValueError(f"trained parameter {k}: shape {tuple(value.shape)}, model has {tuple(var.shape)}")
        var.set_value(jnp.asarray(value, var.get_value().dtype))
    nnx.update(model, nnx.from_flat_state(list(flat.items())))


def save_final(directory: str, params: dict, config, steps: int) -> str:
    """A training job's final/: its trained parameters, with those of train.init_params it did not
    train carried over (save_trainable)."""
    return save_trainable(directory, params, run_meta(config, steps), carry_from=config.train.init_params)


def run_meta(config, steps: int) -> dict:
    """What a run's trained parameters sit on (read back by eval.trained and load_policy)."""
    return {"lora": config.lora.to_dict(), "model_path": config.model.path, "model_preset": config.model.preset,
            "freeze_vision": config.model.freeze_vision, "seed": config.seed, "steps": steps}
