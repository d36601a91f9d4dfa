"""The real Qwen2.5-VL-3B architecture on this CPU, random bf16 weights: one LoRA SFT step and one
GRPO step, with compile time, step time and peak host memory.

    python tools/bench_3b_cpu.py                               # the full 3B (36 layers, 32 vision blocks)
    python tools/bench_3b_cpu.py --layers 2 --vision-blocks 2  # the 3B widths, reduced depth

SFT: one row of --length tokens holding one --image-side px image, its last third the answer;
LoRA rank 8 / alpha 16 / dropout 0.05 on q/k/v/o/gate/up/down, AdamW, `--remat` policy.
GRPO: --prompts prompts x --rollouts rollouts of --new-tokens new tokens (the JAX sampler),
old and reference log-probs, one update (the GRPO job's step; a random reward).

Prints a table: compile seconds (tracing, lowering and XLA compilation of the step's programs),
step seconds (the step without compilation) and peak host memory (resident set) of each phase:
weights, SFT step, GRPO step (each phase's peak is measured from its own start).

Memory: XLA:CPU computes bfloat16 dots in float32, converting each weight first. The model ties
each conversion to its use (qwen2_5_vl.layers.matmul): without that, XLA converted every weight at
the start of a program and shared one float32 copy between the forward, the rematerialised forward
and the backward (the bf16 3B forward of 512 tokens peaked at 23.1 GB for 7.5 GB of weights).
Two XLA flags (CPU_MEMORY_FLAGS, set in XLA_FLAGS here) keep the rest out: the default
concurrency-optimised scheduler keeps more activations alive, and loop-invariant code motion hoists
a copy of every weight out of the decode loop and the micro-batch loops. --xla-defaults compiles
without them. Weights are drawn with NumPy, chunk by chunk: the family's `build` (JAX's threefry) needs
~16 bytes of temporaries per element (6 GB for the embedding) and ~2 minutes per GB on two cores.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time

# See the module docstring (Memory). Only XLA:CPU reads them.
CPU_MEMORY_FLAGS = ("--xla_cpu_enable_concurrency_optimized_scheduler=false "
                    "--xla_disable_hlo_passes=while-loop-invariant-code-motion,while-loop-expensive-invariant-code-motion")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=36, help="decoder layers (default 36, the 3B)")
    p.add_argument("--vision-blocks", type=int, default=32, help="vision tower blocks (default 32, the 3B)")
    p.add_argument("--length", type=int, default=512, help="SFT row length in tokens, image included (default 512)")
    p.add_argument("--image-side", type=int, default=448, help="image side in pixels, a multiple of 28 (default 448)")
    p.add_argument("--prompts", type=int, default=2, help="GRPO prompts (default 2)")
    p.add_argument("--rollouts", type=int, default=2, help="GRPO rollouts per prompt (default 2)")
    p.add_argument("--new-tokens", type=int, default=32, help="GRPO new tokens per rollout (default 32)")
    p.add_argument("--prompt-length", type=int, default=384,
                   help="GRPO prompt length in tokens, image included (default 384)")
    p.add_argument("--micro-batch", type=int, default=1,
                   help="GRPO rollout rows per log-prob / update micro-batch (default 1)")
    p.add_argument("--remat", choices=["none", "full", "dots"], default="full",
                   help="decoder-layer rematerialisation for SFT and GRPO (default full)")
    p.add_argument("--lora-rank", type=int, default=8, help="LoRA rank (default 8)")
    p.add_argument("--skip-sft", action="store_true", help="run only the GRPO step")
    p.add_argument("--skip-grpo", action="store_true", help="run only the SFT step")
    p.add_argument("--xla-defaults", action="store_true",
                   help="compile without CPU_MEMORY_FLAGS (XLA's default scheduler and loop-invariant code motion)")
    return p


ARGS = _parser().parse_args() if __name__ == "__main__" else None
if ARGS is not None and not ARGS.xla_defaults:  # must be set before JAX starts its CPU backend
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + CPU_MEMORY_FLAGS).strip()

if __package__ in (None, ""):  # run as `python tools/bench_3b_cpu.py`: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dataclasses  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from progress_jax import jobs, lora, sharding  # noqa: E402
from progress_jax.models import families  # noqa: E402
from progress_jax.train import grpo, loop, programs, schedule  # noqa: E402
from tools.bench_grpo import prompts  # noqa: E402


# ---- measuring -----------------------------------------------------------------------------------

class Peak:
    """Peak resident set of this process since `reset()` (Linux: VmHWM after clear_refs; elsewhere
    the peak since the process started)."""

    def reset(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    def gb(self) -> float:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024 / 1e9
        except OSError:
            pass
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


class CompileClock:
    """Seconds JAX spends tracing, lowering and compiling (its monitoring events)."""

    EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
              "/jax/core/compile/backend_compile_duration")

    def __init__(self):
        self.total = 0.0
        jax.monitoring.register_event_duration_secs_listener(self._on)

    def _on(self, event, duration, **_):
        if event in self.EVENTS:
            self.total += duration


# ---- the model -----------------------------------------------------------------------------------

PRESET = "qwen2_5_vl_3b"


def config(layers: int, vision_blocks: int):
    """The 3B preset with `layers` decoder layers and `vision_blocks` vision blocks (full-attention
    blocks: the preset's that remain, else the last)."""
    base = families.for_preset(PRESET).architecture("", PRESET)
    full = tuple(i for i in base.vision.fullatt_block_indexes if i < vision_blocks) or (vision_blocks - 1,)
    return dataclasses.replace(
        base, text=dataclasses.replace(base.text, num_hidden_layers=layers),
        vision=dataclasses.replace(base.vision, depth=vision_blocks, fullatt_block_indexes=full))


def random_model(cfg, seed: int = 0, chunk: int = 1 << 24):
    """bf16 Qwen2.5-VL with weights N(0, 0.02) (norm scales 1), drawn with NumPy `chunk` elements
    at a time, so that no float32 copy of a large weight exists."""
    abstract = nnx.eval_shape(lambda: families.for_model(cfg).build(cfg, 0, jnp.bfloat16, jnp.bfloat16))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)

    def fill(path, x):
        if sharding.path_str(path).endswith("weight"):  # RMSNorm scales
            return jnp.ones(x.shape, x.dtype)
        out = np.empty(x.shape, ml_dtypes.bfloat16)
        flat = out.reshape(-1)
        for i in range(0, flat.size, chunk):
            n = min(chunk, flat.size - i)
            flat[i:i + n] = (rng.standard_normal(n, np.float32) * 0.02).astype(ml_dtypes.bfloat16)
        return jnp.asarray(out)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


