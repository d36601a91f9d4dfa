"""The one script to run where a GPU is lent: one table of this project's numbers on the real 3B
architecture (random weights), next to the goals they are measured against.

    python tools/gpu_check.py            # one GPU (H100: about 8 minutes)
    python tools/gpu_check.py --smoke    # the same code at tiny sizes, on CPU (about 1.5 CPU-minutes)

Rows (docs/gpu.md): LoRA SFT steps at two row lengths (tokens/s, MFU, peak memory); rollouts of
the project's rollout engine (progress_jax/sampling.py) on text prompts; vLLM on the same prompts and the
same weights (when vllm is installed and a GPU is present); one GRPO step of the paper's shape
scaled to one GPU, split into rollout / log-probs / update; the model's attention through the XLA
path and cuDNN's fused kernel, checked equal and timed.

The random weights are written in the Hub layout and loaded from there, so that vLLM and the JAX
rows use the same weights; where vLLM runs, the export and vLLM run in child processes, so that no
JAX process holds GPU memory while vLLM starts. A row that fails prints its error in the table (the
others still run) and the exit status is then 1.
"""
from __future__ import annotations

if __package__ in (None, ""):  # run as `python tools/X.py`: import this checkout, as `python -m tools.X` does
    import os, sys; sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import dataclasses
import datetime
import gc
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/gpu_check.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="the same code at tiny sizes (the tiny preset, float32, short prompts, few tokens), for CPU")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak dense bf16 TFLOP/s of one device for the MFU (default: progress_jax.train.sft."
                        "PEAK_FLOPS by device kind; none for CPUs)")
    p.add_argument("--sft-lengths", type=int, nargs="+", default=None,
                   help="SFT row lengths in tokens, one row per step (default 4096 16384; --smoke 128 256)")
    p.add_argument("--new-tokens", type=int, default=None,
                   help="rollout rows: tokens generated per sample (default 256; --smoke 8)")
    p.add_argument("--rollout-batch", type=int, default=None,
                   help="rollout row: the rollout engine's slots, as sampling.batch_size "
                        "(default 32; --smoke 4)")
    p.add_argument("--grpo-new-tokens", type=int, default=None,
                   help="GRPO row: most tokens generated per rollout (default 256; --smoke 8)")
    p.add_argument("--no-vllm", action="store_true",
                   help="skip the vLLM row even where vllm is installed (its start-up takes minutes)")
    p.add_argument("--vllm-gpu-memory", type=float, default=0.85,
                   help="vLLM's gpu_memory_utilization (default 0.85; no JAX process holds GPU memory then)")
    return p


if __name__ == "__main__":  # as a command: --help and usage errors before the imports below (JAX: seconds)
    parser().parse_args()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from progress_jax import loading, lora, sampling  # noqa: E402
from progress_jax.models import families  # noqa: E402
from progress_jax.train.metrics_writer import mfu  # noqa: E402
from progress_jax.train.sft import PEAK_FLOPS  # noqa: E402
from tools.bench_3b_cpu import Peak, grpo_setup  # noqa: E402
from tools.bench_common import median_time  # noqa: E402
from tools.bench_grpo import prompts  # noqa: E402
from tools.bench_train import make_batch, sft_runner  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SFT_MFU_GOAL, GRPO_GOAL = 0.40, 3600.0
GOALS = ("SFT MFU >= 40% (MaxText reports about 50% on H100); GRPO >= 3600 tokens/s/GPU (EasyR1 reports 1800 "
         "for Qwen2.5-VL-3B on H100s); rollout tokens/s at least vLLM's on the same prompts and weights")
# Largest |cuDNN - XLA| (and |XLA - float64 reference|) accepted: inputs N(0, 1), outputs below ~4,
# where half a bfloat16 ulp is 0.016.
ATTENTION_TOLERANCE = {"bfloat16": 3e-2, "float32": 1e-4}
ROLLOUT = dict(temperature=0.6, top_p=0.9)  # the paper's GRPO sampling (configs/grpo.py)


