"""Decode throughput of the JAX sampler against transformers' `generate`.

    python tools/bench_sampling.py [--hidden 512 --layers 4 --batch 8 --new-tokens 128 --repeats 3]

Same small random Qwen2.5-VL in both (LM hidden 512, 4 layers, vocab 8192; vision 4 blocks x 256),
the same left-padded batch (8 prompts of about 200 tokens, each with one 224x224 image), greedy,
float32, exactly --new-tokens generated per row (eos ignored: `ignore_eos` here, `min_new_tokens`
there). Each side is timed generating 1 token (prefill) and --new-tokens tokens; decode tokens/s =
batch x (new_tokens - 1) / (difference), best of --repeats after a warm-up (compilation).

On a GPU, --preset 3b times the JAX sampler alone on the 3B architecture with random weights in
bfloat16 at batch 64 (one 448x448 image per prompt).

--preset rollout times GRPO's rollout of --batch ProgressLM-shaped prompts (--images 224x224 key
frames and an observation among about 600 text tokens, a short answer of --new-tokens) x --n
samples on the same small model, JAX only: every prompt row repeated n times with its images (the
rollout before shared prefill) against `sampling.generate(..., n=n)` (each prompt encoded and
prefilled once), both sampled at temperature 0.6, top-p 0.9, eos ignored, best of --repeats.

    python tools/bench_sampling.py --preset rollout [--batch 2 --n 4 --images 6 --new-tokens 32]
"""

from __future__ import annotations
if __package__ in (None, ""):  # run as `python tools/X.py`: import this checkout, as `python -m tools.X` does
    import os, sys; sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import functools
import os
import sys
import tempfile
import time

import numpy as np

from tools.bench_common import IMAGE, VEND, VSTART, hf_config, progresslm_prompts  # noqa: E402

def make_batch(batch: int, image_token: int, vstart: int, vend: int, vocab: int, side: int = 224, seed: int = 0):
    """Left-padded prompts of varying length (150-214 text tokens around one image each)."""
    rng = np.random.default_rng(seed)
    g = side // 14
    rows = []
    for b in range(batch):
        text = lambda n: list(rng.integers(10, min(vocab, 7000), n))
        rows.append(text(20) + [vstart] + [image_token] * (g // 2) ** 2 + [vend] + text(130 + 8 * b))
    L = max(map(len, rows))
    ids = np.zeros((batch, L), np.int64)
    mask = np.zeros((batch, L), np.int64)
    for b, r in enumerate(rows):
        ids[b, L - len(r):], mask[b, L - len(r):] = r, 1
    grid = np.array([[1, g, g]] * batch, np.int64)
    pv = rng.standard_normal((int(grid.prod(-1).sum()), 1176)).astype(np.float32)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pv, "image_grid_thw": grid}


def best_times(runs: dict, repeats: int) -> dict:
    """Best-of-`repeats` seconds per named callable after one warm-up (compilation) each. Runs are
    interleaved so that every side sees the same background load of a shared machine, and the
    minimum is kept because such load only ever adds time."""
    for fn in runs.values():
        fn()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: min(ts) for name, ts in times.items()}