def _text_tokens(cfg, length: int, side: int) -> int:
    """Text tokens besides one image so that a row (bench_grpo.prompts layout) is `length` long."""
    text = length - 8 - ((side // 28) ** 2 + 2)
    if text < 1:
        raise SystemExit(f"--length/--prompt-length {length} too short for a {side} px image")
    return text


# ---- the two steps -------------------------------------------------------------------------------

def sft_step(model, a, clock: CompileClock) -> tuple[float, float]:
    """(compile s, step s) of one LoRA SFT step, as tools/bench_train.py sets it up."""
    cfg = model.config
    host = prompts(cfg, 1, 1, a.image_side, _text_tokens(cfg, a.length, a.image_side))
    host.pop("records")
    host["loss_mask"] = np.zeros_like(host["input_ids"])
    host["loss_mask"][:, 2 * a.length // 3:] = 1
    parts, params = loop.split(model, lora.trainable_filter(a.lora_rank))
    params = jax.tree.map(jnp.copy, params)  # the step donates its state: keep the model's own LoRA arrays
    tx = schedule.make_optimizer(1e-4, 0.0, 0.1, 1000, 1.0)
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    state = loop.init_state(params, tx, 0)
    state_sh = loop.state_shardings(jax.eval_shape(lambda: state), mesh, model.partition_rules)
    frozen_sh = sharding.param_shardings(parts.frozen, mesh, model.partition_rules)
    family = families.for_model(cfg)
    batch = family.stack_micro([host], cfg)
    batch_sh = loop.batch_shardings(batch, mesh, family)
    step = loop.jit_step(programs.make_step(parts, tx, mesh, remat=a.remat), mesh, state_sh, frozen_sh, batch_sh)
    state = jax.device_put(state, state_sh)
    frozen, dev = jax.device_put(parts.frozen, frozen_sh), loop.to_device(batch, batch_sh, family)
    before = clock.total
    t = time.perf_counter()
    state, metrics = step(state, frozen, dev)
    loss = float(metrics["loss"])
    total = time.perf_counter() - t
    compile_s = clock.total - before
    print(f"SFT loss {loss:.3f}", flush=True)
    return compile_s, total - compile_s


def grpo_setup(model, a, loss_chunk: int = 0) -> tuple[grpo.Step, dict]:
    """The GRPO job's step (its spec for `model`, jobs.grpo_spec) on one device, as
    tools/bench_grpo.py sets it up (a random reward), and its batch of --prompts prompts of
    --prompt-length tokens, each with one --image-side px image. The step's first state:
    `step.spec.setup.state`."""
    from configs import grpo as grpo_config
    from data_pipeline.tokenizer import load_tokenizer

    cfg = model.config
    c = grpo_config.get_config()
    c.model.remat = a.remat
    c.lora.rank = a.lora_rank
    c.grpo.n, c.grpo.rollout_batch_size = a.rollouts, a.prompts
    c.train.update(dict(lr=1e-6, batch_size=a.prompts, micro_batch_size=a.micro_batch, steps=1, epochs=1.0,
                        loss_chunk=loss_chunk))
    c.sampling.max_new_tokens, c.sampling.temperature = a.new_tokens, 0.6
    c.data.length_buckets = (a.prompt_length,)
    c.data.patch_buckets = (a.micro_batch * (a.image_side // 14) ** 2,)
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    rng = np.random.default_rng(0)
    step = grpo.Step(jobs.grpo_spec(c, mesh, model=model), load_tokenizer(None),
                     reward_fn=lambda gen, recs: [{"overall": float(rng.random())} for _ in recs])
    return step, prompts(cfg, a.prompts, 1, a.image_side, _text_tokens(cfg, a.prompt_length, a.image_side))


def grpo_step(model, a, clock: CompileClock) -> tuple[float, float, dict]:
    """(compile s, step s, the step's metrics) of one GRPO step (grpo_setup)."""
    step, batch = grpo_setup(model, a)
    before = clock.total
    _, m = step(step.spec.setup.state, batch, jax.random.key(0))
    compile_s = clock.total - before
    return compile_s, m["step_time_s"] - compile_s, m


def main(a=None) -> None:
    """`a`: the parsed arguments (parsed at import when run as a script, before JAX starts)."""
    a = a if a is not None else _parser().parse_args()
    if a.image_side % 28:
        raise SystemExit(f"--image-side must be a multiple of 28, got {a.image_side}")
    if a.lora_rank < 1:
        raise SystemExit("--lora-rank must be >= 1")
    peak, clock = Peak(), CompileClock()
    cfg = config(a.layers, a.vision_blocks)
    rows = []
    peak.reset()
    t = time.perf_counter()
    model = random_model(cfg)
    lora.inject(model, a.lora_rank, 16.0, 0.05)
    weights_gb = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model))) / 1e9
    rows.append(("weights (random, bf16) + LoRA", "", f"{time.perf_counter() - t:.1f} (init)", peak.gb()))
    print(f"weights {weights_gb:.2f} GB, {rows[-1]}", flush=True)
    if not a.skip_sft:
        peak.reset()
        c, s = sft_step(model, a, clock)
        rows.append((f"LoRA SFT step, 1 x {a.length} tokens, 1 image {a.image_side} px", f"{c:.1f}", f"{s:.1f}",
                     peak.gb()))
        print(rows[-1], flush=True)
        gc.collect()
    if not a.skip_grpo:
        peak.reset()
        c, s, m = grpo_step(model, a, clock)
        rows.append((f"GRPO step, {a.prompts} prompts x {a.rollouts} rollouts, {a.new_tokens} new tokens",
                     f"{c:.1f}", f"{s:.1f} (rollout {m['time/rollout_s']:.1f}, log-probs {m['time/logprobs_s']:.1f}, "
                     f"update {m['time/update_s']:.1f}, compile included in each)", peak.gb()))
        print(rows[-1], flush=True)

    print(f"\nQwen2.5-VL-3B widths, {a.layers} decoder layers, {a.vision_blocks} vision blocks, random bf16 weights "
          f"({weights_gb:.2f} GB with LoRA rank {a.lora_rank}); remat {a.remat}; {os.cpu_count()} CPUs, "
          f"jax {jax.__version__}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print("| phase | compile s | step s | peak host memory GB |\n|---|---|---|---|")
    for name, c, s, gb in rows:
        print(f"| {name} | {c} | {s} | {gb:.1f} |")


if __name__ == "__main__":
    main(ARGS)
