"""GRPO: `python -m progress_jax.main --config configs/grpo.py[:demo|:paper|:nano] [--config.a.b=value ...]`.

`demo` (the default) is the built-in demo job on a fresh machine: ProgressBench-Sim small (generated
and cached under data.sim_dir), a short SFT warm start of the tiny model (`demo.sft`, configs/sft.py's
demo on this config's data settings), full-parameter GRPO from it (a frozen copy of the SFT model
is the reference policy), then both models evaluated on the sim's test split, their Table 1 rows
side by side, and the reward report. Every grpo.probe_every steps GRPO also scores a probe: n
rollouts on a fixed set of training prompts with fixed sampling keys (grpo.probe_seed, apart from the
run's seed), so that its curve moves only when the policy does (a step's own mean reward mostly
reflects which prompts that step drew); the demo uses two keys, whose spread is the probe's noise.
`--config.demo.warm_start=False --config.demo.evaluate=False` leaves GRPO alone.

`paper` is the GRPO job with EasyR1's progresslm/configs/visual_demo_grpo.yaml (see
docs/recipes.md): every weight trained, the vision tower included, constant lr 1e-6, AdamW wd 1e-2,
low_var_kl 1e-2, n = 4 rollouts at temperature 0.6 / top-p 0.9, 64 prompts per rollout and per
update, prompts up to 20000 tokens, responses up to 8192, 2 epochs, the paper's reward (0.1 format
+ 0.6 ref + 0.3 score). Set model.path, train.init_params (an SFT run's final/ or merged weights in
model.path), data.train_files (RL records) and data.image_root. LoRA GRPO: --config.lora.rank=8.

`nano` is the learning experiment's GRPO (docs/learning.md): the demo's GRPO settings on
ProgressBench-Sim nano's RL split, from the nano SFT weights in weights/sim_nano_sft (made by the
commands in docs/learning.md), the vision tower frozen, 120 steps, the probe every 10 steps with two
keys, a validation on 120 test samples every 40. Evaluate its final/ with configs/eval.py:nano and
--config.eval.trained.

Outputs in `workdir`: metrics.jsonl + TensorBoard, checkpoints/ (resumed automatically),
final/trainable.safetensors; the demo adds sft/ (the warm start), eval_sft/ and eval_grpo/
(predictions, metrics, tables, figures) and table1.md.
"""
import ml_collections

from configs import sft as sft_config
from configs.base import VARIANTS, base, demo_data, nano_data, validation, variant


