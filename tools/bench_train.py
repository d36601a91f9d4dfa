"""LoRA SFT step time: this project (jitted JAX step) vs transformers + PEFT (the stack under
LLaMA-Factory) on the same model config, the same batch with images, LoRA r 8 / alpha 16 /
dropout 0.05 on the q/k/v/o/gate/up/down projections of the language model, AdamW.

    python tools/bench_train.py [--preset tiny] [--batch 4] [--length 512] [--images 4] [--steps 5]

Prints a table with the median step time, tokens/s and the JAX / PyTorch ratio.
"""
from __future__ import annotations
if __package__ in (None, ""):  # run as `python tools/X.py`: import this checkout, as `python -m tools.X` does
    import os, sys; sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import os
import platform
import sys

import numpy as np

from tools.bench_common import median_time  # noqa: E402

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_batch(cfg, batch: int, length: int, images: int, seed: int = 0) -> dict:
    """Rows of `length` tokens, each with `images` 112x112 images (grid 1x8x8, 16 tokens); the
    last third of every row is the answer (loss_mask)."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((batch, length), np.int32)
    for b in range(batch):
        seq = list(rng.integers(10, cfg.text.vocab_size, 8))
        for _ in range(images):
            seq += [cfg.vision_start_token_id] + [cfg.image_token_id] * 16 + [cfg.vision_end_token_id]
        seq += list(rng.integers(10, cfg.text.vocab_size, length - len(seq)))
        ids[b] = seq
    loss_mask = np.zeros_like(ids)
    loss_mask[:, 2 * length // 3:] = 1
    n = batch * images
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": loss_mask,
            "pixel_values": rng.standard_normal((64 * n, 1176)).astype(np.float32),
            "image_grid_thw": np.tile(np.array([[1, 8, 8]], np.int32), (n, 1))}


def sft_runner(model, host: dict, remat: str = "none", loss_chunk: int = 0):
    """A callable that runs one LoRA SFT step on `host` (make_batch's arrays) and waits for it, set
    up as the SFT trainer does (loop.setup_state, programs.make_step, loop.jit_step) on one device for a
    model with LoRA injected. The step donates its state: it gets a copy, so the model keeps its
    own LoRA arrays."""
    import jax
    import jax.numpy as jnp

    from progress_jax import sharding
    from progress_jax.models import families
    from progress_jax.train import loop, programs, schedule

    cfg = model.config
    family = families.for_model(cfg)
    tx = schedule.make_optimizer(1e-4, 0.0, 0.1, 1000, 1.0)
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    setup = loop.setup_state(model, mesh, tx, rank=8)
    batch = family.stack_micro([host], cfg)
    batch_sh = loop.batch_shardings(batch, mesh, family)
    step = loop.jit_step(programs.make_step(setup.parts, tx, mesh, remat=remat, loss_chunk=loss_chunk), mesh,
                         setup.state_sh, setup.frozen_sh, batch_sh)
    box = {"state": jax.tree.map(jnp.copy, setup.state)}
    frozen, dev = jax.device_put(setup.parts.frozen, setup.frozen_sh), loop.to_device(batch, batch_sh, family)

    def run():
        box["state"], m = step(box["state"], frozen, dev)
        jax.block_until_ready(m)

    return run


def bench_jax(cfg, host: dict, steps: int, remat: str) -> float:
    import jax.numpy as jnp

    from progress_jax import lora
    from progress_jax.models import families

    model = families.for_model(cfg).build(cfg, 0, jnp.float32, jnp.float32)
    lora.inject(model, 8, 16.0, 0.05)
    return median_time(sft_runner(model, host, remat), steps, warmup=2)


def bench_torch(cfg, host: dict, steps: int) -> float:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**cfg.to_hf_dict()))
    pattern = r".*language_model.*\.(" + "|".join(TARGETS) + ")"
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=pattern))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    ids = torch.tensor(host["input_ids"], dtype=torch.long)
    labels = torch.where(torch.tensor(host["loss_mask"]) > 0, ids, torch.full_like(ids, -100))
    inputs = dict(input_ids=ids, attention_mask=torch.tensor(host["attention_mask"]), labels=labels,
                  pixel_values=torch.tensor(host["pixel_values"]), image_grid_thw=torch.tensor(host["image_grid_thw"]),
                  mm_token_type_ids=(ids == cfg.image_token_id).long())

    def run():
        loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return median_time(run, steps, warmup=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny",
                    help="model preset (tiny, qwen2_5_vl_3b, qwen2_5_vl_7b) with random weights (default tiny)")
    ap.add_argument("--batch", type=int, default=4, help="rows per step (default 4)")
    ap.add_argument("--length", type=int, default=512, help="tokens per row, images included (default 512)")
    ap.add_argument("--images", type=int, default=4, help="images per row (default 4)")
    ap.add_argument("--steps", type=int, default=5,
                    help="timed steps after 2 warm-up steps; the median is reported (default 5)")
    ap.add_argument("--remat", default="none",
                    help="JAX side: decoder-layer rematerialisation, none | full | dots (default none)")
    args = ap.parse_args()
    import jax  # heavy: imported after --help

    from progress_jax.models import families

    cfg = families.for_preset(args.preset).architecture("", args.preset)
    host = make_batch(cfg, args.batch, args.length, args.images)
    tokens = args.batch * args.length
    t_jax = bench_jax(cfg, host, args.steps, args.remat)
    t_torch = bench_torch(cfg, host, args.steps)
    print(f"LoRA SFT step, preset {args.preset}, batch {args.batch} x {args.length} tokens, "
          f"{args.images} images/row, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"jax {jax.__version__} on {jax.devices()[0].device_kind}")
    print("| stack | step time (ms) | tokens/s |\n|---|---|---|")
    print(f"| progress_jax (JAX, jit) | {1e3 * t_jax:.1f} | {tokens / t_jax:.0f} |")
    print(f"| transformers + PEFT (PyTorch) | {1e3 * t_torch:.1f} | {tokens / t_torch:.0f} |")
    print(f"JAX / PyTorch step time: {t_jax / t_torch:.2f}x (goal <= 0.7x)")


if __name__ == "__main__":
    main()
