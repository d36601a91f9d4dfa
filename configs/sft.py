"""LoRA SFT: `python -m progress_jax.main --config configs/sft.py [--config.a.b=value ...]`.

With `--config.model.path=DIR` (a Qwen2.5-VL Hub checkpoint) the unset train.* fields take the
paper's recipe (REFERENCE §6): LoRA r 8 / alpha 16 / dropout 0.05 on every LM linear layer,
lr 1e-4 cosine with warmup 0.1, effective batch 64 (micro-batch 1, accumulated), 3 epochs, bf16.
Set data.train_files to the SFT records (JSONL with a `response`, chat JSONL, or ArrayRecord).
With nothing given: the tiny random model, all language-model weights trained (LoRA on a random
base has nothing to adapt), on ProgressBench-Sim small with the sim's brief four-block answers
as targets; 120 steps of 8, a few minutes on two CPU cores, then greedy answers to two benchmark
prompts with their format check.

Outputs in `workdir`: metrics.jsonl + TensorBoard events, checkpoints/<step>/ (Orbax; resumed
automatically), final/trainable.safetensors + trainable.json (the trained parameters by
'/'-joined path, for `train.init_params` of a later SFT or GRPO job), and merged/ (Hub layout,
LoRA folded in) when train.export_merged.
"""
import ml_collections
from ml_collections import config_dict

from configs.base import base


def get_config() -> ml_collections.ConfigDict:
    c = base()
    c.job = "sft"
    c.workdir = "runs/sft"
    # None = chosen by sft.resolve for the model: REFERENCE §6 (image_max_pixels 1003520, up to
    # 32K tokens) with model.path; 112x112 images and short buckets for the tiny demo.
    for key, kind in (("min_pixels", int), ("max_pixels", int), ("length_buckets", tuple),
                      ("patch_buckets", tuple), ("image_buckets", tuple)):
        c.data[key] = config_dict.placeholder(kind)
    c.data.train_files = ()  # empty: ProgressBench-Sim's train/sft.jsonl
    # The tiny default learns the sim's brief answers (~60 tokens), shared with the GRPO demo.
    c.data.sim_dir = "cache/sim_small_brief"
    c.data.sim_reasoning = "brief"
    c.lora.rank = config_dict.placeholder(int)  # None: 8 with model.path, 0 (full) for the tiny default

    t = c.train = ml_collections.ConfigDict()
    # None = the recipe default for the model (REFERENCE §6 with model.path, the tiny demo without).
    t.lr = config_dict.placeholder(float)
    t.batch_size = config_dict.placeholder(int)  # effective (global) batch per optimizer step
    t.micro_batch_size = config_dict.placeholder(int)  # rows per process per forward/backward
    t.epochs = config_dict.placeholder(float)
    t.demo_samples = config_dict.placeholder(int)
    t.steps = config_dict.placeholder(int)  # > 0 overrides epochs; None: 120 for the tiny default
    t.warmup_ratio = 0.1
    t.weight_decay = 0.0
    t.clip_norm = 1.0  # 0: off
    t.loss_chunk = 0  # positions per logits chunk in the loss; 0: all at once (small vocabularies)
    t.save_every = 50
    t.keep = 3
    t.init_params = ""  # directory with trainable.safetensors to start from
    t.export_merged = False
    t.peak_flops_per_device = 0.0  # 0: known accelerators only (MFU omitted on CPU)
    t.demo_max_new_tokens = 400
    return c
