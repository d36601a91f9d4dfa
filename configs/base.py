"""Shared pieces of the job configs: `base()` holds every key the jobs share; `demo_data` the small
images and buckets of the built-in demo, in one place.

Each config file's `get_config(arg)` takes the text after ':' in `--config configs/X.py:arg`
(ml_collections' config_flags): `demo` (the default, no argument), `paper` (the published recipe,
see docs/recipes.md) or a file's own (configs/sft.py: `nano`). Every value is concrete: nothing is
chosen later by a job.
"""

import ml_collections

VARIANTS = ("demo", "paper")


def variant(arg, variants=VARIANTS) -> str:
    """The variant named after ':' ("" or None: demo), one of `variants` (the config file's own)."""
    name = arg or "demo"
    if name not in variants:
        raise ValueError(f"unknown config variant {name!r}; expected one of {', '.join(variants)} "
                         f"(e.g. --config configs/grpo.py:paper)")
    return name


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.job = ""
    c.seed = 0
    c.workdir = "runs/default"  # checkpoints, metrics.jsonl, TensorBoard, predictions

    c.model = ml_collections.ConfigDict()
    c.model.path = ""  # Hub checkpoint directory (config.json + safetensors + tokenizer)
    c.model.preset = "tiny"  # a built-in random model, used when path is empty ("": path required)
    c.model.param_dtype = "float32"  # float32 | bfloat16
    c.model.compute_dtype = "float32"
    c.model.remat = "none"  # none | full | dots (checkpoint policy for decoder layers)
    # Attention (decoder and vision) in blocks of this many queries (0: one block): memory grows with
    # length x chunk instead of length^2; exact. See docs/model.md.
    c.model.attention_chunk = 0
    # With lora.rank = 0 (full-parameter training): False trains the vision tower too (EasyR1's default).
    c.model.freeze_vision = True

    c.data = ml_collections.ConfigDict()
    c.data.sim_dir = "cache/sim_small"  # generated when train/bench files are not given
    c.data.sim_size = "small"
    c.data.sim_image_size = 224
    c.data.sim_reasoning = "full"  # the SFT targets the sim writes: a style of data_construction/sim/styles.py
    # The sim's own seed, apart from the run's `seed`: runs of several seeds train and test on the
    # same data; a test split of another seed needs its own sim_dir (one directory, one seed).
    c.data.sim_seed = 0
    c.data.bench_dir = ""  # directory of benchmark JSONL files + images/; "" = the sim's bench
    c.data.image_root = ""  # IMAGE_ROOT; "" = <bench_dir>/images
    c.data.min_pixels = 3136
    c.data.max_pixels = 12845056
    c.data.length_buckets = (1024, 2048, 4096)  # the largest is the cut-off length
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
    # q, k, v, o, gate, up and down projections of every decoder layer: LLaMA-Factory's `lora_target: all`.
    c.lora.targets = r"^layers/\d+/(self_attn/(q|k|v|o)_proj|mlp/(gate|up|down)_proj)$"

    c.sampling = ml_collections.ConfigDict()
    c.sampling.temperature = 0.6
    c.sampling.top_p = 0.9
    c.sampling.top_k = 0  # 0 = off
    c.sampling.max_new_tokens = 4096
    c.sampling.batch_size = 8
    # The weights while generating: "tensor" (split over mesh.tensor only, whole on every data/fsdp
    # device: no weight traffic per token) or "fsdp" (the training layout: gathered at every token,
    # the least memory). docs/engine.md.
    c.sampling.decode_layout = "tensor"

    c.train = ml_collections.ConfigDict()
    # --dry_run: the memory of one device (GiB) that each compiled program must fit in.
    c.train.device_memory_gb = 80.0
    # Positions per block of full-vocabulary logits in the SFT loss and the GRPO log-probs; 0: all
    # at once (small vocabularies). The 3B's logits are 0.6 MB per position in float32.
    c.train.loss_chunk = 0
    # A console line (step, loss or reward, learning rate, tokens/s) every this many steps and at the
    # last; 0: the progress bar only.
    c.train.log_every = 10

    c.logging = ml_collections.ConfigDict()
    c.logging.wandb_project = ""  # Weights & Biases project; "" = off (metrics.jsonl + TensorBoard always)
    return c


def demo_data(c: ml_collections.ConfigDict) -> None:
    """The built-in demo's data: ProgressBench-Sim small with the sim's brief answers (~60 tokens),
    112x112 images (16 tokens each) and short buckets, fast on two CPU cores. Shared by every job's
    demo variant."""
    c.data.sim_dir = "cache/sim_small_brief"
    c.data.sim_reasoning = "brief"
    c.data.min_pixels = 56 * 56
    c.data.max_pixels = 112 * 112
    # A batch takes the smallest bucket that holds its longest row: prompts fit 512 tokens and SFT rows
    # (prompt and answer) 576, so no batch pads to twice its length; one patch and image bucket hold
    # any 8 rows, so a run compiles few shapes.
    c.data.length_buckets = (512, 576)
    c.data.patch_buckets = (4096, 8192)
    c.data.image_buckets = (64, 128)


def nano_data(c: ml_collections.ConfigDict) -> None:
    """ProgressBench-Sim `nano` for the learning experiment (docs/learning.md): rendered at 112 px,
    brief answers, 6000 SFT samples from 2000 trajectories; prompts of 350-530 tokens."""
    demo_data(c)
    c.data.sim_dir = "cache/sim_nano"
    c.data.sim_size = "nano"
    c.data.sim_image_size = 112


def validation(c: ml_collections.ConfigDict) -> None:
    """Validation during training (SFT and GRPO; progress_jax/train/validation.py): the evaluation
    metrics on held-out benchmark files, greedy, every train.val_every steps. Off by default."""
    t = c.train
    t.val_files = ()  # benchmark JSONL files; empty: every *.jsonl in data.bench_dir (a sim run: the sim's bench)
    t.val_image_root = ""  # their images; "" = <bench_dir>/images (or <first file's directory>/images)
    t.val_every = 0  # steps between validations (and at the last step); 0 = off
    t.val_before_train = False  # also validate the starting model (logged as step 0)
    t.val_samples = 0  # at most this many samples, the same fixed subset every time; 0 = all
    t.val_max_new_tokens = 0  # answer length; 0 = sampling.max_new_tokens
    t.val_log_samples = 4  # answers logged as text each time (val_samples.jsonl, TensorBoard)
