"""`--dry_run`: know before running whether a job fits its devices.

The model is built abstractly (`nnx.eval_shape`: no weights; model.path's config.json is the only
file read, no data file is), the job's programs are compiled ahead of time for the configured mesh
and the largest shapes its buckets allow (`jax.jit(...).trace(abstract args with shardings).lower()
.compile()`), and XLA's own analyses give, per device, the bytes of the arguments (parameters,
optimizer state, batch), temporaries and outputs, the FLOPs and the compile time. A program fits
when arguments + temporaries + outputs (less the donated, aliased part) are at most
train.device_memory_gb.

Programs: sft -> `train_step`; grpo (and the demo's GRPO) -> `rollout` (prefill + decode with the
KV cache, one generation call of sampling.batch_size rows), `logprobs` (the old/reference
log-probs of one update's rows), `train_step` (one update); eval -> `rollout`.

The shapes: the largest length bucket; images of 448x448 pixels (1024 patches, 256 tokens) filling
the largest patch bucket as far as the rows' prompt length holds them. XLA's cost analysis counts a
loop body once: its FLOPs are scaled by the scans' trips (decoder layers, vision blocks, micro-batches;
see loop_factor); the rollout's are those of the prefill plus one decode step.
"""
from __future__ import annotations

import json
import math
import time

import jax
import jax.extend.core as jax_core
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from progress_jax import distributed, loading, lora, sampling, sharding
from progress_jax.models import families
from progress_jax.train import inputs, loop, rollouts, schedule

GIB = 2**30
IMAGE_SIDE = 32  # patches per image side: 448 px at patch size 14
TEXT_ROOM = 64  # prompt tokens kept for text beside the images


# ---- the abstract model ------------------------------------------------------------------------

def abstract_policy(cfg, family, arch):
    """The job's model with LoRA per cfg.lora, every array a ShapeDtypeStruct."""
    param, compute = loading.DTYPES[cfg.model.param_dtype], loading.DTYPES[cfg.model.compute_dtype]

    def build():
        model = family.build(arch, cfg.seed, compute, param)
        lora.from_config(model, cfg.lora, seed=cfg.seed)
        return loading.set_attention_chunk(model, cfg.model.attention_chunk)

    return nnx.eval_shape(build)


