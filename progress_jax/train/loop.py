"""The one train loop and the train state, shared by the SFT and GRPO trainers.

- The model split into trained parameters, a flat dict {'/'-joined path: array} (the paths the
  family's partition rules match, e.g. `layers/self_attn/q_proj/lora_a` [layers, in, r]: the
  decoder layers are stacked), and the frozen rest (an nnx.State).
- `setup_state`: the train state {"params", "opt", "step", "rng"} placed on the (data, fsdp, tensor)
  mesh with its shardings (or, for the dry run, its abstract shape); the one set-up every job spec
  (progress_jax/jobs.py) and tools/bench_train.py use.
- Host batches -> global device arrays, sharded by the model family's batch axes.
- `run`: the loop. A trainer is a step function plus its set-up; the loop owns Orbax checkpoints
  (with the data iterator's state), resume from the latest, a clean stop on SIGTERM, a stop on a
  NaN/Inf loss, metrics (JSONL + TensorBoard), the training curves, the console line, the progress
  bar and periodic hooks.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from progress_jax import console, distributed, lora, sharding
from progress_jax.train import checkpoint, curves, guards, metrics_writer

log = logging.getLogger(__name__)


# ---- the model as trained parameters + frozen rest ---------------------------------------------

@dataclass
class Parts:
    graphdef: nnx.GraphDef
    template: list  # [(path, Variable holding a ShapeDtypeStruct)] of the trained variables
    frozen: nnx.State

    def model(self, params: dict, frozen: nnx.State | None = None):
        """The module from flat trained params (works on tracers inside jit)."""
        items = [(p, v.replace(params[sharding.path_str(p)])) for p, v in self.template]
        return nnx.merge(self.graphdef, nnx.from_flat_state(items), self.frozen if frozen is None else frozen)


def split(model, wrt) -> tuple[Parts, dict]:
    """(Parts, trained params as a flat dict) for the NNX filter `wrt` (see lora.trainable_filter)."""
    graphdef, trained, frozen = nnx.split(model, wrt, ...)
    flat = nnx.to_flat_state(trained)
    if not len(flat):
        raise ValueError("the trainable filter selects no parameter")
    template = [(p, v.replace(jax.ShapeDtypeStruct(v.shape, v.get_value().dtype))) for p, v in flat]
    return Parts(graphdef, template, frozen), {sharding.path_str(p): v.get_value() for p, v in flat}


def hidden_states(model, mb: dict, mesh=None, remat: str = "none", dropout_rng=None):
    """The final hidden states [B, L, D] of one micro-batch (family.stack_micro's arrays), batch
    dimension on the data axes: the forward both trainers' losses start from. `remat` applies to
    the decoder layers and the vision blocks alike."""
    x = sharding.constrain_batch(model.embed(mb["input_ids"], mb.get("pixel_values"), mb.get("vision"),
                                             remat=remat), mesh)
    hidden, _ = model.decode(x, mb["position_ids"], mb["attention_mask"], dropout_rng=dropout_rng, remat=remat)
    return sharding.constrain_batch(hidden, mesh)


# ---- train state and shardings -------------------------------------------------------------

def init_state(params: dict, tx: optax.GradientTransformation, seed: int) -> dict:
    """Adam moments exist for the trained params only (frozen ones are never given to optax)."""
    return {"params": params, "opt": tx.init(params), "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.PRNGKey(seed)}


def state_shardings(state, mesh, rules):
    """Params and their optimizer moments by the model family's partition rules (`rules`, e.g.
    model.partition_rules; the flat key is the rule path); scalars, counts and the RNG key replicated."""
    def spec(path, x):
        if x.ndim == 0 or sharding.path_str(path[:1]) == "rng":
            return NamedSharding(mesh, P())
        return NamedSharding(mesh, sharding.spec_for(path[-1].key, tuple(x.shape), mesh, rules))

    return jax.tree_util.tree_map_with_path(spec, state)


def apply_gradients(state: dict, grads: dict, tx) -> dict:
    updates, opt = tx.update(grads, state["opt"], state["params"])
    return {**state, "params": optax.apply_updates(state["params"], updates), "opt": opt,
            "step": state["step"] + 1}


def jit_step(fn, mesh, state_sh, frozen_sh, batch_sh=None):
    """`fn(state, frozen, batch) -> (state, metrics)` jitted with explicit in/out shardings; the
    state is donated (updated in place). The batch's shardings are its arrays' own (to_device with
    batch_shardings) unless `batch_sh` is given: one jitted program for every batch structure (a
    batch with or without image patches), compiled once per structure and shape."""
    return jax.jit(fn, in_shardings=(state_sh, frozen_sh, batch_sh),
                   out_shardings=(state_sh, NamedSharding(mesh, P())), donate_argnums=(0,))


@dataclass
class Setup:
    """What a trainer needs of its state: the model parts, the placed state and the shardings, and
    the frozen arrays its programs take (parts.frozen; abstract: with their shardings)."""
    parts: Parts
    state: dict
    state_sh: object
    frozen_sh: object
    frozen: object = None

    def __post_init__(self):
        if self.frozen is None:
            self.frozen = self.parts.frozen


def with_shardings(tree, shardings):
    """ShapeDtypeStructs (or arrays) -> ShapeDtypeStructs carrying `shardings`."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def setup_state(model, mesh, tx, *, rank: int, freeze_vision: bool = True, seed: int = 0,
                abstract: bool = False) -> Setup:
    """Split `model` into trained params (lora.trainable_filter) and the frozen rest, build the
    train state for optimizer `tx` and place it on `mesh`. abstract: `model` from nnx.eval_shape;
    the state and the frozen arrays become ShapeDtypeStructs with their shardings (the dry run)."""
    parts, params = split(model, lora.trainable_filter(rank, freeze_vision))
    rules = model.partition_rules
    frozen_sh = sharding.param_shardings(parts.frozen, mesh, rules)
    if abstract:
        shape = jax.eval_shape(lambda: init_state(params, tx, seed))
        state_sh = state_shardings(shape, mesh, rules)
        return Setup(parts, with_shardings(shape, state_sh), state_sh, frozen_sh,
                     with_shardings(parts.frozen, frozen_sh))
    state = init_state(params, tx, seed)
    state_sh = state_shardings(jax.eval_shape(lambda: state), mesh, rules)
    return Setup(parts, jax.device_put(state, state_sh), state_sh, frozen_sh)


