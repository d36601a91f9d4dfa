"""GRPO-shaped rollouts on a skewed answer-length workload: the rollout engine
(`sampling.generate`) against a static batch (the sampler before the engine) and transformers'
`generate`, on the same weights and prompts.

    taskset -c 1 python tools/bench_rollout.py [--layers 2 --prompts 8 --n 4 --slots 8 --max-new 384]
    taskset -c 1 python tools/bench_rollout.py --fill    # per-token decode time at fill 1k vs 16k, 32k cache

The model: the 3B's language-model widths (hidden 2048, MLP 11008, 16 query heads and 2 KV heads of
128) with --layers layers and a --vocab vocabulary, and a 2-block vision tower of the 3B's widths;
random weights, float32, built by transformers and loaded by the JAX loader. The prompts:
ProgressLM-shaped (an instruction, --images 224x224 images each followed by text, a question).
Answer lengths: a fixed schedule drawn once (seed 0) from a skewed distribution, most of a few
hundred tokens or less (lognormal, median --median), --long rows at --max-new; each side draws
exactly that many tokens per row (eos ignored): the engine and the static batch through per-row
limits, transformers through a per-row stopping criterion. Sampling: temperature 0.6, top-p 0.9.

The sides, each in generation calls / slots of --slots rows (config key sampling.batch_size):
- static batch: calls of --slots // n prompts, each prompt prefilled once and its cache repeated
  for its n rows, then one decode loop over the whole cache (prompt bucket + max new tokens) until
  the call's longest row ends: the sampler before the engine, kept here as the baseline;
- engine: `sampling.generate(..., batch_size=slots, max_lengths=...)`;
- transformers: `generate(num_return_sequences=n)` in calls of --slots // n prompts (each copy of a
  prompt prefilled: transformers has no shared prefill).
Each side runs with every answer cut to 16 tokens (the JAX sides once more before that, untimed:
compilation), then with the full answers, both timed. Printed per side: the decode steps (the
engine's as it counts them, the calls' from the schedule), a step's time (the extra wall time of the
full answers over the cut ones, per extra step), and the fewest steps any schedule could run: what
the goals' misses come from.
"""

from __future__ import annotations
if __package__ in (None, ""):  # run as `python tools/X.py`: import this checkout, as `python -m tools.X` does
    import os, sys; sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import functools
import os
import tempfile
import time

import numpy as np

from tools.bench_common import EOS, IMAGE, VEND, VIDEO, VSTART, progresslm_prompts


def _heavy_imports():
    """JAX, Flax and the project's modules, imported after --help is answered (tests/test_tools_cli.py)."""
    global jax, jnp, nnx, sampling, families
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from progress_jax import sampling
    from progress_jax.models import families



def hf_config(layers: int, vocab: int):
    """The 3B's language-model widths with `layers` layers; a 2-block vision tower of its widths."""
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config=dict(vocab_size=vocab, hidden_size=2048, intermediate_size=11008, num_hidden_layers=layers,
                         num_attention_heads=16, num_key_value_heads=2, rope_theta=1e6, rms_norm_eps=1e-6,
                         rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
                         max_position_embeddings=65536, eos_token_id=EOS),
        vision_config=dict(depth=2, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                           fullatt_block_indexes=[1], window_size=112),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VSTART, vision_end_token_id=VEND,
        tie_word_embeddings=True)


def prompts(count: int, images: int, seed: int = 0) -> dict:
    """ProgressLM-shaped prompts (an instruction, `images` 224x224 images each followed by a few text
    tokens, a closing question), lengths varying by prompt."""
    return progresslm_prompts(count, images, first=150, step=10, per_image=30, last=100, dtype=np.int64, seed=seed)


