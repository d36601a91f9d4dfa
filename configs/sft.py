"""LoRA SFT: `python -m progress_jax.main --config configs/sft.py[:demo|:paper] [--config.a.b=value ...]`.

`demo` (the default): the tiny random model, all language-model weights trained (LoRA on a random
base has nothing to adapt), on ProgressBench-Sim small with the sim's brief four-block answers as
targets; 120 steps of 8, a few minutes on two CPU cores, then greedy answers to two benchmark
prompts with their format check.

`nano`: the learning experiment of docs/learning.md: the `nano` model preset (the tiny model with
more, narrower heads) with its vision tower trained, on ProgressBench-Sim `nano` (many
trajectories, three samples each, 112 px), validated on held-out test trajectories every 300 steps.

`paper`: the published recipe, LLaMA-Factory's shipped qwen2_5vl_lora_sft_small.yaml (see
docs/recipes.md): LoRA r 8 / alpha 16 / dropout 0.05 on every LM linear layer, lr 1e-4 cosine with
warmup 0.1, effective batch 64, 3 epochs, cut-off 30000 tokens, images at most 1003520 pixels, bf16
base weights. Set model.path (a Qwen2.5-VL-3B-Instruct Hub checkpoint) and data.train_files (the SFT
records: JSONL with a `response`, chat JSONL, or ArrayRecord), data.image_root.

Outputs in `workdir`: metrics.jsonl + TensorBoard events, checkpoints/<step>/ (Orbax; resumed
automatically), final/trainable.safetensors + trainable.json (the trained parameters by
'/'-joined path, for `train.init_params` of a later SFT or GRPO job), and merged/ (Hub layout,
LoRA folded in) when train.export_merged.
"""
import ml_collections

from configs.base import VARIANTS, base, demo_data, nano_data, validation, variant


def get_config(arg=None) -> ml_collections.ConfigDict:
    name = variant(arg, VARIANTS + ("nano",))
    c = base()
    c.job = "sft"
    c.workdir = "runs/sft"
    c.data.train_files = ()  # empty: ProgressBench-Sim's train/sft.jsonl

    t = c.train  # base() holds train.device_memory_gb
    t.lr = 2e-3
    t.schedule = "cosine"  # cosine | constant (after the linear warmup)
    t.batch_size = 8  # effective (global) batch per optimizer step
    t.micro_batch_size = 8  # rows per forward/backward (global, split over the data devices)
    t.epochs = 1.0
    t.steps = 120  # > 0 overrides epochs
    t.warmup_ratio = 0.1
    t.weight_decay = 0.0
    t.clip_norm = 1.0  # 0: off
    t.save_every = 50
    t.keep = 3
    t.init_params = ""  # directory with trainable.safetensors to start from
    t.export_merged = False
    t.peak_flops_per_device = 0.0  # 0: known accelerators only (MFU omitted on CPU)
    t.demo_samples = 2  # after training: greedy answers to this many sim benchmark prompts
    t.demo_max_new_tokens = 400
    validation(c)

    if name == "demo":
        demo_data(c)
        c.lora.rank = 0
        # Validation stays off in the demo (docs/recipes.md); turned on, answers as long as the eval demo's.
        t.val_max_new_tokens = 160
    elif name == "nano":  # the learning experiment of docs/learning.md
        nano_data(c)
        c.workdir = "runs/sft_nano"
        c.model.preset = "nano"  # heads that learn to match the observation with a demo frame
        c.lora.rank = 0
        c.model.freeze_vision = False  # a frozen random tower leaves the answers blind to the observation
        t.steps = 1800
        t.lr = 1e-3  # at 2e-3 the matching skill is learned partly and lost again (docs/learning.md)
        # Constant after the warmup: a decaying rate can stop the slow transition in which the
        # answers start to depend on the observation (docs/learning.md).
        t.schedule = "constant"
        t.warmup_ratio = 0.02
        t.save_every = 300
        t.demo_samples = 0
        t.val_every = 300  # held-out curve: greedy answers to 120 test samples (whole trajectories)
        t.val_samples = 120
        t.val_max_new_tokens = 80
    else:  # LLaMA-Factory/our_scripts/qwen2_5vl_lora_sft_small.yaml
        c.seed = 42
        c.workdir = "runs/sft-paper"  # not the demo's runs/sft
        c.model.preset = ""  # model.path required
        c.model.param_dtype = c.model.compute_dtype = "bfloat16"  # bf16: true (LoRA factors stay float32)
        c.data.prompt = "official"
        c.model.attention_chunk = 1024  # queries in blocks of 1024 (docs/model.md)
        # LLaMA-Factory checkpoints gradients unless disable_gradient_checkpointing (default False);
        # the shipped yaml does not set it.
        c.model.remat = "full"
        c.data.min_pixels = 3136
        c.data.max_pixels = 1003520  # image_max_pixels
        c.data.length_buckets = (4096, 8192, 16384, 30000)  # cutoff_len 30000
        c.data.patch_buckets = (8192, 16384, 32768, 65536)
        c.data.image_buckets = (8, 16, 32)
        c.lora.rank, c.lora.alpha, c.lora.dropout = 8, 16.0, 0.05
        t.lr = 1e-4
        t.batch_size = 64  # 2 per device x 8 accumulation x 4 GPUs
        t.micro_batch_size = 8  # global: 2 per device x 4 GPUs
        t.epochs = 3.0  # num_train_epochs (the paper's text says 2; see docs/recipes.md)
        t.steps = 0
        t.warmup_ratio = 0.1
        t.weight_decay = 0.0
        t.clip_norm = 1.0
        t.loss_chunk = 2048  # not a LLaMA-Factory setting: memory only, the loss is the same
        t.save_every = 100
        t.keep = 5
        t.demo_samples = 0
        # Validation on Progress-Bench when data.bench_dir is given: a fixed 256-sample subset at
        # every checkpoint and before the first step.
        t.val_every = 100
        t.val_before_train = True
        t.val_samples = 256
    return c