# ---- host batches -> device ----------------------------------------------------------------

# Batch axis (after the leading micro-batch axis) of the trainers' own arrays; the model's inputs
# take theirs from the model family (progress_jax.models.families).
TRAIN_AXIS = {"loss_mask": 1, "advantages": 1, "old_logp": 1, "ref_logp": 1}


def batch_shardings(batch: dict, mesh, family):
    """Arrays split over the data axes on their batch axis: token arrays by rows, patch arrays
    (family.PATCH_KEYS) by batch shard, each shard's images with its rows (family.stack_micro with
    shards=sharding.batch_shards(mesh)), so each device runs the vision tower on its own images.
    Patch arrays of a single shard are replicated (every device encodes all images)."""
    axis = {**TRAIN_AXIS, **family.BATCH_AXIS}

    def spec(path, x):
        name = sharding.path_str(path).split("/")[-1]
        if name in family.PATCH_KEYS and x.shape[axis[name]] == 1:
            return NamedSharding(mesh, P())
        return sharding.batch_sharding(mesh, x.ndim, axis[name])

    return jax.tree_util.tree_map_with_path(spec, batch)


def to_device(batch: dict, shardings, family=None):
    """Host numpy tree of the global batch -> global jax arrays. Several processes: every process
    holds the same global batch (docs/multihost.md) and places the slices its own devices hold."""
    if jax.process_count() == 1:
        return jax.device_put(batch, shardings)
    return jax.tree.map(lambda x, s: jax.make_array_from_callback(x.shape, s, lambda idx: x[idx]), batch, shardings)


# ---- the loop ------------------------------------------------------------------------------

@dataclass
class Hook:
    """A periodic job inside the loop: `fn(step, state) -> metrics` every `every` steps and at the
    last step (and, with at_start, before the first step of a fresh run, logged as step 0). Its
    metrics join the step's line. A validation pass is one more Hook."""
    fn: Callable[[int, dict], dict]
    every: int
    at_start: bool = False

    def due(self, step: int, total: int) -> bool:
        return self.every > 0 and (step % self.every == 0 or step == total)


@dataclass
class Result:
    state: dict
    step: int  # the last step done
    start: int  # the step the run resumed from (0: fresh)
    stopped: bool  # a SIGTERM ended it before total_steps


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


