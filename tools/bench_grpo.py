"""Whole-step GRPO throughput: (prompt + response tokens) / step time, and where the time goes,
with each group's prompt shared by its rollouts (grpo.shared_prompt) and with a copy per rollout.

    python tools/bench_grpo.py                      # CPU: small model, 8 prompts x 4 rollouts
    python tools/bench_grpo.py --preset 3b --layers 2 --prompts 4 --images 6 --side 224 \
        --text 300 --new-tokens 256 --micro-batch 4   # CPU: the 3B's widths, ProgressLM-shaped
    python tools/bench_grpo.py --preset 3b --prompts 64 --images 6 --new-tokens 512   # one GPU

Random weights and random prompt tokens with images; the reward is random (a random model's text
would score the same everywhere, and the reward's cost is negligible), so every rollout runs to
--new-tokens unless it samples a stop token. Steps after the first (compilation) are timed and
the median is printed with its rollout / log-prob / update split, one row per layout (the same
keys, so the same rollouts). tokens/s: prompt + response tokens of every rollout per second, in
both layouts. EasyR1's published figure for Qwen2.5-VL-3B GRPO is 1800 tokens/s/GPU (8x H100,
vLLM rollouts, as EasyR1 reports it; a copy of the prompt per rollout).
"""

from __future__ import annotations
if __package__ in (None, ""):  # run as `python tools/X.py`: import this checkout, as `python -m tools.X` does
    import os, sys; sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import dataclasses
import os
import statistics
import sys

import numpy as np


def prompts(cfg, n: int, images: int, side: int, text: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    g = side // 14
    per = (g // 2) ** 2
    rows = []
    for _ in range(n):
        seq = list(rng.integers(10, min(cfg.text.vocab_size, 2000), 8))
        for _ in range(images):
            seq += [cfg.vision_start_token_id] + [cfg.image_token_id] * per + [cfg.vision_end_token_id]
        rows.append(seq + list(rng.integers(10, min(cfg.text.vocab_size, 2000), text)))
    L = max(map(len, rows))
    ids = np.zeros((n, L), np.int32)
    mask = np.zeros((n, L), np.int32)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    grid = np.array([[1, g, g]] * (n * images), np.int32)
    pv = rng.standard_normal((int(grid.prod(-1).sum()), 1176)).astype(np.float32)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pv, "image_grid_thw": grid,
            "records": [f"p{i}" for i in range(n)]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=["tiny", "3b"], default="tiny",
                   help="model architecture with random weights: tiny (CPU) or 3b (Qwen2.5-VL-3B, bfloat16, GPU)")
    p.add_argument("--prompts", type=int, default=8, help="prompts per GRPO step (default 8)")
    p.add_argument("--n", type=int, default=4, help="rollouts per prompt (default 4)")
    p.add_argument("--images", type=int, default=2, help="images per prompt (default 2)")
    p.add_argument("--side", type=int, default=112, help="image side in pixels, a multiple of 28 (default 112)")
    p.add_argument("--text", type=int, default=200, help="text tokens per prompt besides the images")
    p.add_argument("--new-tokens", type=int, default=64, help="most tokens generated per rollout (default 64)")
    p.add_argument("--micro-batch", type=int, default=8, help="train.micro_batch_size of the policy update (default 8)")
    p.add_argument("--layers", type=int, default=0,
                   help="decoder layers (and vision blocks, at most the preset's) kept; 0: the preset's (default)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help="weights and compute (default: bfloat16 for 3b, float32 for tiny)")
    p.add_argument("--layout", choices=["both", "shared", "repeated"], default="both",
                   help="the prompt shared by a group's rows, a copy per rollout, or both in turn (default)")
    p.add_argument("--steps", type=int, default=3,
                   help="GRPO steps run; the first (compilation) is not timed (default 3)")
    a = p.parse_args()
    import jax  # heavy: imported after --help

    from configs import grpo as grpo_config
    from data_pipeline.tokenizer import load_tokenizer
    from progress_jax import distributed, jobs, loading, lora
    from progress_jax.models import families
    from progress_jax.train import grpo

    c = grpo_config.get_config()
    c.model.preset = "qwen2_5_vl_3b" if a.preset == "3b" else "tiny"
    c.model.param_dtype = c.model.compute_dtype = a.dtype or ("bfloat16" if a.preset == "3b" else "float32")
    if a.preset == "3b":
        c.model.remat = "full"
    c.grpo.n, c.grpo.rollout_batch_size = a.n, a.prompts
    c.lora.rank = 8
    c.train.update(dict(lr=1e-6, batch_size=a.prompts, micro_batch_size=a.micro_batch, steps=a.steps, epochs=1.0))
    c.sampling.max_new_tokens, c.sampling.temperature = a.new_tokens, 0.6
    c.data.length_buckets = (1 << (a.text + 8 + a.images * ((a.side // 28) ** 2 + 2) - 1).bit_length(),)
    c.data.patch_buckets = (1 << (a.micro_batch * a.images * (a.side // 14) ** 2 - 1).bit_length(),)
    mesh = distributed.make_mesh(c)
    family = families.for_config(c)
    arch = family.architecture("", c.model.preset)
    if a.layers:
        v = arch.vision
        blocks = min(a.layers, v.depth)
        full = tuple(i for i in v.fullatt_block_indexes if i < blocks) or (blocks - 1,)
        arch = dataclasses.replace(arch, text=dataclasses.replace(arch.text, num_hidden_layers=a.layers),
                                   vision=dataclasses.replace(v, depth=blocks, fullatt_block_indexes=full))
    dtype = loading.DTYPES[c.model.param_dtype]
    batch = prompts(arch, a.prompts, a.images, a.side, a.text)
    layouts = {"both": (True, False), "shared": (True,), "repeated": (False,)}[a.layout]
    print(f"{a.preset}{f' ({a.layers} layers)' if a.layers else ''}: {a.prompts} prompts x {a.n} rollouts, "
          f"{a.images} images of {a.side}px, {a.text} text tokens, up to {a.new_tokens} new tokens; "
          f"{jax.device_count()} x {jax.devices()[0].device_kind}; median of steps after the first")
    print("| prompt | step s | rollout s | log-probs s | update s | tokens/s | tokens/s/device |")
    print("|---|---|---|---|---|---|---|")
    for shared in layouts:
        c.grpo.shared_prompt = shared
        model = family.build(arch, 0, dtype, dtype)
        lora.from_config(model, c.lora, seed=0, mesh=mesh)
        rng = np.random.default_rng(0)
        step = grpo.Step(jobs.grpo_spec(c, mesh, model=model), load_tokenizer(None),
                         reward_fn=lambda gen, recs: [{"overall": float(rng.random())} for _ in recs])
        state, runs = step.spec.setup.state, []
        for s in range(a.steps):
            state, m = step(state, batch, jax.random.key(s))
            runs.append(m)
        timed = runs[1:] or runs
        med = lambda k: statistics.median(r[k] for r in timed)  # noqa: E731
        print(f"| {'shared' if shared else 'a copy per rollout'} | {med('step_time_s'):.1f} | "
              f"{med('time/rollout_s'):.1f} | {med('time/logprobs_s'):.1f} | {med('time/update_s'):.1f} | "
              f"{med('tokens_per_s'):.0f} | {med('tokens_per_s') / jax.device_count():.0f} |", flush=True)


if __name__ == "__main__":
    main()
