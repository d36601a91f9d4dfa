"""Train-loop pieces shared by the SFT and GRPO trainers.

- The model split into trained parameters, a flat dict {'/'-joined path: array} (the paths of
  sharding.RULES, e.g. `layers/3/self_attn/q_proj/lora_a`), and the frozen rest (an nnx.State).
- The train state {"params", "opt", "step", "rng"} and its shardings on the (data, fsdp, tensor) mesh.
- Host batches -> global device arrays (micro-batches stacked on a leading axis).
- `train`: the loop, with Orbax checkpoints that include the Grain iterator state, resume from
  the latest, a clean stop on SIGTERM, a stop on a NaN/Inf loss, metrics and a progress bar.
- Final trained parameters as one safetensors file for the next job (see `save_trainable`).
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from progress_jax import sharding
from progress_jax.models import safetensors_io
from progress_jax.train import checkpoint, guards, metrics_writer

log = logging.getLogger(__name__)

TRAINABLE_FILE = "trainable.safetensors"
TRAINABLE_META = "trainable.json"


# ---- the model as trained parameters + frozen rest ---------------------------------------------

def _key(path) -> str:
    return "/".join(str(p) for p in path)


@dataclass
class Parts:
    graphdef: nnx.GraphDef
    template: list  # [(path, Variable holding a ShapeDtypeStruct)] of the trained variables
    frozen: nnx.State

    def model(self, params: dict, frozen: nnx.State | None = None):
        """The module from flat trained params (works on tracers inside jit)."""
        items = [(p, v.replace(params[_key(p)])) for p, v in self.template]
        return nnx.merge(self.graphdef, nnx.from_flat_state(items), self.frozen if frozen is None else frozen)


def split(model, wrt) -> tuple[Parts, dict]:
    """(Parts, trained params as a flat dict) for the NNX filter `wrt` (see lora.trainable_filter)."""
    graphdef, trained, frozen = nnx.split(model, wrt, ...)
    flat = nnx.to_flat_state(trained)
    if not len(flat):
        raise ValueError("the trainable filter selects no parameter")
    template = [(p, v.replace(jax.ShapeDtypeStruct(v.shape, v.get_value().dtype))) for p, v in flat]
    return Parts(graphdef, template, frozen), {_key(p): v.get_value() for p, v in flat}


def assign(model, params: dict) -> None:
    """Write flat trained params into the model in place (e.g. the SFT output before GRPO)."""
    flat = dict(nnx.to_flat_state(nnx.state(model)))
    by_key = {_key(p): p for p in flat}
    unknown = sorted(set(params) - set(by_key))
    if unknown:
        raise ValueError(f"trained parameters not in the model: {unknown[:5]} (LoRA rank/targets differ?)")
    for k, value in params.items():
        var = flat[by_key[k]]
        if tuple(var.shape) != tuple(value.shape):
            raise ValueError(f"trained parameter {k}: shape {tuple(value.shape)}, model has {tuple(var.shape)}")
        var.set_value(jnp.asarray(value, var.get_value().dtype))
    nnx.update(model, nnx.from_flat_state(list(flat.items())))


# ---- train state and shardings -------------------------------------------------------------

def init_state(params: dict, tx: optax.GradientTransformation, seed: int) -> dict:
    """Adam moments exist for the trained params only (frozen ones are never given to optax)."""
    return {"params": params, "opt": tx.init(params), "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.PRNGKey(seed)}


def state_shardings(state, mesh):
    """Params and their optimizer moments by sharding.RULES (the flat key is the rule path);
    scalars, counts and the RNG key replicated."""
    def spec(path, x):
        if x.ndim == 0 or sharding.path_str(path[:1]) == "rng":
            return NamedSharding(mesh, P())
        return NamedSharding(mesh, sharding.spec_for(path[-1].key, tuple(x.shape), mesh))

    return jax.tree_util.tree_map_with_path(spec, state)


def apply_gradients(state: dict, grads: dict, tx) -> dict:
    updates, opt = tx.update(grads, state["opt"], state["params"])
    return {**state, "params": optax.apply_updates(state["params"], updates), "opt": opt,
            "step": state["step"] + 1}


def jit_step(fn, mesh, state_sh, frozen_sh, batch_sh):
    """`fn(state, frozen, batch) -> (state, metrics)` jitted with explicit in/out shardings; the
    state is donated (updated in place)."""
    return jax.jit(fn, in_shardings=(state_sh, frozen_sh, batch_sh),
                   out_shardings=(state_sh, NamedSharding(mesh, P())), donate_argnums=(0,))


# ---- host batches -> device ----------------------------------------------------------------

# Batch axis (after the leading micro-batch axis) of each array; patch arrays use the patch axis.
BATCH_AXIS = {"input_ids": 1, "attention_mask": 1, "loss_mask": 1, "position_ids": 2, "pixel_values": 1,
              "window_index": 1, "reverse_index": 1, "rope_hw": 1, "window_groups": 1, "image_groups": 1,
              "advantages": 1, "old_logp": 1, "ref_logp": 1}
PATCH_KEYS = ("pixel_values", "window_index", "reverse_index", "rope_hw", "window_groups", "image_groups")


def batch_shardings(batch: dict, mesh):
    """Token arrays split over the data axes on their batch axis. Patch arrays: replicated in a
    single process (every device sees all images of the step); split by process otherwise."""
    multi = jax.process_count() > 1

    def spec(path, x):
        name = sharding.path_str(path).split("/")[-1]
        if name in PATCH_KEYS and not multi:
            return NamedSharding(mesh, P())
        return sharding.batch_sharding(mesh, x.ndim, BATCH_AXIS[name])

    return jax.tree_util.tree_map_with_path(spec, batch)


def _offset_vision(vis: dict, num_patches: int, unit: int) -> dict:
    """Process-local vision indices -> global ones: this process's patches follow those of the
    lower-ranked processes (equal patch counts and group shapes per process)."""
    p = jax.process_index()
    out = dict(vis)
    for k in ("window_index", "reverse_index"):
        out[k] = vis[k] + p * (num_patches // unit)
    for k in ("window_groups", "image_groups"):
        out[k] = np.where(vis[k] >= 0, vis[k] + p * num_patches, -1)
    return out


def to_device(batch: dict, shardings, unit: int = 4):
    """Host numpy tree -> global jax arrays. Multi-process: each process holds its slice."""
    if jax.process_count() == 1:
        return jax.device_put(batch, shardings)
    if "vision" in batch:
        batch = {**batch, "vision": _offset_vision(batch["vision"], batch["pixel_values"].shape[1], unit)}
    return jax.tree.map(lambda x, s: jax.make_array_from_process_local_data(s, x), batch, shardings)


# ---- the loop ------------------------------------------------------------------------------

def restore_or_keep(ckpt: checkpoint.Checkpointer, state, data_iter) -> tuple[dict, int]:
    """Resume from the latest checkpoint (state onto its shardings, data iterator state) or
    return `state` unchanged with start step 0."""
    found = ckpt.restore_latest(checkpoint.abstract_like(state))  # the newest intact one
    if found is None:
        return state, 0
    step, restored, data_state, _ = found
    if data_state is not None:
        data_iter.set_state(data_state)
    log.info("resumed from %s step %d", ckpt.directory, step)
    return restored, step


def train(step_fn, state, frozen, next_batch, data_iter, total_steps: int, ckpt: checkpoint.Checkpointer,
          writer: metrics_writer.MetricsWriter, start_step: int = 0, lr_fn=None,
          flops_per_token: float | None = None, peak_flops: float | None = None, on_step=None):
    """Run steps start_step+1 .. total_steps. `next_batch()` -> (device batch, real token count);
    `data_iter.get_state()` is saved with every checkpoint. Saves every ckpt.save_every steps and
    at the end; SIGTERM saves and returns; a NaN/Inf loss raises (the last good checkpoint stays).
    Returns (state, last step done)."""
    step = start_step
    bar = metrics_writer.progress_bar(total_steps, start_step, enabled=jax.process_index() == 0)
    last_saved = ckpt.latest_step()
    with guards.StopRequest() as stop:
        batch, n_tokens = next_batch() if step < total_steps else (None, 0)
        while step < total_steps:
            t0 = time.perf_counter()
            state, metrics = step_fn(state, frozen, batch)
            step += 1
            data_state = data_iter.get_state()
            if step < total_steps:  # prepare the next batch while the device works
                batch, next_tokens = next_batch()
            metrics = jax.device_get(metrics)
            guards.check_finite(step, last_saved, loss=metrics["loss"], grad_norm=metrics["grad_norm"])
            dt = time.perf_counter() - t0
            out = {k: float(v) for k, v in metrics.items()}
            out["tokens_per_s"] = n_tokens / dt
            out["step_time_s"] = dt
            if lr_fn is not None:
                out["lr"] = float(lr_fn(step - 1))
            if flops_per_token and peak_flops:
                out["mfu"] = metrics_writer.mfu(out["tokens_per_s"], flops_per_token, peak_flops)
            writer.write(step, out)
            bar.update(1)
            bar.set_postfix(loss=f"{out['loss']:.4f}")
            if on_step is not None:
                on_step(step, out)
            final = step == total_steps or stop.requested
            if ckpt.save(step, state, data_state, {"step": step}, force=final):
                last_saved = step
            if stop.requested:
                log.warning("%s received: saved step %d, stopping", stop.signal_name, step)
                break
            if step < total_steps:
                n_tokens = next_tokens
    ckpt.wait()
    bar.close()
    return state, step


# ---- hand-over to the next job ---------------------------------------------------------------

def save_trainable(directory: str, params: dict, meta: dict) -> str:
    """`<directory>/trainable.safetensors`: one tensor per trained parameter, named by its
    '/'-joined path (LoRA factors, or all language-model weights when lora.rank = 0), plus
    `trainable.json` (the lora config and the base model). Written on process 0."""
    if jax.process_index() != 0:
        return directory
    os.makedirs(directory, exist_ok=True)
    arrays = {k: np.asarray(jax.device_get(v)) for k, v in params.items()}
    tmp = os.path.join(directory, TRAINABLE_FILE + ".tmp")
    safetensors_io.save_file(arrays, tmp)
    os.replace(tmp, os.path.join(directory, TRAINABLE_FILE))
    with open(os.path.join(directory, TRAINABLE_META), "w") as f:
        json.dump(meta, f, indent=2)
    return directory


def load_trainable(directory: str) -> tuple[dict, dict]:
    """(params, meta) written by `save_trainable`."""
    path = os.path.join(directory, TRAINABLE_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {TRAINABLE_FILE} in {directory} (expected the output of an SFT run)")
    return {k: np.asarray(v) for k, v in safetensors_io.open_tensors(path).items()}, read_meta(directory)


def read_meta(directory: str) -> dict:
    """`trainable.json` of a save_trainable directory: the lora config and the base model."""
    path = os.path.join(directory, TRAINABLE_META)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {TRAINABLE_META} in {directory} (expected the final/ of an SFT or GRPO run)")
    with open(path) as f:
        return json.load(f)