def answer_lengths(rows: int, median: int, long: int, max_new: int, seed: int = 0) -> np.ndarray:
    """Skewed answer lengths: lognormal around `median` (sigma 0.6), clipped to [16, max_new];
    `long` rows, spread over the batch, at max_new."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(median), 0.6, rows), 16, max_new).astype(np.int32)
    lengths[rng.permutation(rows)[:long]] = max_new
    return lengths


# ---- the static batch (the sampler before the engine) --------------------------------------------

def _static(graphdef, state, inputs, first, limits, key, knobs, *, max_new_tokens: int, n: int, family):
    """Prefill left-padded prompts once, repeat each prompt's cache for its n rows, decode every row
    over the whole cache until the last row reaches its limit (finished rows keep computing). first:
    the call's first row in the whole batch (the rows' sampling keys)."""
    model = nnx.merge(graphdef, state)
    mask = inputs["attention_mask"]
    P, L = mask.shape
    N = max_new_tokens
    x = family.prompt_embeddings(model, inputs)
    hidden, cache = model.decode(x, inputs["position_ids"], mask, model.init_cache(P, L), 0)
    R = P * n
    cache = jax.tree.map(lambda c: jnp.pad(jnp.repeat(c, n, axis=1), ((0, 0), (0, 0), (0, N), (0, 0), (0, 0))), cache)
    kv_mask = jnp.concatenate([jnp.repeat(mask, n, axis=0), jnp.ones((R, N), mask.dtype)], axis=1)
    rep = {k: jnp.repeat(inputs[k], n, axis=0) for k in ("attention_mask", "rope_deltas") if k in inputs}
    rows = first + jnp.arange(R)
    tok, _ = sampling.pick(model.logits(jnp.repeat(hidden[:, -1], n, axis=0)), key, 0, knobs, rows)
    done = limits <= 1

    def body(carry):
        t, prev, done, cache, out = carry
        pos = family.decode_position_ids(rep, t - 1)
        hidden, cache = model.decode(model.embed(prev[:, None]), pos, kv_mask, cache, L + t - 1)
        tok, _ = sampling.pick(model.logits(hidden[:, 0]), key, t, knobs, rows)
        out = out.at[:, t].set(jnp.where(done, 0, tok))
        return t + 1, tok, done | (t + 1 >= limits), cache, out

    out = jnp.zeros((R, N), jnp.int32).at[:, 0].set(tok)
    carry = (jnp.int32(1), tok, done, cache, out)
    return jax.lax.while_loop(lambda c: (c[0] < N) & ~jnp.all(c[2]), body, carry)[4]


@functools.cache
def _static_jit():
    return jax.jit(_static, static_argnames=("graphdef", "max_new_tokens", "n", "family"))


def static_generate(model, batch, params, key, n: int, slots: int, limits) -> np.ndarray:
    """The static batch in calls of slots // n prompts, every call padded to the whole batch's
    length bucket; returns the tokens [prompts * n, max_new_tokens]."""
    family = families.for_model(model.config)
    graphdef, state = nnx.split(model)
    settings = sampling.knobs(params, sampling.stop_ids(model.config, params))
    B, per = len(batch["input_ids"]), max(1, slots // n)
    L = sampling.prompt_length(batch["attention_mask"])
    out = []
    for start in range(0, B, per):
        group = range(start, min(start + per, B))
        part = family.take_rows(batch, group, model.config)
        ids, mask = np.zeros((len(group), L), np.int32), np.zeros((len(group), L), np.int32)
        for g, (r, m) in enumerate(zip(part["input_ids"], part["attention_mask"])):
            real = r[m > 0]
            ids[g, L - real.size:], mask[g, L - real.size:] = real, 1
        inputs = family.generation_inputs({**part, "input_ids": ids, "attention_mask": mask}, model.config)
        lim = jnp.asarray(limits[start * n:(start + len(group)) * n])
        out.append(np.asarray(_static_jit()(graphdef, state, jax.tree.map(jnp.asarray, inputs), start * n, lim, key, settings,
                                      max_new_tokens=params.max_new_tokens, n=n, family=family)))
    return np.concatenate(out)


# ---- transformers --------------------------------------------------------------------------------

def hf_generate(hf, cfg, batch, n: int, slots: int, limits, max_new: int):
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class RowLimits(StoppingCriteria):
        """Row i of the call stops after limits[i] new tokens."""
        def __init__(self, lim, prompt_len):
            self.lim, self.prompt_len = torch.tensor(lim), prompt_len

        def __call__(self, input_ids, scores, **kwargs):
            return (input_ids.shape[1] - self.prompt_len) >= self.lim

    B, per = len(batch["input_ids"]), max(1, slots // n)
    family = families.for_model(cfg)
    for start in range(0, B, per):
        group = list(range(start, min(start + per, B)))
        part = family.take_rows(batch, group, cfg)
        ids, mask = part["input_ids"], part["attention_mask"]
        L = ids.shape[1]
        left_ids, left_mask = np.zeros_like(ids), np.zeros_like(mask)
        for g in range(len(group)):
            real = ids[g][mask[g] > 0]
            left_ids[g, L - real.size:], left_mask[g, L - real.size:] = real, 1
        lim = limits[start * n:(start + len(group)) * n]
        with torch.no_grad():
            hf.generate(input_ids=torch.tensor(left_ids), attention_mask=torch.tensor(left_mask),
                        pixel_values=torch.tensor(part["pixel_values"]),
                        image_grid_thw=torch.tensor(part["image_grid_thw"]),
                        mm_token_type_ids=torch.tensor((left_ids == IMAGE).astype(np.int64)),
                        do_sample=True, temperature=0.6, top_p=0.9, top_k=0, num_return_sequences=n,
                        max_new_tokens=max_new, stopping_criteria=StoppingCriteriaList([RowLimits(lim, L)]),
                        eos_token_id=None, pad_token_id=0)


# ---- the runs --------------------------------------------------------------------------------------

def load(a):
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    torch.set_num_threads(1)
    hf = Qwen2_5_VLForConditionalGeneration(hf_config(a.layers, a.vocab)).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        model = families.for_path(d).load(d, jnp.float32, jnp.float32)
    return hf, model


# The goals the engine is measured against on a CPU (docs/performance.md: by how much and why they are missed).
GOALS = {"static batch": 3.0, "transformers generate": 2.0}
SHORT = 16  # answers capped at this many tokens: the run that is almost all prefill


def call_steps(limits, n: int, slots: int) -> int:
    """Decode steps of a side that generates in calls of slots // n prompts, each call until its
    longest row ends (the static batch, transformers): token 0 comes from the prefill."""
    per = max(1, slots // n) * n
    return int(sum(limits[i:i + per].max() - 1 for i in range(0, len(limits), per)))


def fewest_steps(limits, slots: int) -> int:
    """No schedule runs fewer decode steps in `slots` slots: the longest row's, or every row's spread
    evenly over the slots."""
    return max(int(limits.max()) - 1, -(-int((limits - 1).sum()) // slots))


def rollout(a):
    hf, model = load(a)
    batch = prompts(a.prompts, a.images)
    rows = a.prompts * a.n
    limits = answer_lengths(rows, a.median, a.long, a.max_new)
    short = np.minimum(limits, SHORT)
    params = sampling.SamplingParams(max_new_tokens=a.max_new, temperature=0.6, top_p=0.9, ignore_eos=True)
    key = jax.random.key(0)
    sides = {
        "static batch": lambda lim: static_generate(model, batch, params, key, a.n, a.slots, lim),
        "engine": lambda lim: sampling.generate(model, batch, params, key, n=a.n, batch_size=a.slots,
                                                max_lengths=lim),
        "transformers generate": lambda lim: hf_generate(hf, model.config, batch, a.n, a.slots, lim, a.max_new),
    }
    times, short_times, steps, short_steps, out = {}, {}, {}, {}, {}
    for name, run in sides.items():
        if name != "transformers generate":
            run(short)  # compilation
        t = time.perf_counter()
        got = run(short)
        short_times[name] = time.perf_counter() - t
        t = time.perf_counter()
        out[name] = run(limits)
        times[name] = time.perf_counter() - t
        if name == "engine":
            steps[name], short_steps[name] = out[name].decode_steps, got.decode_steps
        else:
            steps[name], short_steps[name] = call_steps(limits, a.n, a.slots), call_steps(short, a.n, a.slots)
        print(f"{name}: {times[name]:.1f} s ({short_times[name]:.1f} s with answers of at most {SHORT})", flush=True)
    np.testing.assert_array_equal(out["engine"].lengths, limits)
    for r, n in enumerate(limits):  # the same tokens: the same keys, the same rows
        np.testing.assert_array_equal(out["engine"].tokens[r, :n], out["static batch"][r, :n])
    L = batch["attention_mask"].sum(1)
    tokens = int(limits.sum())
    fewest = fewest_steps(limits, a.slots)
    # A decode step's time: the extra wall time of the full answers over the short ones, per extra step.
    per_step = {k: (times[k] - short_times[k]) / max(1, steps[k] - short_steps[k]) for k in sides}
    print(f"config: LM hidden 2048, MLP 11008, 16/2 heads, {a.layers} layers, vocab {a.vocab}; vision 2 blocks x "
          f"1280; {a.prompts} prompts x n = {a.n} in {a.slots} slots/rows per call; prompts {L.min()}-{L.max()} "
          f"tokens with {a.images} 224x224 images; answers {limits.min()}-{limits.max()} tokens (median "
          f"{int(np.median(limits))}, {a.long} at {a.max_new}), {tokens} in all; temperature 0.6, top-p 0.9; "
          f"float32; {len(os.sched_getaffinity(0))} CPU core(s); the engine's tokens are the static batch's")
    print(f"| rollout | wall s | generated tokens/s | decode steps | ms per decode step | wall s, answers <= {SHORT} "
          "| engine speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, s in times.items():
        print(f"| {name} | {s:.1f} | {tokens / s:.1f} | {steps[name]} | {1000 * per_step[name]:.0f} | "
              f"{short_times[name]:.1f} | {s / times['engine']:.2f}x |")
    print(f"fewest decode steps any schedule could run: {fewest} (the engine's slots {100 * (tokens - rows) / (steps['engine'] * a.slots):.0f}% full)")
    # The engine at its own prefill and step times, had it run only the fewest steps.
    best = short_times["engine"] + (fewest - short_steps["engine"]) * per_step["engine"]
    for name, goal in GOALS.items():
        got = times[name] / times["engine"]
        verdict = "met" if got >= goal else f"missed by {goal / got:.2f}x"
        print(f"goal: the engine at least {goal:g}x {name}: {got:.2f}x, {verdict}; with the fewest steps it "
              f"would be {times[name] / best:.2f}x")


def fill(a):
    """Per-token decode time of the engine at fill 1k and 16k in a 32k cache, and of the static
    batch's decode step (attending the whole 32k cache whatever the fill), --slots rows."""
    _, model = load(a)
    graphdef, state = nnx.split(model)
    S, C, steps = a.slots, 32768, 16
    params = sampling.SamplingParams(max_new_tokens=C, temperature=0.6, top_p=0.9, ignore_eos=True)
    settings = sampling.knobs(params, ())
    key = jax.random.key(0)
    out = {}
    for at in (1024, 16384):
        slots = sampling._init_slots(graphdef, state, slots=S, length=C, mesh=None)
        slots = {**slots, "fill": jnp.full((S,), at, jnp.int32), "step": jnp.ones((S,), jnp.int32),
                 "limit": jnp.full((S,), C, jnp.int32), "active": jnp.ones((S,), bool), "row": jnp.arange(S)}
        slots, o = sampling._decode_chunk(graphdef, state, slots, key, settings, steps=steps, block=sampling.BLOCK,
                                          mesh=None)  # compilation
        jax.block_until_ready(o)
        t = time.perf_counter()
        slots, o = sampling._decode_chunk(graphdef, state, slots, key, settings, steps=steps, block=sampling.BLOCK,
                                          mesh=None)
        jax.block_until_ready(o)
        out[f"engine, fill {at}"] = (time.perf_counter() - t) / steps

    @functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
    def static_steps(graphdef, state, cache, index):
        m = nnx.merge(graphdef, state)
        mask = jnp.ones((S, C), jnp.int32)
        pos = jnp.zeros((3, S, 1), jnp.int32)

        def body(i, c):
            tok, cache = c
            hidden, cache = m.decode(m.embed(tok[:, None]), pos + index + i, mask, cache, index + i)
            return jnp.argmax(m.logits(hidden[:, 0]), -1).astype(jnp.int32), cache

        return jax.lax.fori_loop(0, steps, body, (jnp.zeros((S,), jnp.int32), cache))

    cache = model.init_cache(S, C)
    tok, cache = static_steps(graphdef, state, cache, 1024)
    jax.block_until_ready(tok)
    t = time.perf_counter()
    tok, cache = static_steps(graphdef, state, cache, 16384)
    jax.block_until_ready(tok)
    out["static batch, any fill"] = (time.perf_counter() - t) / steps
    print(f"config: as the rollout bench, {a.layers} layers, vocab {a.vocab}; {S} rows, 32768-token cache, "
          f"blocks of {sampling.BLOCK}; mean of {steps} steps after compilation; "
          f"{len(os.sched_getaffinity(0))} CPU core(s)")
    print("| decode step | ms per step | ms per token |")
    print("|---|---:|---:|")
    for name, s in out.items():
        print(f"| {name} | {1000 * s:.1f} | {1000 * s / S:.1f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fill", action="store_true", help="per-token decode time at fill 1k vs 16k in a 32k cache")
    p.add_argument("--layers", type=int, default=2, help="language-model layers (default 2)")
    p.add_argument("--vocab", type=int, default=16384, help="vocabulary (default 16384; the 3B's is 151936)")
    p.add_argument("--prompts", type=int, default=8, help="prompts (default 8)")
    p.add_argument("--n", type=int, default=4, help="samples per prompt (default 4)")
    p.add_argument("--slots", type=int, default=8, help="rows at once: the engine's slots, the calls' rows (default 8)")
    p.add_argument("--images", type=int, default=4, help="224x224 images per prompt (default 4)")
    p.add_argument("--max-new", type=int, default=384, help="the longest answer (default 384)")
    p.add_argument("--median", type=int, default=96, help="median answer length (default 96)")
    p.add_argument("--long", type=int, default=3, help="answers at --max-new (default 3)")
    a = p.parse_args()
    _heavy_imports()
    jax.config.update("jax_default_matmul_precision", "highest")
    (fill if a.fill else rollout)(a)


if __name__ == "__main__":
    main()