@dataclasses.dataclass(frozen=True)
class Sizes:
    preset: str
    dtype: str
    sft_lengths: tuple[int, ...]  # tokens per SFT row (one row per step)
    sft_images: int  # 112 px images per SFT row
    sft_steps: int  # timed steps after one warm-up (compilation)
    prompts: int  # rollout prompts, each sampled `rollouts` times
    rollouts: int
    prompt_length: int
    new_tokens: int
    rollout_batch: int  # the engine's slots (config key sampling.batch_size)
    grpo_prompts: int
    grpo_prompt_length: int
    grpo_new_tokens: int
    grpo_micro_batch: int
    image_side: int  # GRPO: one image per prompt
    attention_length: int
    attention_chunk: int  # model.attention_chunk (the paper configs: 1024)
    loss_chunk: int  # train.loss_chunk (the paper configs: 2048)
    remat: str = "full"


# The paper's GRPO runs 64 prompts x 4 rollouts on 8 GPUs: 8 x 4 on one, LoRA rank 8 in bfloat16
# (its full fine-tuning in float32 with a reference copy does not fit one GPU).
GPU = Sizes("qwen2_5_vl_3b", "bfloat16", (4096, 16384), 4, 3, 64, 4, 4096, 256, 32, 8, 4096, 256, 4, 448,
            4096, 1024, 2048)
SMOKE = Sizes("tiny", "float32", (128, 256), 2, 1, 4, 2, 96, 8, 4, 2, 128, 8, 2, 56, 128, 64, 64)


@dataclasses.dataclass
class Row:
    check: str
    tokens_s: float | None = None
    mfu: float | None = None
    peak_gb: float | None = None
    seconds: float | None = None
    detail: str = ""
    goal: str = ""
    failed: bool = False


# ---- child processes: the export and vLLM ----------------------------------------------------------

def _child(call: str, timeout: float) -> None:
    """Run `tools.gpu_check.<call>` in a fresh Python; its stderr tail is the error on failure. On a
    timeout its whole process group is killed (vLLM's engine runs in a grandchild that would
    otherwise keep its GPU memory)."""
    code = f"import sys; sys.path.insert(0, {ROOT!r}); import tools.gpu_check as g; g.{call}"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        _, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        raise
    if child.returncode:
        raise RuntimeError(f"child {call.split('(')[0]} exited {child.returncode}: {err[-600:].strip()}")


def export_random(preset: str, dtype: str, directory: str, seed: int = 0) -> None:
    """A random model of `preset` written in the Hub layout (config.json + safetensors)."""
    d, family = loading.DTYPES[dtype], families.for_preset(preset)
    family.save_pretrained(family.build(family.architecture("", preset), seed, d, d), directory)


def vllm_rollout(spec_path: str) -> None:
    """Child: vLLM on the prompts of spec["prompts"] (.npy token ids), spec["n"] samples each (vLLM
    computes a prompt once for its n samples), exactly spec["new_tokens"] tokens per sample; writes
    {"seconds", "tokens"} of the timed generate (after a warm-up one) to spec["out"]."""
    import vllm

    spec = json.load(open(spec_path))
    ids = np.load(spec["prompts"])
    llm = vllm.LLM(model=spec["model"], dtype=spec["dtype"], skip_tokenizer_init=True, seed=0,
                   max_model_len=ids.shape[1] + spec["new_tokens"], gpu_memory_utilization=spec["gpu_memory"],
                   limit_mm_per_prompt={"image": 0, "video": 0})  # text prompts: no vision profiling
    params = vllm.SamplingParams(n=spec["n"], max_tokens=spec["new_tokens"], ignore_eos=True, detokenize=False,
                                 **ROLLOUT)
    requests = [{"prompt_token_ids": row.tolist()} for row in ids]
    llm.generate(requests[:2], params, use_tqdm=False)
    t = time.perf_counter()
    outs = llm.generate(requests, params, use_tqdm=False)
    seconds = time.perf_counter() - t
    tokens = sum(len(o.token_ids) for r in outs for o in r.outputs)
    json.dump({"seconds": seconds, "tokens": tokens}, open(spec["out"], "w"))