def _with_shardings(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _abstract(tree, shardings, lead: int | None = None):
    """NumPy arrays -> ShapeDtypeStructs (leading axis set to `lead`) with their shardings."""
    def one(x, s):
        shape = x.shape if lead is None else (lead,) + x.shape[1:]
        return jax.ShapeDtypeStruct(shape, x.dtype, sharding=s)

    return jax.tree.map(one, tree, shardings)


def _device_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += math.prod(shape) * jnp.dtype(x.dtype).itemsize
    return total


# ---- synthetic batches of the largest shapes -----------------------------------------------------

def host_batch(arch, rows: int, length: int, patches: int, prompt_length: int | None = None) -> dict:
    """A pipeline-like host batch: `rows` rows of `length` tokens, the first `prompt_length` of each
    (default: all) holding images of IMAGE_SIDE^2 patches, as many as fill `patches` patch rows."""
    v = arch.vision
    unit = IMAGE_SIDE * IMAGE_SIDE
    tokens = unit // v.spatial_merge_size**2
    per_row = max(0, ((prompt_length or length) - TEXT_ROOM) // (tokens + 2))
    n_images = min(patches // unit, rows * per_row)
    ids = np.full((rows, length), 100, np.int32)  # any text token
    counts = [n_images // rows + (r < n_images % rows) for r in range(rows)]
    for r, c in enumerate(counts):
        pos = 0
        for _ in range(c):
            ids[r, pos] = arch.vision_start_token_id
            ids[r, pos + 1:pos + 1 + tokens] = arch.image_token_id
            ids[r, pos + 1 + tokens] = arch.vision_end_token_id
            pos += tokens + 2
    grid = np.tile(np.array([[1, IMAGE_SIDE, IMAGE_SIDE]], np.int64), (max(n_images, 1), 1))
    if not n_images:
        grid[:] = 0
    return {"input_ids": ids, "attention_mask": np.ones((rows, length), np.int32),
            "loss_mask": np.ones((rows, length), np.int32),
            # one column: the patch rows are all that the index arrays need (see _wide)
            "pixel_values": np.zeros((patches, 1), np.float32), "image_grid_thw": grid}


def _wide(arrays: dict, arch) -> dict:
    """pixel_values at their real width, as a broadcast view (no host memory for the patches)."""
    if "pixel_values" not in arrays:  # no image fits the prompt length
        return arrays
    pv = arrays["pixel_values"]
    return {**arrays, "pixel_values": np.broadcast_to(np.zeros((), pv.dtype), pv.shape[:-1] + (arch.vision.patch_dim,))}


def _train_batch(cfg, arch, family, mesh, rows: int, length: int, patches: int, k: int, prompt_length=None,
                 extra: dict | None = None):
    """(abstract stacked micro-batches [k, rows, ...] with their shardings, their shardings)."""
    # Patches per batch shard, as the trainers lay them out (each device encodes its rows' images).
    host = host_batch(arch, rows, length, patches, prompt_length)
    stacked = _wide(family.stack_micro([host], arch, shards=sharding.batch_shards(mesh)), arch)
    stacked.update(extra or {})
    sh = loop.batch_shardings(stacked, mesh, family)
    return _abstract(stacked, sh, lead=k), sh


# ---- one compiled program ------------------------------------------------------------------------

def compile_program(name: str, jitted, args, devices: int, limit_gb: float, static: dict | None = None,
                    params_bytes: int = 0, opt_bytes: int = 0, micro_batches: int = 1) -> dict:
    """micro_batches: trips of the program's micro-batch loop (reported). XLA's cost analysis counts
    a loop body once; its FLOPs are scaled by loop_factor (the scanned layers, micro-batches)."""
    t0 = time.perf_counter()
    traced = jitted.trace(*args, **(static or {}))
    compiled = traced.lower().compile()
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    b = {"arguments": int(mem.argument_size_in_bytes), "temp": int(mem.temp_size_in_bytes),
         "output": int(mem.output_size_in_bytes), "alias": int(mem.alias_size_in_bytes),
         "params": params_bytes, "optimizer": opt_bytes}
    peak = b["arguments"] + b["temp"] + b["output"] - b["alias"]
    flops = float((cost or {}).get("flops", 0.0)) * loop_factor(traced.jaxpr)
    return {"name": name, "devices": devices, "flops_per_device": flops, "micro_batches": micro_batches,
            "bytes_per_device": b, "peak_bytes_per_device": peak, "compile_s": round(seconds, 2),
            "fits": peak <= limit_gb * GIB}


def loop_factor(jaxpr) -> float:
    """XLA's cost analysis counts each loop body once, the decoder layers' and vision blocks' scans
    and the micro-batch loop included. The program's matmul FLOPs from its jaxpr, with every scan
    body counted `length` times, over the same count with each body once: the factor that scales
    XLA's count to the program's. A while loop (the rollout's decode loop, whose trips are not
    known) stays counted once."""
    once = _matmul_flops(jaxpr, trips=False)
    return _matmul_flops(jaxpr, trips=True) / once if once else 1.0


def _matmul_flops(jaxpr, trips: bool) -> float:
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)  # a ClosedJaxpr's Jaxpr
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
        n = eqn.params.get("length", 1) if trips and eqn.primitive.name == "scan" else 1
        for sub in jax_core.jaxprs_in_params(eqn.params):
            total += n * _matmul_flops(sub, trips)
    return total


# ---- the jobs' programs --------------------------------------------------------------------------

def _state(cfg, model, mesh, tx):
    """(parts, abstract state with shardings, its shardings, abstract frozen, its shardings)."""
    parts, params = loop.split(model, lora.trainable_filter(cfg.lora.rank, cfg.model.freeze_vision))
    state = jax.eval_shape(lambda: loop.init_state(params, tx, cfg.seed))
    state_sh = loop.state_shardings(state, mesh, model.partition_rules)
    frozen_sh = sharding.param_shardings(parts.frozen, mesh, model.partition_rules)
    return parts, _with_shardings(state, state_sh), state_sh, _with_shardings(parts.frozen, frozen_sh), frozen_sh


def _sizes(state, frozen) -> tuple[int, int]:
    return _device_bytes(state["params"]) + _device_bytes(frozen), _device_bytes(state["opt"])


def _optimizer(cfg):
    t = cfg.train
    return schedule.make_optimizer(t.lr, t.weight_decay, t.warmup_ratio, 100, t.clip_norm or None, schedule=t.schedule)


def sft_programs(cfg, arch, model, mesh, family) -> list[dict]:
    from progress_jax.train import sft

    t, d = cfg.train, cfg.data
    rows = t.micro_batch_size  # global (docs/multihost.md)
    inputs.check_micro_batch(rows, mesh)
    k = t.batch_size // rows
    tx = _optimizer(cfg)
    parts, state, state_sh, frozen, frozen_sh = _state(cfg, model, mesh, tx)
    batch, batch_sh = _train_batch(cfg, arch, family, mesh, rows, d.length_buckets[-1], d.patch_buckets[-1], k)
    step = sft.make_step(parts, tx, mesh, cfg.model.remat, t.loss_chunk, dropout=cfg.lora.dropout > 0)
    jitted = loop.jit_step(step, mesh, state_sh, frozen_sh, batch_sh)
    p, o = _sizes(state, frozen)
    return [compile_program("train_step", jitted, (state, frozen, batch), mesh.size, t.device_memory_gb,
                            params_bytes=p, opt_bytes=o, micro_batches=k)]


def _prompt_inputs(cfg, arch, mesh, rows: int, patches: int):
    """Abstract inputs of one generation call (sampling.prepare of a synthetic prompt batch)."""
    host = host_batch(arch, rows, cfg.data.length_buckets[-1], patches)
    inputs = _wide(sampling.prepare(host, arch, arch.pad_token_id, sharding.batch_shards(mesh)), arch)
    inputs.pop("num_rows")
    sh = sampling.input_shardings(inputs, mesh, families.for_model(arch))
    return _abstract(inputs, sh), inputs["input_ids"].shape[0]


def rollout_program(cfg, arch, model, mesh, rows: int, patches: int) -> dict:
    """One generation call of `rows` prompts: prefill + decode of sampling.max_new_tokens."""
    graphdef, state = nnx.split(model)
    state = _with_shardings(state, sharding.param_shardings(state, mesh, model.partition_rules))
    inputs, padded = _prompt_inputs(cfg, arch, mesh, rows, patches)
    rep = NamedSharding(mesh, P())
    scalar = lambda dt: jax.ShapeDtypeStruct((), dt, sharding=rep)  # noqa: E731
    knobs = {"temperature": scalar(jnp.float32), "top_p": scalar(jnp.float32), "top_k": scalar(jnp.int32),
             "logprobs_at_temperature": scalar(jnp.bool_), "pad_id": scalar(jnp.int32),
             "stop_ids": jax.ShapeDtypeStruct((4,), jnp.int32, sharding=rep)}
    key = jax.eval_shape(lambda: jax.random.key(0))
    key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep)
    out = compile_program("rollout", sampling._generate, (graphdef, state, inputs, key, knobs),
                          mesh.size, cfg.train.device_memory_gb, params_bytes=_device_bytes(state),
                          static={"max_new_tokens": int(cfg.sampling.max_new_tokens), "mesh": mesh})
    out["rows"] = padded
    # The KV cache and activations grow with the rows, the weights do not: the largest call that fits.
    # Each device holds padded / shards rows.
    shards = sharding.batch_shards(mesh)
    per_row = max(1, (out["peak_bytes_per_device"] - out["bytes_per_device"]["params"]) * shards / padded)
    room = cfg.train.device_memory_gb * GIB - out["bytes_per_device"]["params"]
    out["max_batch_size"] = max(0, int(room // per_row) * shards)
    return out


def grpo_programs(cfg, arch, model, mesh, family) -> list[dict]:
    from progress_jax.train import grpo

    g, t, d, s = cfg.grpo, cfg.train, cfg.data, cfg.sampling
    all_rows = g.rollout_batch_size * g.n
    gen_rows = min(s.batch_size, all_rows)
    # The prompt batch's patch bucket spread over its prompts; rollouts of a prompt share its images.
    gen_patches = max(IMAGE_SIDE**2, d.patch_buckets[-1] * gen_rows // g.rollout_batch_size)
    out = [rollout_program(cfg, arch, model, mesh, gen_rows, gen_patches)]

    rows = t.micro_batch_size
    inputs.check_micro_batch(rows, mesh, "rollout rows")
    k = t.batch_size * g.n // rows
    length = rollouts.bucket(d.length_buckets[-1] + s.max_new_tokens,
                             [-(-(b + s.max_new_tokens) // 128) * 128 for b in d.length_buckets])
    patches = d.patch_buckets[-1]
    tx = _optimizer(cfg)
    parts, state, state_sh, frozen, frozen_sh = _state(cfg, model, mesh, tx)
    p, o = _sizes(state, frozen)
    logp = np.zeros((1, rows, length - 1), np.float32)
    extra = {"advantages": np.zeros((1, rows), np.float32)}
    batch, batch_sh = _train_batch(cfg, arch, family, mesh, rows, length, patches, k, d.length_buckets[-1], extra)
    logp_fn = jax.jit(grpo.make_logp_fn(parts, s.temperature, mesh, cfg.model.remat, loss_chunk=cfg.train.loss_chunk),
                      in_shardings=(state_sh["params"], frozen_sh, batch_sh))
    out.append(compile_program("logprobs", logp_fn, (state["params"], frozen, batch), mesh.size,
                               t.device_memory_gb, params_bytes=p, micro_batches=k))
    extra.update(old_logp=logp, ref_logp=logp)
    batch, batch_sh = _train_batch(cfg, arch, family, mesh, rows, length, patches, k, d.length_buckets[-1], extra)
    update = grpo.make_update(parts, tx, g, s.temperature, mesh, cfg.model.remat, cfg.train.loss_chunk)
    jitted = loop.jit_step(update, mesh, state_sh, frozen_sh, batch_sh)
    out.append(compile_program("train_step", jitted, (state, frozen, batch), mesh.size, t.device_memory_gb,
                               params_bytes=p, opt_bytes=o, micro_batches=k))
    return out


def eval_programs(cfg, arch, model, mesh, family) -> list[dict]:
    return [rollout_program(cfg, arch, model, mesh, cfg.sampling.batch_size, cfg.data.patch_buckets[-1])]


PROGRAMS = {"sft": sft_programs, "grpo": grpo_programs, "demo": grpo_programs, "eval": eval_programs}


def dry_run(cfg) -> list[dict]:
    """Compile the job's programs abstractly; one report dict per program."""
    mesh = distributed.make_mesh(cfg)
    family = families.for_config(cfg)
    arch = family.architecture(cfg.model.path, cfg.model.preset)  # config.json is the only file read
    model = abstract_policy(cfg, family, arch)
    return PROGRAMS[cfg.job](cfg, arch, model, mesh, family)


# ---- output ----------------------------------------------------------------------------------

def to_json(programs: list[dict]) -> str:
    return json.dumps({"programs": programs}, indent=2)


def table(programs: list[dict], limit_gb: float) -> str:
    gb = lambda n: f"{n / GIB:.2f}"  # noqa: E731
    head = ("| program | devices | params GiB | optimizer GiB | arguments GiB | temp GiB | output GiB | "
            f"peak GiB | fits {limit_gb:g} GiB | TFLOPs/device | compile s |")
    lines = [head, "|" + "---|" * 11]
    for p in programs:
        b = p["bytes_per_device"]
        lines.append(f"| {p['name']} | {p['devices']} | {gb(b['params'])} | {gb(b['optimizer'])} | "
                     f"{gb(b['arguments'])} | {gb(b['temp'])} | {gb(b['output'])} | "
                     f"{gb(p['peak_bytes_per_device'])} | {'yes' if p['fits'] else 'NO'} | "
                     f"{p['flops_per_device'] / 1e12:.3f} | {p['compile_s']:.1f} |")
    for p in programs:
        if p["name"] == "rollout":
            lines.append(f"rollout: {p['rows']} rows per generation call (sampling.batch_size); about "
                         f"{p['max_batch_size']} would fit in {limit_gb:g} GiB"
                         + ("" if p["fits"] else " -- lower --config.sampling.batch_size"))
        elif not p["fits"]:
            lines.append(f"{p['name']} does not fit: lower --config.train.micro_batch_size, set "
                         "--config.model.remat=full, or use more devices (--config.mesh.*)")
    return "\n".join(lines)