def jax_run(model, batch, new_tokens):
    import jax

    from progress_jax import sampling

    params = sampling.SamplingParams(max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    return lambda: sampling.generate(model, batch, params, jax.random.key(0))


def torch_run(hf, batch, new_tokens):
    import torch

    inputs = {k: torch.tensor(v) for k, v in batch.items()}
    inputs["mm_token_type_ids"] = torch.tensor((batch["input_ids"] == IMAGE).astype(np.int64))

    def run():
        with torch.no_grad():
            out = hf.generate(**inputs, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              pad_token_id=0)
        assert out.shape[1] == batch["input_ids"].shape[1] + new_tokens

    return run


def compare(a):
    import jax.numpy as jnp
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from progress_jax.models import families

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    hf = Qwen2_5_VLForConditionalGeneration(hf_config(a.hidden, a.layers)).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        model = families.for_path(d).load(d, jnp.float32, jnp.float32)
    batch = make_batch(a.batch, IMAGE, VSTART, VEND, 8192)
    sides = (("JAX sampler", jax_run, model), ("transformers generate", torch_run, hf))
    best = best_times({(name, n): fn(m, batch, n) for name, fn, m in sides for n in (1, a.new_tokens)}, a.repeats)
    rows = []
    for name, _, _ in sides:
        t1, tn = best[name, 1], best[name, a.new_tokens]
        rows.append((name, t1, tn, a.batch * (a.new_tokens - 1) / (tn - t1)))
    print(f"config: LM hidden {a.hidden}, {a.layers} layers, vocab 8192; vision 4 blocks x 256; batch {a.batch}, "
          f"prompts {int(batch['attention_mask'].sum(1).min())}-{batch['input_ids'].shape[1]} tokens with one "
          f"224x224 image each; {a.new_tokens} new tokens (greedy, eos ignored); float32; {os.cpu_count()} CPU "
          f"cores; best of {a.repeats}")
    print("| generator | prefill + 1 token (s) | prefill + {0} tokens (s) | decode tokens/s |".format(a.new_tokens))
    print("|---|---:|---:|---:|")
    for name, t1, tn, tps in rows:
        print(f"| {name} | {t1:.3f} | {tn:.3f} | {tps:.0f} |")
    print(f"JAX / transformers decode throughput: {rows[0][3] / rows[1][3]:.2f}x")


def gpu_3b(a):
    import jax.numpy as jnp

    from progress_jax.models import families

    family = families.for_preset("qwen2_5_vl_3b")
    cfg = family.architecture("", "qwen2_5_vl_3b")
    model = family.build(cfg, 0, jnp.bfloat16, jnp.bfloat16)
    batch = make_batch(64, cfg.image_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id,
                       cfg.text.vocab_size, side=448)
    best = best_times({n: jax_run(model, batch, n) for n in (1, a.new_tokens)}, a.repeats)
    t1, tn = best[1], best[a.new_tokens]
    print(f"3B bf16 random weights, batch 64, one 448x448 image per prompt, {a.new_tokens} new tokens: prefill "
          f"{t1:.2f} s, total {tn:.2f} s, decode {64 * (a.new_tokens - 1) / (tn - t1):.0f} tokens/s")


def progresslm_batch(batch: int, images: int, cfg, seed: int = 0) -> dict:
    """ProgressLM-shaped prompts of about 600 text tokens, varying by row, with cfg's vision token ids."""
    return progresslm_prompts(batch, images, first=200, step=16, per_image=40, last=150, seed=seed,
                              ids=(cfg.vision_start_token_id, cfg.image_token_id, cfg.vision_end_token_id))


def rollout(a):
    import dataclasses

    import jax
    import jax.numpy as jnp

    from progress_jax import sampling
    from progress_jax.models import families

    # hf_config's small model (tools/bench_common.py): the 3B preset with smaller sizes.
    family = families.for_preset("qwen2_5_vl_3b")
    base = family.architecture("", "qwen2_5_vl_3b")
    t = dataclasses.replace(base.text, vocab_size=8192, hidden_size=a.hidden, intermediate_size=a.hidden * 11 // 4,
                            num_hidden_layers=a.layers, num_attention_heads=a.hidden // 64, num_key_value_heads=2,
                            mrope_section=(8, 12, 12), max_position_embeddings=4096)
    v = dataclasses.replace(base.vision, depth=4, hidden_size=256, intermediate_size=640, num_heads=4,
                            out_hidden_size=a.hidden, fullatt_block_indexes=(1, 3))
    cfg = dataclasses.replace(base, vision=v, text=t, image_token_id=IMAGE, video_token_id=8003,
                              vision_start_token_id=VSTART, vision_end_token_id=VEND, eos_token_id=8004, pad_token_id=0)
    model = family.build(cfg, 0, jnp.float32, jnp.float32)
    batch = progresslm_batch(a.batch, a.images, cfg)
    repeated = family.take_rows(batch, np.repeat(np.arange(a.batch), a.n), cfg)
    key = jax.random.key(0)
    runs, out = {}, {}
    for new in (1, a.new_tokens):
        params = sampling.SamplingParams(max_new_tokens=new, temperature=0.6, top_p=0.9, ignore_eos=True)

        def run(name, b, n, new=new, params=params):
            out[name, new] = sampling.generate(model, b, params, key, n=n)

        runs["repeated rows", new] = functools.partial(run, "repeated rows", repeated, 1)
        runs["shared prefill", new] = functools.partial(run, "shared prefill", batch, a.n)
    best = best_times(runs, a.repeats)
    for new in (1, a.new_tokens):  # the same tokens either way
        np.testing.assert_array_equal(out["repeated rows", new].tokens, out["shared prefill", new].tokens)
    L = batch["attention_mask"].sum(1)
    print(f"config: LM hidden {a.hidden}, {a.layers} layers, vocab 8192; vision 4 blocks x 256; {a.batch} prompts x "
          f"n = {a.n}, prompts {L.min()}-{L.max()} tokens with {a.images} 224x224 images each; {a.new_tokens} new "
          f"tokens (temperature 0.6, top-p 0.9, eos ignored); float32; {os.cpu_count()} CPU cores; best of "
          f"{a.repeats}; the same tokens both ways")
    print(f"| rollout | images encoded | prompt rows prefilled | prefill + 1 token (s) | prefill + {a.new_tokens} "
          f"tokens (s) |")
    print("|---|---:|---:|---:|---:|")
    for name, rows in (("repeated rows", a.batch * a.n), ("shared prefill", a.batch)):
        print(f"| {name} | {rows * a.images} | {rows} | {best[name, 1]:.2f} | {best[name, a.new_tokens]:.2f} |")
    ratio = best["repeated rows", a.new_tokens] / best["shared prefill", a.new_tokens]
    print(f"repeated rows / shared prefill wall time: {ratio:.2f}x")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=["small", "3b", "rollout"], default="small",
                   help="small: JAX vs transformers generate (CPU); 3b: the JAX sampler alone on the 3B architecture "
                        "(GPU); rollout: GRPO's rollout, repeated rows vs shared prefill (CPU)")
    p.add_argument("--layers", type=int, default=4, help="small: language-model layers (default 4)")
    p.add_argument("--hidden", type=int, default=512, help="small: language-model hidden size (default 512)")
    p.add_argument("--batch", type=int, default=None, help="prompts decoded together (default 8; rollout: 2)")
    p.add_argument("--new-tokens", type=int, default=None,
                   help="tokens generated per prompt, eos ignored (default 128; rollout: 32)")
    p.add_argument("--n", type=int, default=4, help="rollout: samples per prompt (default 4)")
    p.add_argument("--images", type=int, default=6, help="rollout: images per prompt (default 6)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed runs after the warm-up; the best is reported (default 3)")
    a = p.parse_args()
    a.batch = a.batch or (2 if a.preset == "rollout" else 8)
    a.new_tokens = a.new_tokens or (32 if a.preset == "rollout" else 128)
    import jax  # heavy: imported after --help

    jax.config.update("jax_default_matmul_precision", "default" if a.preset == "3b" else "highest")
    {"small": compare, "3b": gpu_3b, "rollout": rollout}[a.preset](a)


if __name__ == "__main__":
    main()