# ---- the rows ------------------------------------------------------------------------------------

def peak_gb(host: Peak) -> float:
    """Peak device memory since the process started where the backend reports it (GPU); else
    the process's peak resident set since host.reset() (CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats["peak_bytes_in_use"] / 1e9 if "peak_bytes_in_use" in stats else host.gb()


def peak_flops(override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    kind = jax.devices()[0].device_kind
    return next((f for name, f in PEAK_FLOPS.items() if name in kind), None)


def sft_row(model, length: int, s: Sizes, peak: float | None, host: Peak) -> Row:
    host.reset()
    run = sft_runner(model, make_batch(model.config, 1, length, s.sft_images), s.remat, s.loss_chunk)
    sec = median_time(run, s.sft_steps, warmup=1)
    tps = length / sec
    fpt = families.for_model(model.config).flops_per_token(model.config, length, lora_on=True)
    m = None if peak is None else mfu(tps, fpt, peak)
    goal = "MFU >= 40%: " + ("no peak FLOP/s for this device (--peak-tflops)" if m is None else
                             "met" if m >= SFT_MFU_GOAL else f"missed by {100 * (SFT_MFU_GOAL - m):.1f} points")
    return Row(f"LoRA SFT step, 1 x {length} tokens", tps, m, peak_gb(host), sec,
               f"{s.sft_images} images of 112 px, LoRA r 8, remat {s.remat}, attention chunk {s.attention_chunk}, "
               f"loss chunk {s.loss_chunk}; median of {s.sft_steps} steps after one compiling", goal)


def rollout_prompts(config, s: Sizes) -> np.ndarray:
    """[prompts, prompt_length] random text token ids (tools/bench_grpo.py's prompts, no images:
    vLLM gets token ids and needs no processor)."""
    return prompts(config, s.prompts, 0, 28, s.prompt_length - 8)["input_ids"]


def jax_rollout_row(model, ids: np.ndarray, s: Sizes) -> Row:
    """The rollout engine (sampling.generate): each prompt prefilled once for its s.rollouts
    samples, s.rollout_batch slots; a first call of one slot-full of prompts compiles its programs."""
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    params = sampling.SamplingParams(max_new_tokens=s.new_tokens, ignore_eos=True, **ROLLOUT)
    first = {k: v[:max(1, s.rollout_batch // s.rollouts)] for k, v in batch.items()}
    sampling.generate(model, first, params, jax.random.key(1), batch_size=s.rollout_batch, n=s.rollouts)
    t = time.perf_counter()
    gen = sampling.generate(model, batch, params, jax.random.key(0), batch_size=s.rollout_batch, n=s.rollouts)
    sec = time.perf_counter() - t
    return Row("rollout, progress_jax engine", float(gen.lengths.sum()) / sec, seconds=sec,
               detail=f"{s.prompts} prompts x {s.rollouts}, {s.prompt_length}-token text prompts, {s.new_tokens} new "
                      f"tokens each, T {ROLLOUT['temperature']} top-p {ROLLOUT['top_p']}, {s.rollout_batch} slots, "
                      f"each prompt prefilled once; generated tokens/s, compile excluded")


def vllm_runs() -> bool:
    """vllm is installed and a CUDA GPU is present, told without starting JAX's backend (it would
    take most of the GPU's memory before vLLM starts)."""
    platform = os.environ.get("JAX_PLATFORMS", "cuda").split(",")[0]
    return (importlib.util.find_spec("vllm") is not None and os.path.exists("/dev/nvidiactl")
            and platform in ("cuda", "gpu"))