def get_config(arg=None) -> ml_collections.ConfigDict:
    name = variant(arg, VARIANTS + ("nano",))
    c = base()
    c.job = "grpo"
    c.workdir = "runs/grpo"
    c.data.train_files = ()  # RL records (official fields); empty: ProgressBench-Sim's train/rl.jsonl

    g = c.grpo = ml_collections.ConfigDict()
    g.n = 4  # rollouts per prompt
    # The n rollouts of a prompt share one copy of it in the log-probs and the update: its images
    # and tokens computed once per group (docs/recipes.md); False: a copy per rollout (same numbers).
    g.shared_prompt = True
    g.rollout_batch_size = 64  # prompts per rollout (global)
    g.kl_coef = 1e-2  # low_var_kl against the reference policy
    g.clip_low = 0.2
    g.clip_high = 0.3
    g.dual_clip = 3.0
    g.advantage = "grpo"  # an estimator of progress_jax.train.registry.ADVANTAGES: grpo | drgrpo
    # A reward of progress_jax.train.registry (paper: 0.1/0.6/0.3 | anti_hack), or `module:function`.
    g.reward = "paper"
    g.probe_every = 0  # steps between probe rewards; 0: off
    g.probe_batches = 2  # the probe's fixed prompts: this many rollout batches
    g.probe_keys = 1  # sampling keys of the probe; 2 or more log each key's mean, their spread its noise
    g.probe_seed = 1  # the probe's prompts and keys, apart from the run's seed

    t = c.train  # base() holds train.device_memory_gb
    t.lr = 1e-6
    t.schedule = "constant"  # cosine | constant (after the linear warmup)
    t.batch_size = 64  # prompts per optimizer update (global)
    # Rollouts per forward/backward (global, split over the data devices); a device's share of at
    # least grpo.n lets a group share one copy of its prompt (grpo.shared_prompt, docs/recipes.md).
    t.micro_batch_size = 4
    t.steps = 0  # rollout steps; 0: from epochs
    t.epochs = 2.0
    t.warmup_ratio = 0.0
    t.weight_decay = 1e-2
    t.clip_norm = 1.0
    t.save_every = 10
    t.keep = 10
    t.init_params = ""  # an SFT run's final/ directory (trainable.safetensors)
    validation(c)

    c.sampling.temperature = 0.6
    c.sampling.top_p = 0.9
    c.sampling.max_new_tokens = 8192

    if name == "paper":  # EasyR1/progresslm/configs/visual_demo_grpo.yaml
        c.seed = 1
        c.workdir = "runs/grpo-paper"  # not the demo's runs/grpo
        c.model.preset = ""  # model.path required
        # Float32 master weights, bfloat16 compute (EasyR1's FSDP mixed precision): a 1e-6 update
        # is below bfloat16's resolution for most weights.
        c.model.param_dtype, c.model.compute_dtype = "float32", "bfloat16"
        c.model.remat = "full"  # enable_gradient_checkpointing
        c.model.freeze_vision = False  # freeze_vision_tower: false
        c.model.attention_chunk = 1024  # queries in blocks of 1024 (docs/model.md)
        c.lora.rank = 0
        c.data.prompt = "official"
        c.data.min_pixels, c.data.max_pixels = 3136, 12845056
        c.data.length_buckets = (2048, 4096, 8192, 16384, 20000)  # max_prompt_length 20000
        c.data.patch_buckets = (16384, 32768, 65536, 131072, 262144)
        c.data.image_buckets = (8, 16, 32, 64)
        t.loss_chunk = 2048  # not an EasyR1 setting: memory only, the log-probs are the same
        # Validation on Progress-Bench when data.bench_dir is given: a fixed 256-sample subset every
        # 20 steps and before the first step, beside the probe.
        t.val_every = 20
        t.val_before_train = True
        t.val_samples = 256
        return c

    # demo: the chain of progress_jax/demo.py on the tiny model.
    c.job = "demo"
    demo_data(c)
    c.lora.rank = 0  # the tiny model is small enough to train whole, against a frozen copy
    c.train.lr = 1e-4
    c.train.schedule = "cosine"
    c.train.batch_size = 8
    c.train.micro_batch_size = 8
    c.train.steps = 24
    c.train.save_every = 20
    c.train.keep = 3
    g.rollout_batch_size = 8
    g.probe_every = 4
    g.probe_keys = 2
    c.sampling.max_new_tokens = 128
    # 1.0: the tiny model at 0.6 gives rollouts of a prompt too alike to learn much from in 24
    # steps. Evaluation samples at the same temperature.
    c.sampling.temperature = 1.0
    if name == "nano":  # the demo's GRPO settings without its warm start and evaluation
        nano(c)
        return c

    d = c.demo = ml_collections.ConfigDict()
    d.warm_start = True  # run the SFT warm start first (unless train.init_params is set)
    d.evaluate = True  # evaluate before and after GRPO
    # The warm start: configs/sft.py's demo on this run's data settings (references: overriding
    # --config.data.* or --config.seed changes both).
    s = d.sft = sft_config.get_config("demo")
    s.workdir = ""  # set by the job: <workdir>/sft
    s.train.demo_samples = 0
    s.seed = c.get_ref("seed")
    for key in ("sim_dir", "sim_reasoning", "min_pixels", "max_pixels", "length_buckets", "patch_buckets",
                "image_buckets", "mode", "prompt"):
        s.data[key] = c.data.get_ref(key)
    return c


def nano(c: ml_collections.ConfigDict) -> None:
    """The learning experiment's GRPO (docs/learning.md): the demo's GRPO settings on the nano sim's RL
    split, from the nano SFT weights of the learning regression test, tower frozen, 120 steps (about
    14 s a step on one CPU core), a probe of 16 prompts x 4 rollouts with two keys every 10 steps."""
    c.job = "grpo"
    c.workdir = "runs/grpo_nano"
    nano_data(c)
    c.model.preset = "nano"
    c.model.freeze_vision = True
    c.train.init_params = "weights/sim_nano_sft"
    c.train.steps = 120
    c.train.save_every = 25
    c.sampling.max_new_tokens = 80  # the brief answers take at most 70 tokens
    c.grpo.probe_every = 10
    # Held out beside the probe: greedy answers to 120 samples of the sim's test split (whole
    # trajectories) before the first step and every 40 steps.
    c.train.val_every = 40
    c.train.val_before_train = True
    c.train.val_samples = 120
