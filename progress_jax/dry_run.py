"""`--dry_run`: know before running whether a job fits its devices.

The job's spec is built abstractly (progress_jax/jobs.py with abstract=True: the model by
`nnx.eval_shape`, no weights; model.path's config.json is the only file read, no data file is;
with eval.trained, that run's trainable.json for its LoRA rank), and the very programs a run executes
(the spec's) are compiled ahead of time for the configured mesh and the largest shapes its buckets
allow (`program.trace(abstract args with shardings).lower().compile()`); XLA's own analyses give,
per device, the bytes of the arguments (parameters, optimizer state, batch), temporaries and
outputs, the FLOPs and the compile time. A program fits when arguments + temporaries + outputs
(less the donated, aliased part) are at most train.device_memory_gb.

Programs (jobs.py): sft -> `train_step`; grpo (and the demo's GRPO) -> `rollout` (the engine's
two programs, reported as `rollout`: prefill + insert of as many prompts as fill the
sampling.batch_size slots, grpo.n slots per prompt sharing its prefill, and `decode`: a chunk of
decode steps over the slots, with its collective bytes per step, the KV cache's bytes per device and
the slots it holds; both with the weights in sampling.decode_layout, their params bytes that
layout's), `logprobs` (the old log-probs of one update's rows), `ref_logprobs` (with grpo.kl_coef
and LoRA: the reference's, LoRA off), `train_step` (one update); eval -> `rollout`.
The schedule's length: train.steps, or jobs.DRY_STEPS where it is 0 (the run counts the samples).

The shapes: the largest length bucket; images of 448x448 pixels (1024 patches, 256 tokens) filling
the largest patch bucket as far as the rows' prompt length holds them. XLA's cost analysis counts a
loop body once: its FLOPs are scaled by the scans' trips (decoder layers, vision blocks, micro-batches;
see loop_factor); a while loop of unknown trips counts once (the decode's: one step). Communication:
the bytes of the collectives in the compiled program, per device (collective_bytes).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import time

import jax
import jax.extend.core as jax_core
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from progress_jax import distributed, jobs, sampling, sharding
from progress_jax.train import loop

GIB = 2**30
IMAGE_SIDE = 32  # patches per image side: 448 px at patch size 14
TEXT_ROOM = 64  # prompt tokens kept for text beside the images


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


def _train_batch(spec: jobs.Spec, rows: int, length: int, patches: int, k: int, prompt_length=None,
                 extra: dict | None = None) -> dict:
    """Abstract stacked micro-batches [k, rows, ...] with their shardings, laid out as the trainers
    lay them out (family.stack_micro with the mesh's batch shards: each device encodes its rows' images)."""
    arch = spec.model.config
    host = host_batch(arch, rows, length, patches, prompt_length)
    stacked = _wide(spec.family.stack_micro([host], arch, shards=sharding.batch_shards(spec.mesh)), arch)
    stacked.update(extra or {})
    return _abstract(stacked, loop.batch_shardings(stacked, spec.mesh, spec.family), lead=k)


# ---- one compiled program ------------------------------------------------------------------------

def compile_program(name: str, program, args, devices: int, limit_gb: float, params_bytes: int = 0,
                    opt_bytes: int = 0, micro_batches: int = 1) -> dict:
    """`program.trace(*args)` lowered and compiled. micro_batches: trips of the program's
    micro-batch loop (reported). XLA's cost analysis counts a loop body once; its FLOPs are scaled
    by loop_factor (the scanned layers, micro-batches)."""
    t0 = time.perf_counter()
    traced = program.trace(*args)
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
            "comm_bytes": collective_bytes(compiled.as_text()),
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


COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
                "f64": 8, "s64": 8, "u64": 8}


def collective_bytes(hlo: str) -> int:
    """Bytes of the collectives' results one device's compiled program (HLO text, after SPMD
    partitioning) produces in one run of its entry computation: a loop body of known trip count (the
    decoder layers' scan) counted that many times, one of unknown count (the decode chunk's steps,
    the attention's blocks) once, a conditional's costlier branch."""
    comps, name, body = {}, None, []
    for line in hlo.splitlines():
        head = re.match(r"^(ENTRY )?%?([\w.\-]+) .*\{$", line)
        if head and name is None:
            name, body = ("ENTRY" if head.group(1) else head.group(2)), []
        elif line.startswith("}") and name is not None:
            comps[name], name = body, None
        elif name is not None:
            body.append(line)

    def size(shape: str) -> int:
        return sum(_DTYPE_BYTES.get(t, 4) * math.prod(int(d) for d in dims.split(",") if d)
                   for t, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", shape))

    @functools.lru_cache(maxsize=None)
    def total(comp: str) -> int:
        out = 0
        for line in comps.get(comp, ()):
            m = re.match(r"^\s*(?:ROOT )?%?[\w.\-]+ = (.+?) ([a-z\-]+)\(", line)
            if not m:
                continue
            shape, op = m.groups()
            if op.removesuffix("-start") in COLLECTIVES:
                out += size(shape) // (2 if op.endswith("-start") else 1)  # a start's tuple: operand, result
            elif op == "while":
                trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
                out += (int(trips.group(1)) if trips else 1) * total(re.search(r"body=%?([\w.\-]+)", line).group(1))
            elif op == "conditional":
                branches = re.search(r"branch_computations=\{([^}]*)\}", line)
                names = [b.strip().lstrip("%") for b in branches.group(1).split(",")] if branches else []
                out += max((total(b) for b in names), default=0)
            elif op == "call":
                out += total(re.search(r"to_apply=%?([\w.\-]+)", line).group(1))
        return out

    return total("ENTRY")


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


# ---- the jobs' programs at abstract arguments ---------------------------------------------------

def _sizes(state, frozen) -> tuple[int, int]:
    return _device_bytes(state["params"]) + _device_bytes(frozen), _device_bytes(state["opt"])


def _sharded_model(spec: jobs.Spec, model):
    """`model` with every array a ShapeDtypeStruct of its parameter sharding on the mesh (as the
    loaders place it)."""
    graphdef, state = nnx.split(model)
    shardings = sharding.param_shardings(state, spec.mesh, spec.model.partition_rules)
    return nnx.merge(graphdef, loop.with_shardings(state, shardings))


def rollout_args(spec: jobs.Spec, model, prompts: int, patches: int) -> tuple:
    """(model, slots, inputs, rows, slot_ids, key, settings) of the rollout's largest prefill +
    insert: a batch of `prompts` prompts (spec's rollout: its n samples each) in the engine's
    slots, as many prompts as fill them prefilled at once, holding `patches` image patches; the
    model's weights in the engine's layout (sampling.decode_layout), as generate lays them out."""
    rollout, arch, mesh = spec.programs["rollout"], spec.model.config, spec.mesh
    model = rollout.place(model)
    s, length = spec.config.sampling, spec.config.data.length_buckets[-1]
    slots = rollout.slots(prompts)
    group = slots // rollout.n
    host = host_batch(arch, group, length, patches)
    inputs = _wide(rollout.inputs(host, arch, arch.pad_token_id), arch)
    rep = NamedSharding(mesh, P())
    ids = np.arange(slots, dtype=np.int32)
    rows = {"row": ids, "prompt": ids // rollout.n, "limit": np.full_like(ids, s.max_new_tokens)}
    settings = sampling.knobs(rollout.params, sampling.stop_ids(arch, rollout.params))
    key = jax.eval_shape(lambda: jax.random.key(0))
    state = sampling.abstract_slots(model, slots, sampling.cache_length(length, s.max_new_tokens), mesh)
    small = lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=rep)  # noqa: E731
    return (model, state, _abstract(inputs, sampling.input_shardings(inputs, mesh, spec.family)),
            jax.tree.map(small, rows), small(ids), jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep),
            jax.tree.map(small, settings))


def program_args(spec: jobs.Spec) -> dict[str, tuple]:
    """{program name: its arguments} at the largest shapes: the train state, frozen arrays and
    model of `spec` (abstract, or a run's own arrays) and abstract batches with their shardings."""
    t, d, s = spec.config.train, spec.config.data, spec.config.sampling
    if spec.job == "eval":
        model = _sharded_model(spec, spec.model)
        return {"rollout": rollout_args(spec, model, s.batch_size, d.patch_buckets[-1])}
    state, frozen = spec.setup.state, spec.setup.frozen
    rows = t.micro_batch_size  # global (docs/multihost.md)
    if spec.job == "sft":
        batch = _train_batch(spec, rows, d.length_buckets[-1], d.patch_buckets[-1], t.batch_size // rows)
        return {"train_step": (state, frozen, batch)}
    g = spec.config.grpo
    prompts = spec.programs["rollout"].slots(g.rollout_batch_size) // g.n  # prefilled at once
    # The prompt batch's patch bucket spread over its prompts; rollouts of a prompt share its images.
    patches = max(IMAGE_SIDE**2, d.patch_buckets[-1] * prompts // g.rollout_batch_size)
    out = {"rollout": rollout_args(spec, spec.policy(state["params"]), g.rollout_batch_size, patches)}
    packing = spec.packing
    rows = packing.rows
    k = -(-packing.rows_per_update(t.batch_size, g.n) // rows)
    length = packing.lengths[-1]  # the largest prompt bucket + per_row x max_new_tokens, rounded up
    # The largest patch bucket is taken for train.micro_batch_size rows, each with its prompt's images;
    # shared prompts hold each prompt's images once: packing.rows prompts' worth.
    patches = d.patch_buckets[-1] * rows // t.micro_batch_size
    adv = {"advantages": np.zeros((1, rows, length - 1), np.float32)}
    batch = _train_batch(spec, rows, length, patches, k, d.length_buckets[-1], adv)
    for name in ("logprobs", "ref_logprobs"):
        if name in spec.programs:
            out[name] = (state["params"], frozen, batch)
    logp = np.zeros((1, rows, length - 1), np.float32)
    batch = _train_batch(spec, rows, length, patches, k, d.length_buckets[-1],
                         {**adv, "old_logp": logp, "ref_logp": logp})
    out["train_step"] = (state, frozen, batch)
    return out


def report(spec: jobs.Spec) -> list[dict]:
    """Compile every program of `spec` (abstract) at program_args; one report dict per program."""
    limit, mesh = spec.config.train.device_memory_gb, spec.mesh
    out = []
    for name, args in program_args(spec).items():
        program = spec.programs[name]
        if name == "rollout":
            model, slots, key, settings = args[0], args[1], args[5], args[6]
            params = _device_bytes(nnx.state(model))
            r = compile_program(name, program, args, mesh.size, limit, params_bytes=params)
            r["rows"] = rows = slots["fill"].shape[0]  # the engine's slots: the rows generated at once
            # The KV cache and activations grow with the slots, the weights do not: the most slots
            # that fit. Each device holds rows / shards of them.
            shards = sharding.batch_shards(mesh)
            per_row = max(1, (r["peak_bytes_per_device"] - params) * shards / rows)
            r["max_batch_size"] = max(0, int((limit * GIB - params) // per_row) * shards)
            d = compile_program("decode", _Decode(program), (model, slots, key, settings), mesh.size, limit,
                                params_bytes=params)
            d["rows"], d["layout"] = rows, program.layout
            d["kv_bytes_per_device"] = _device_bytes(slots["cache"])
            d["comm_bytes_per_token"] = d.pop("comm_bytes")  # one decode step of every slot
            out += [r, d]
            continue
        state_or_params, frozen, batch = args
        if name == "train_step":
            p, o = _sizes(state_or_params, frozen)
        else:  # log-probs: the parameters, no optimizer state
            p, o = _device_bytes(state_or_params) + _device_bytes(frozen), 0
        out.append(compile_program(name, program, args, mesh.size, limit, params_bytes=p, opt_bytes=o,
                                   micro_batches=batch["input_ids"].shape[0]))
    return out


@dataclasses.dataclass(frozen=True)
class _Decode:
    """The rollout's decode chunk as a program with `.trace` (compile_program's interface)."""
    rollout: jobs.Rollout

    def trace(self, *args):
        return self.rollout.trace_decode(*args)


def dry_run(cfg) -> list[dict]:
    """Compile the job's programs abstractly; one report dict per program."""
    return report(jobs.spec(cfg, distributed.make_mesh(cfg), abstract=True))


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
            lines.append(f"rollout: {p['rows']} slots (sampling.batch_size); about "
                         f"{p['max_batch_size']} would fit in {limit_gb:g} GiB"
                         + ("" if p["fits"] else " -- lower --config.sampling.batch_size"))
        elif p["name"] == "decode":
            lines.append(f"decode ({p['layout']} layout): one step of {p['rows']} slots communicates "
                         f"{p['comm_bytes_per_token'] / 2**20:.1f} MiB per device; the KV cache holds "
                         f"{gb(p['kv_bytes_per_device'])} GiB per device")
        elif not p["fits"]:
            lines.append(f"{p['name']} does not fit: lower --config.train.micro_batch_size, set "
                         "--config.model.remat=full, or use more devices (--config.mesh.*)")
    return "\n".join(lines)