def vllm_missing() -> str:
    if importlib.util.find_spec("vllm") is None:
        return "vllm not installed"
    return f"vllm installed; needs a CUDA GPU (backend {jax.default_backend()})"


def vllm_row(ckpt: str, ids: np.ndarray, s: Sizes, tmp: str, gpu_memory: float) -> Row:
    np.save(os.path.join(tmp, "prompts.npy"), ids)
    spec = dict(model=ckpt, dtype=s.dtype, prompts=os.path.join(tmp, "prompts.npy"), n=s.rollouts,
                new_tokens=s.new_tokens, gpu_memory=gpu_memory, out=os.path.join(tmp, "vllm.json"))
    json.dump(spec, open(os.path.join(tmp, "vllm_spec.json"), "w"))
    _child(f"vllm_rollout({os.path.join(tmp, 'vllm_spec.json')!r})", timeout=420)
    out = json.load(open(spec["out"]))
    return Row("rollout, vLLM", out["tokens"] / out["seconds"], seconds=out["seconds"],
               detail=f"same prompts and weights, n={s.rollouts} samples per prompt request (prompt computed once), "
                      f"{s.new_tokens} new tokens each, same temperature and top-p; generated tokens/s")


def grpo_row(model, s: Sizes) -> Row:
    a = argparse.Namespace(remat=s.remat, lora_rank=8, rollouts=s.rollouts, prompts=s.grpo_prompts,
                           micro_batch=s.grpo_micro_batch, new_tokens=s.grpo_new_tokens,
                           prompt_length=s.grpo_prompt_length, image_side=s.image_side)
    step, batch = grpo_setup(model, a, s.loss_chunk)
    state, _ = step(step.spec.setup.state, batch, jax.random.key(0))  # compiles
    _, m = step(state, batch, jax.random.key(1))
    tps = m["tokens_per_s"]  # one device
    return Row("GRPO step", tps, seconds=m["step_time_s"],
               detail=f"rollout {m['time/rollout_s']:.2f} s / log-probs {m['time/logprobs_s']:.2f} s / update "
                      f"{m['time/update_s']:.2f} s; {s.grpo_prompts} prompts x {s.rollouts}, {s.grpo_prompt_length}-"
                      f"token prompts with one {s.image_side} px image, up to {s.grpo_new_tokens} new tokens "
                      f"(mean {m['response_length']:.0f}), micro-batch {s.grpo_micro_batch}, LoRA r 8; "
                      "(prompt + response) tokens/s of the second step",
               goal=">= 3600 tokens/s/GPU: " + ("met" if tps >= GRPO_GOAL else f"missed ({tps / GRPO_GOAL:.2f}x)"))


# ---- attention: the model's XLA path, cuDNN and a float64 reference ----------------------------------