@dataclass
class Options:
    """How `run` runs a trainer. total_steps: steps of the run; checkpoints in
    <workdir>/checkpoints every save_every steps and at the end, the newest `keep` kept; metrics in
    <workdir>/metrics.jsonl and TensorBoard (and W&B with wandb_project). show: the metric on the
    bar and the console line ("loss", or GRPO's "reward/overall"), one line every log_every steps
    and at the last (0: none). lr_fn(step - 1): the learning rate of a step; flops_per_token and
    peak_flops: for MFU. run_config: the run's defining config (checkpoint.run_config), stored with
    every checkpoint and compared at resume (a changed key is refused). ckpt: a Checkpointer to use
    instead of the default one."""
    total_steps: int
    workdir: str
    save_every: int
    keep: int
    log_every: int = 0
    desc: str = "train"
    show: str = "loss"
    hooks: tuple = ()
    lr_fn: Callable | None = None
    flops_per_token: float | None = None
    peak_flops: float | None = None
    run_config: dict | None = None
    wandb_project: str = ""
    ckpt: checkpoint.Checkpointer | None = None


def console_line(desc: str, step: int, total: int, out: dict, show: str) -> str:
    """One short line of a step: the shown metric, the learning rate and the throughput."""
    parts = [f"{desc} step {step}/{total}", f"{show.split('/')[0]} {out[show]:.4f}"]
    if "lr" in out:
        parts.append(f"lr {out['lr']:.2e}")
    if "tokens_per_s" in out:
        parts.append(f"tokens/s {out['tokens_per_s']:.0f}")
    return "  ".join(parts)


def run(step_fn, state, next_batch, data_iter, opts: Options) -> Result:
    """Steps (resumed from the latest checkpoint in <workdir>/checkpoints) up to opts.total_steps.

    step_fn(state, batch, step) -> (state, metrics): one step; metrics hold "loss" and "grad_norm"
    (checked for NaN/Inf) and may hold "tokens", a host count that becomes tokens_per_s.
    next_batch() -> the next batch, drawn from data_iter, whose get_state() is saved with every
    checkpoint. The next batch is prepared while the device works on the current one. SIGTERM
    saves the step in progress and returns (stopped); a NaN/Inf raises guards.NonFiniteLossError
    (the last good checkpoint stays). Metrics are written by process 0 only."""
    total_steps, workdir, hooks, show = opts.total_steps, opts.workdir, opts.hooks, opts.show
    main = jax.process_index() == 0
    ckpt = opts.ckpt or checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), opts.save_every, opts.keep,
                                                run_config=opts.run_config)
    distributed.watch_checkpoints(ckpt.directory)  # named if another process stops mid-run
    state, start = restore_or_keep(ckpt, state, data_iter)
    step = start
    last_saved = ckpt.latest_step()
    try:
        with guards.StopRequest() as stop, metrics_writer.MetricsWriter(
                workdir, enabled=main, wandb_project=opts.wandb_project, wandb_config=opts.run_config) as writer:
            if start == 0:
                first = {}
                for h in hooks:
                    if h.at_start:
                        first.update(h.fn(0, state))
                if first:
                    writer.write(0, first)
            bar = console.progress_bar(total_steps, start, desc=opts.desc, enabled=main)
            batch = next_batch() if step < total_steps else None
            while step < total_steps:
                t0 = time.perf_counter()
                state, metrics = step_fn(state, batch, step + 1)
                step += 1
                data_state = data_iter.get_state()
                if step < total_steps:  # prepare the next batch while the device works
                    batch = next_batch()
                metrics = dict(jax.device_get(metrics))
                guards.check_finite(step, last_saved, loss=metrics["loss"], grad_norm=metrics["grad_norm"])
                dt = time.perf_counter() - t0
                out = {k: float(v) for k, v in metrics.items() if k != "tokens"}
                if "tokens" in metrics:
                    out["tokens_per_s"] = float(metrics["tokens"]) / dt
                out.setdefault("step_time_s", dt)
                if opts.lr_fn is not None:
                    out["lr"] = float(opts.lr_fn(step - 1))
                if opts.flops_per_token and opts.peak_flops and "tokens_per_s" in out:
                    out["mfu"] = metrics_writer.mfu(out["tokens_per_s"], opts.flops_per_token, opts.peak_flops)
                for h in hooks:
                    if h.due(step, total_steps):
                        out.update(h.fn(step, state))
                writer.write(step, out)
                bar.update(1)
                bar.set_postfix({show: f"{out[show]:.4f}"})
                if main and opts.log_every and (step % opts.log_every == 0 or step == total_steps):
                    log.info("%s", console_line(opts.desc, step, total_steps, out, show))
                if ckpt.save(step, state, data_state, {"step": step}, force=step == total_steps or stop.requested):
                    last_saved = step
                if stop.requested:
                    log.warning("%s received: saved step %d, stopping; rerun the same command to resume",
                                stop.signal_name, step)
                    break
            bar.close()
    finally:  # pending saves finish even when a NaN stops the run
        ckpt.wait()
        ckpt.close()
        if main:
            curves.draw(workdir)
    return Result(state, step, start, stop.requested and step < total_steps)
