"""Shared config presets: every job config starts from `base()` and overrides what it needs.

With `model.path` empty, jobs use the built-in tiny model (random init, or the SFT output
when a job chains) and ProgressBench-Sim small generated under `data.sim_dir`.
"""

import ml_collections


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.job = ""
    c.seed = 0
    c.workdir = "runs/default"  # checkpoints, metrics.jsonl, TensorBoard, predictions

    c.model = ml_collections.ConfigDict()
    c.model.path = ""  # Hub checkpoint directory (config.json + safetensors + tokenizer); "" = tiny
    c.model.preset = "tiny"  # used when path is empty
    c.model.param_dtype = "float32"  # float32 | bfloat16
    c.model.compute_dtype = "float32"
    c.model.remat = "none"  # none | full | dots (checkpoint policy for decoder layers)

    c.data = ml_collections.ConfigDict()
    c.data.sim_dir = "cache/sim_small"  # generated when train/bench files are not given
    c.data.sim_size = "small"
    c.data.sim_image_size = 224
    c.data.sim_reasoning = "full"  # full | brief: the SFT targets the sim writes (brief: ~60 tokens)
    c.data.bench_dir = ""  # directory of benchmark JSONL files + images/; "" = the sim's bench
    c.data.image_root = ""  # IMAGE_ROOT; "" = <bench_dir>/images
    c.data.min_pixels = 3136
    c.data.max_pixels = 12845056
    c.data.length_buckets = (1024, 2048, 4096)
    c.data.patch_buckets = (4096, 8192, 16384)
    c.data.image_buckets = (8, 16, 32)
    c.data.worker_count = 0
    c.data.mode = "think"  # think | direct
    c.data.prompt = "interleaved"  # interleaved | official (the ProgressLM release's prompts, docs/prompts.md)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = 1
    c.mesh.fsdp = -1  # -1: all remaining devices
    c.mesh.tensor = 1

    c.lora = ml_collections.ConfigDict()
    c.lora.rank = 8  # 0 = full-parameter training
    c.lora.alpha = 16.0
    c.lora.dropout = 0.05
    c.lora.targets = r"^layers/\d+/(self_attn/(q|k|v|o)_proj|mlp/(gate|up|down)_proj)$"

    c.sampling = ml_collections.ConfigDict()
    c.sampling.temperature = 0.6
    c.sampling.top_p = 0.9
    c.sampling.top_k = 0  # 0 = off
    c.sampling.max_new_tokens = 4096
    c.sampling.batch_size = 8

    c.logging = ml_collections.ConfigDict()
    c.logging.wandb_project = ""  # Weights & Biases project; "" = off (metrics.jsonl + TensorBoard always)
    return c


def tiny_data(c: ml_collections.ConfigDict) -> None:
    """Small images and buckets that keep the tiny default fast on two CPU cores."""
    c.data.max_pixels = 112 * 112  # 16 tokens per image
    c.data.min_pixels = 56 * 56
    c.data.length_buckets = (512, 1024)
    c.data.patch_buckets = (2048, 4096, 8192)
    c.data.image_buckets = (32, 64, 128)