def attention_inputs(text_config, length: int, dtype: str, seed: int = 0):
    """q [2, L, heads, head_dim], k/v [2, L, kv_heads, head_dim] ~ N(0, 1) in `dtype`, and the key
    mask [2, L] of two right-padded rows (training's layout): L and 7L/8 real tokens."""
    rng = np.random.default_rng(seed)
    c = text_config
    shape = lambda heads: (2, length, heads, c.head_dim)  # noqa: E731
    q, k, v = (jnp.asarray(rng.standard_normal(shape(h)), loading.DTYPES[dtype])
               for h in (c.num_attention_heads, c.num_key_value_heads, c.num_key_value_heads))
    mask = np.ones((2, length), np.int32)
    mask[1, length - length // 8:] = 0
    return q, k, v, jnp.asarray(mask)


def reference_attention(q, k, v, mask) -> np.ndarray:
    """Causal attention with key padding in float64 NumPy, one (row, head) at a time."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    B, L, N, H = q.shape
    group = N // k.shape[2]
    allowed = np.tril(np.ones((L, L), bool))
    out = np.empty_like(q)
    for b in range(B):
        see = allowed & (np.asarray(mask[b]) > 0)[None, :]
        for n in range(N):
            s = np.where(see, q[b, :, n] @ k[b, :, n // group].T / np.sqrt(H), -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            out[b, :, n] = (p / p.sum(-1, keepdims=True)) @ v[b, :, n // group]
    return out


def max_difference(out, ref, mask) -> float:
    """max |out - ref| over the real query positions (padding queries' outputs are never used)."""
    real = np.asarray(mask) > 0
    return float(np.abs(np.asarray(out, np.float64) - np.asarray(ref, np.float64))[real].max())


def model_attention(family, chunk: int):
    """The model's own (XLA) attention, its family's: (q, k, v, key mask) -> output."""
    return lambda q, k, v, mask: family.causal_attention(q, k, v, mask, 0, chunk)


def fused_attention(implementation: str):
    """jax.nn.dot_product_attention with the model's masking (causal, each row's key length):
    "cudnn" the fused GPU kernel; "xla" the same call anywhere (its masking checked on CPU)."""
    return lambda q, k, v, mask: jax.nn.dot_product_attention(
        q, k, v, is_causal=True, key_value_seq_lengths=mask.sum(-1).astype(jnp.int32), implementation=implementation)


def time_attention(fn, q, k, v, mask, repeats: int = 5) -> tuple[np.ndarray, float, float]:
    """(output, forward s, forward + backward s), medians after one compiling call each."""
    fwd = jax.jit(fn)
    bwd = jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v, mask).astype(jnp.float32)), argnums=(0, 1, 2)))
    out = fwd(q, k, v, mask)
    t_fwd = median_time(lambda: fwd(q, k, v, mask).block_until_ready(), repeats)
    t_bwd = median_time(lambda: jax.block_until_ready(bwd(q, k, v)), repeats)
    return np.asarray(out.astype(jnp.float32)), t_fwd, t_fwd + t_bwd


def attention_rows(config, s: Sizes) -> list[Row]:
    text_config = config.text
    q, k, v, mask = attention_inputs(text_config, s.attention_length, s.dtype)
    ref = reference_attention(q, k, v, mask)
    tol = ATTENTION_TOLERANCE[s.dtype]
    shape = (f"2 rows x {s.attention_length} (one 1/8 padding), {text_config.num_attention_heads} heads, "
             f"{text_config.num_key_value_heads} KV heads, head dim {text_config.head_dim}, {s.dtype}")
    ours = model_attention(families.for_model(config), s.attention_chunk)
    xla, xla_fwd, xla_all = time_attention(ours, q, k, v, mask)
    err = max_difference(xla, ref, mask)
    rows = [Row(f"attention, XLA (chunk {s.attention_chunk})", seconds=xla_all,
                detail=f"{shape}; forward {1e3 * xla_fwd:.2f} ms, forward + backward {1e3 * xla_all:.2f} ms; "
                       f"max abs(XLA - float64) {err:.2e}",
                goal=f"<= {tol:g}: " + ("met" if err <= tol else "missed"))]
    cudnn = Row("attention, cuDNN")
    if jax.default_backend() != "gpu":
        cudnn.detail = f"cuDNN path not available on {jax.default_backend()}"
    else:
        out, fwd, both = time_attention(fused_attention("cudnn"), q, k, v, mask)
        diff = max_difference(out, xla, mask)
        cudnn.seconds = both
        cudnn.detail = (f"forward {1e3 * fwd:.2f} ms, forward + backward {1e3 * both:.2f} ms; max abs(cuDNN - XLA) "
                        f"{diff:.2e}, max abs(cuDNN - float64) {max_difference(out, ref, mask):.2e}")
        cudnn.goal = f"equal to XLA within {tol:g}: " + ("met" if diff <= tol else "missed")
    return rows + [cudnn]


# ---- the run -----------------------------------------------------------------------------------------

