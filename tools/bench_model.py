"""Forward and forward+backward time of the Flax Qwen2.5-VL against transformers' PyTorch model.

    python tools/bench_model.py [--layers 8 --hidden 512 --tokens 512 --repeats 5]

Same small config and weights in both (LM hidden 512, 8 layers; vision 4 blocks), the same batch
(2 samples x 512 tokens, 2 images of 224x224 each), float32, median of --repeats runs after a
warm-up. The loss for the backward pass is the mean next-token NLL over all positions, gradients
for every parameter. Prints a table with the JAX/PyTorch ratio (lower is better for JAX).

On a GPU, --preset 3b runs the full 3B architecture with random weights in bfloat16 (JAX only)
and reports forward+backward tokens/s and MFU (FLOPs: 6 x matmul parameters per token + 12 x
layers x seq x hidden for attention, vision tower counted the same way over its patches).
"""

from __future__ import annotations
if __package__ in (None, ""):  # run as `python tools/X.py`: import this checkout, as `python -m tools.X` does
    import os, sys; sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import os
import sys
import tempfile

import numpy as np

from tools.bench_common import IMAGE, VEND, VSTART, hf_config, median_time  # noqa: E402

def make_batch(tokens: int, images_per_sample: int = 2, side: int = 224, seed: int = 0):
    rng = np.random.default_rng(seed)
    g = side // 14
    per_image = (g // 2) ** 2
    ids = []
    for _ in range(2):
        seq = list(rng.integers(10, 7000, 8))
        for _ in range(images_per_sample):
            seq += [VSTART] + [IMAGE] * per_image + [VEND] + list(rng.integers(10, 7000, 4))
        seq += list(rng.integers(10, 7000, tokens - len(seq)))
        ids.append(seq)
    ids = np.array(ids, np.int64)
    grid = np.array([[1, g, g]] * (2 * images_per_sample), np.int64)
    pv = rng.standard_normal((int(grid.prod(-1).sum()), 1176)).astype(np.float32)
    return ids, np.ones_like(ids), pv, grid


def bench_jax(model, ids, mask, pv, grid, repeats):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    prep = jax.tree.map(jnp.asarray, model.prepare(ids, mask, pv, grid))
    graphdef, state = nnx.split(model)

    def loss_fn(state, prep):
        m = nnx.merge(graphdef, state)
        logits = m.forward(prep["input_ids"], prep["attention_mask"], prep["position_ids"], prep["pixel_values"],
                           prep["vision"])
        logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
        return -jnp.take_along_axis(logp, prep["input_ids"][:, 1:, None], axis=-1).mean()

    fwd = jax.jit(loss_fn)
    grad = jax.jit(jax.value_and_grad(loss_fn))
    t_fwd = median_time(lambda: fwd(state, prep).block_until_ready(), repeats)
    t_bwd = median_time(lambda: jax.block_until_ready(grad(state, prep)), repeats)
    return t_fwd, t_bwd


def bench_torch(hf, ids, mask, pv, grid, repeats):
    import torch

    inputs = dict(
        input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), pixel_values=torch.tensor(pv),
        image_grid_thw=torch.tensor(grid), mm_token_type_ids=torch.tensor((ids == IMAGE).astype(np.int64)),
    )
    labels = torch.tensor(ids)

    def loss():
        logits = hf(**inputs).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        return -logp.gather(-1, labels[:, 1:, None]).mean()

    def fwd():
        with torch.no_grad():
            loss()

    def fwd_bwd():
        hf.zero_grad(set_to_none=True)
        loss().backward()

    return median_time(fwd, repeats), median_time(fwd_bwd, repeats)


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
    ids, mask, pv, grid = make_batch(a.tokens)
    jf, jb = bench_jax(model, ids, mask, pv, grid, a.repeats)
    tf, tb = bench_torch(hf, ids, mask, pv, grid, a.repeats)
    print(f"config: LM hidden {a.hidden}, {a.layers} layers; vision 4 blocks x 256; batch 2 x {a.tokens} tokens, "
          f"2 images 224x224 each; float32; {os.cpu_count()} CPU cores; median of {a.repeats}")
    print("| pass | JAX (ms) | PyTorch (ms) | JAX / PyTorch |")
    print("|---|---|---|---|")
    print(f"| forward | {jf * 1e3:.1f} | {tf * 1e3:.1f} | {jf / tf:.2f} |")
    print(f"| forward+backward | {jb * 1e3:.1f} | {tb * 1e3:.1f} | {jb / tb:.2f} |")


def flops_per_token(cfg, seq: int) -> float:
    t = cfg.text
    matmul = t.num_hidden_layers * (
        2 * t.hidden_size * t.hidden_size + 2 * t.hidden_size * t.num_key_value_heads * t.head_dim
        + 3 * t.hidden_size * t.intermediate_size
    ) + t.hidden_size * t.vocab_size
    return 6 * matmul + 12 * t.num_hidden_layers * seq * t.hidden_size


def vision_flops(cfg, patches: int) -> float:
    v = cfg.vision
    per_patch = v.depth * (4 * v.hidden_size**2 + 3 * v.hidden_size * v.intermediate_size) + v.hidden_size * v.hidden_size
    return 6 * per_patch * patches + 12 * v.depth * patches * 64 * 4 * v.hidden_size


def gpu_3b(a):
    import jax.numpy as jnp

    from progress_jax.models import families

    family = families.for_preset("qwen2_5_vl_3b")
    cfg = family.architecture("", "qwen2_5_vl_3b")
    model = family.build(cfg, 0, jnp.bfloat16, jnp.bfloat16)
    tokens, side = 4096, 448
    g = side // 14
    per_image = (g // 2) ** 2
    rng = np.random.default_rng(0)
    seq = list(rng.integers(10, 150000, 8))
    for _ in range(6):
        seq += [cfg.vision_start_token_id] + [cfg.image_token_id] * per_image + [cfg.vision_end_token_id]
    seq += list(rng.integers(10, 150000, tokens - len(seq)))
    ids = np.array([seq], np.int64)
    grid = np.array([[1, g, g]] * 6)
    pv = rng.standard_normal((int(grid.prod(-1).sum()), 1176)).astype(np.float32)
    _, t = bench_jax(model, ids, np.ones_like(ids), pv, grid, a.repeats)
    total = flops_per_token(cfg, tokens) * tokens + vision_flops(cfg, pv.shape[0])
    peak = 989e12
    print(f"3B bf16, 1 x {tokens} tokens with 6 images {side}x{side}: fwd+bwd {t * 1e3:.0f} ms, "
          f"{tokens / t:.0f} tokens/s, MFU {total / t / peak * 100:.1f}% of {peak / 1e12:.0f} TFLOP/s")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=["small", "3b"], default="small",
                   help="small: the JAX vs PyTorch comparison (CPU); 3b: the 3B architecture, JAX only, bfloat16 (GPU)")
    p.add_argument("--layers", type=int, default=8, help="small: language-model layers (default 8)")
    p.add_argument("--hidden", type=int, default=512, help="small: language-model hidden size (default 512)")
    p.add_argument("--tokens", type=int, default=512, help="tokens per sample, images included (default 512)")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed runs after the warm-up; the median is reported (default 5)")
    a = p.parse_args()
    import jax  # heavy: imported after --help

    jax.config.update("jax_default_matmul_precision", "highest" if a.preset == "small" else "default")
    compare(a) if a.preset == "small" else gpu_3b(a)


if __name__ == "__main__":
    main()
