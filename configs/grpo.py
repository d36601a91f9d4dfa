"""GRPO, the main job: `python -m progress_jax.main --config configs/grpo.py [--config.a.b=value ...]`.

With `--config.model.path=DIR` (and `--config.grpo.init_lora=DIR`, an SFT run's `final/`): the
paper's recipe (REFERENCE §5-6): n = 4 rollouts at temperature 0.6 / top-p 0.9, lr 1e-6, AdamW
wd 1e-2, kl_coef 1e-2 (low_var_kl), global batch 64, 2 epochs over data.train_files, responses up
to 8192 tokens, reward 0.1 format + 0.6 ref + 0.3 score.

With nothing given, the built-in demo on a fresh machine: ProgressBench-Sim small (generated and
cached under data.sim_dir), a short SFT warm start of the tiny model (full-parameter: LoRA on a
random base has nothing to adapt), full-parameter GRPO from it (a frozen copy of the SFT model is
the reference policy), then both models evaluated on the sim's test split, their Table 1 rows
side by side. Every grpo.probe_every steps it also scores a probe: n rollouts on a fixed set of
training prompts with one fixed sampling key, so that its curve moves only when the policy does
(a step's own mean reward mostly reflects which prompts that step drew).

Outputs in `workdir`: sft/ (the warm start), metrics.jsonl + TensorBoard, checkpoints/ (resumed
automatically), final/trainable.safetensors, eval_sft/ and eval_grpo/ (predictions, metrics,
tables, figures), table1.md.
"""
import ml_collections
from ml_collections import config_dict

from configs import sft as sft_config
from configs.base import base, tiny_data


def get_config() -> ml_collections.ConfigDict:
    c = base()
    c.job = "grpo"
    c.workdir = "runs/grpo"
    tiny_data(c)
    # The CPU demo trains on the sim's brief answers (~60 tokens): rollouts and SFT stay short.
    c.data.sim_dir = "cache/sim_small_brief"
    c.data.sim_reasoning = "brief"
    c.data.train_files = ()  # RL records (official fields); empty: ProgressBench-Sim's train/rl.jsonl
    c.sampling.max_new_tokens = config_dict.placeholder(int)  # None: 8192, or 128 for the demo
    c.lora.rank = config_dict.placeholder(int)  # None: 8 with model.path, 0 (full) for the demo
    # None: 0.6 with model.path; 1.0 for the demo, whose tiny model at 0.6 gives rollouts of a
    # prompt too alike to learn much from in 24 steps. Evaluation samples at the same temperature.
    c.sampling.temperature = config_dict.placeholder(float)

    g = c.grpo = ml_collections.ConfigDict()
    g.n = 4  # rollouts per prompt
    g.rollout_batch_size = config_dict.placeholder(int)  # prompts per rollout (global)
    g.kl_coef = 1e-2
    g.clip_low = 0.2
    g.clip_high = 0.3
    g.dual_clip = 3.0
    g.advantage = "grpo"  # grpo | drgrpo
    g.reward = "paper"  # paper (0.1/0.6/0.3) | anti_hack
    g.init_lora = ""  # an SFT run's final/ directory (trainable.safetensors)
    g.probe_every = config_dict.placeholder(int)  # steps between probe rewards; None: 4 (demo) or 0 (off)
    g.probe_batches = 2  # the probe's fixed prompts: this many rollout batches
    g.demo_sft = True  # demo only: run the SFT warm start first
    g.eval_demo = True  # demo only: evaluate before and after GRPO

    t = c.train = ml_collections.ConfigDict()
    t.lr = config_dict.placeholder(float)
    t.batch_size = config_dict.placeholder(int)  # prompts per optimizer update (global)
    t.micro_batch_size = config_dict.placeholder(int)  # rollout rows per forward/backward
    t.steps = config_dict.placeholder(int)  # rollout steps; 0: from epochs
    t.epochs = config_dict.placeholder(float)
    t.warmup_ratio = 0.0
    t.weight_decay = 1e-2
    t.clip_norm = 1.0
    t.save_every = 20
    t.keep = 3

    # The demo's warm start: configs/sft.py's tiny default (full-parameter SFT on the sim's brief
    # answers) on this run's data settings.
    # References: overriding --config.data.* or --config.seed changes both jobs.
    s = c.demo_sft_config = sft_config.get_config()
    s.workdir = ""  # set by the job: <workdir>/sft
    s.train.demo_samples = 0
    s.seed = c.get_ref("seed")
    for key in ("sim_dir", "sim_reasoning", "min_pixels", "max_pixels", "length_buckets", "patch_buckets",
                "image_buckets"):
        s.data[key] = c.data.get_ref(key)
    return c