def guarded(name: str, fn) -> list[Row]:
    """fn's rows, or one failed row holding the error (the other rows still run)."""
    try:
        out = fn()
        return out if isinstance(out, list) else [out]
    except Exception as e:  # noqa: BLE001 - a first GPU run should report every row it can
        return [Row(name, detail=f"FAILED: {type(e).__name__}: {str(e)[:400]}".replace("|", "/").replace("\n", " "),
                    failed=True)]
    finally:
        gc.collect()


def table(rows: list[Row], s: Sizes, smoke: bool) -> str:
    d = jax.devices()[0]
    num = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
    lines = [f"## tools/gpu_check.py{' --smoke' if smoke else ''}",
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {jax.device_count()} x "
             f"{d.device_kind} ({jax.default_backend()}), {os.cpu_count()} CPUs, jax {jax.__version__}; "
             f"model {s.preset}, random {s.dtype} weights",
             f"Goals: {GOALS}.", "",
             "| check | tokens/s | MFU | peak memory GB | seconds | detail | goal |",
             "|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r.check} | {num(r.tokens_s, '.0f')} | {num(r.mfu and 100 * r.mfu, '.1f')}"
                     f"{'%' if r.mfu is not None else ''} | {num(r.peak_gb, '.2f')} | {num(r.seconds, '.3f')} | "
                     f"{r.detail} | {r.goal} |")
    return "\n".join(lines)


def main(argv=None) -> list[Row]:
    a = parser().parse_args(argv)
    s = SMOKE if a.smoke else GPU
    over = dict(sft_lengths=a.sft_lengths and tuple(a.sft_lengths), new_tokens=a.new_tokens,
                rollout_batch=a.rollout_batch, grpo_new_tokens=a.grpo_new_tokens)
    s = dataclasses.replace(s, **{k: v for k, v in over.items() if v})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "model")
        ids = rollout_prompts(families.for_preset(s.preset).architecture("", s.preset), s)
        if a.no_vllm or not vllm_runs():
            export_random(s.preset, s.dtype, ckpt)
            vllm = [Row("rollout, vLLM", detail="skipped (--no-vllm)" if a.no_vllm else vllm_missing())]
        else:  # in a child, so that no JAX process holds GPU memory while vLLM starts
            _child(f"export_random({s.preset!r}, {s.dtype!r}, {ckpt!r})", timeout=300)
            vllm = guarded("rollout, vLLM", lambda: vllm_row(ckpt, ids, s, tmp, a.vllm_gpu_memory))
        host, peak, d = Peak(), peak_flops(a.peak_tflops), loading.DTYPES[s.dtype]  # JAX's backend starts here
        model = loading.set_attention_chunk(families.for_path(ckpt).load(ckpt, d, d), s.attention_chunk)
        lora_model = nnx.clone(model)  # shares the base weights; the plain model is what vLLM serves
        lora.inject(lora_model, 8, 16.0, 0.05)
        for length in s.sft_lengths:  # first: the device's peak memory counts from the start
            rows += guarded(f"LoRA SFT step, 1 x {length} tokens", lambda: sft_row(lora_model, length, s, peak, host))
        rows += guarded("rollout, progress_jax engine", lambda: jax_rollout_row(model, ids, s)) + vllm
        if rows[-2].tokens_s and rows[-1].tokens_s:
            ratio = rows[-2].tokens_s / rows[-1].tokens_s
            rows[-2].goal = f">= vLLM: {'met' if ratio >= 1 else 'missed'} ({ratio:.2f}x vLLM)"
        else:
            rows[-2].goal = ">= vLLM: no vLLM number"
        rows += guarded("GRPO step", lambda: grpo_row(lora_model, s))
    rows += guarded("attention", lambda: attention_rows(model.config, s))
    print(table(rows, s, a.smoke), flush=True)
    if any(r.failed for r in rows):
        sys.exit(1)
    return rows


if __name__ == "__main__":
    main()
