"""The one config validator of every job: types, ranges and choices of each key, and the rules
that tie keys together. Errors are ConfigError (a ValueError) naming the full key.

Rules apply to the keys a config holds, so one table serves sft, grpo, eval and demo configs; the
demo's nested warm-start config (`demo.sft`) is checked as an SFT config under its own prefix.
"""
from __future__ import annotations

import importlib.util
import re

from data_construction.sim.styles import REASONING
from data_pipeline.parsing import MODES
from progress_jax.models import families

JOBS = ("sft", "grpo", "eval", "demo")
DTYPES = ("float32", "bfloat16")
PROMPTS = ("official", "interleaved")
REMAT = ("none", "full", "dots")
SCHEDULES = ("cosine", "constant")


class ConfigError(ValueError):
    """A config value a job cannot run with; the message names the full key."""


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def choice(*options):
    return lambda v: None if v in options else f"must be one of {', '.join(map(repr, options))}"


def integer(lo=None, hi=None):
    def check(v):
        if not _is_int(v):
            return "must be an integer"
        if lo is not None and v < lo:
            return f"must be >= {lo}"
        if hi is not None and v > hi:
            return f"must be <= {hi}"
    return check


def number(lo=None, hi=None, lo_open=False, hi_open=False):
    def check(v):
        if not _is_num(v):
            return "must be a number"
        if lo is not None and (v <= lo if lo_open else v < lo):
            return f"must be {'>' if lo_open else '>='} {lo}"
        if hi is not None and (v >= hi if hi_open else v > hi):
            return f"must be {'<' if hi_open else '<='} {hi}"
    return check


def text(v):
    return None if isinstance(v, str) else "must be a string"


def boolean(v):
    return None if isinstance(v, bool) else "must be True or False"


def buckets(multiple=1):
    def check(v):
        if not isinstance(v, (tuple, list)) or not v or not all(_is_int(b) and b > 0 for b in v):
            return "must be a non-empty tuple of positive integers"
        if list(v) != sorted(set(v)):
            return "must be strictly increasing"
        if any(b % multiple for b in v):
            return f"must hold multiples of {multiple}"
    return check


def paths(v):
    if not isinstance(v, (tuple, list)) or not all(isinstance(p, str) and p for p in v):
        return "must be a tuple of file paths"


def regex(v):
    if not isinstance(v, str):
        return "must be a string"
    try:
        re.compile(v)
    except re.error as e:
        return f"is not a valid regular expression ({e})"


RULES = {
    "job": choice(*JOBS),
    "seed": integer(0),
    "workdir": text,
    "model.path": text,
    "model.preset": text,
    "model.param_dtype": choice(*DTYPES),
    "model.compute_dtype": choice(*DTYPES),
    "model.remat": choice(*REMAT),
    "model.attention_chunk": integer(0),
    "model.freeze_vision": boolean,
    "data.sim_dir": text,
    "data.sim_size": text,
    "data.sim_image_size": integer(28),
    "data.sim_reasoning": choice(*REASONING),
    "data.sim_seed": integer(0),
    "data.bench_dir": text,
    "data.image_root": text,
    "data.min_pixels": integer(1),
    "data.max_pixels": integer(1),
    "data.length_buckets": buckets(),
    "data.patch_buckets": buckets(4),
    "data.image_buckets": buckets(),
    "data.worker_count": integer(0),
    "data.mode": choice(*MODES),
    "data.prompt": choice(*PROMPTS),
    "data.train_files": paths,
    "mesh.data": integer(1),
    "mesh.fsdp": lambda v: None if _is_int(v) and (v == -1 or v >= 1) else "must be -1 (all remaining devices) or >= 1",
    "mesh.tensor": integer(1),
    "lora.rank": integer(0),
    "lora.alpha": number(0, lo_open=True),
    "lora.dropout": number(0, 1, hi_open=True),
    "lora.targets": regex,
    "sampling.temperature": number(0),
    "sampling.top_p": number(0, 1, lo_open=True),
    "sampling.top_k": integer(0),
    "sampling.max_new_tokens": integer(1),
    "sampling.batch_size": integer(1),
    "sampling.decode_layout": choice("tensor", "fsdp"),
    "train.lr": number(0, lo_open=True),
    "train.schedule": choice(*SCHEDULES),
    "train.batch_size": integer(1),
    "train.micro_batch_size": integer(1),
    "train.epochs": number(0, lo_open=True),
    "train.steps": integer(0),
    "train.warmup_ratio": number(0, 1, hi_open=True),
    "train.weight_decay": number(0),
    "train.clip_norm": number(0),
    "train.loss_chunk": integer(0),
    "train.log_every": integer(0),
    "train.save_every": integer(1),
    "train.keep": integer(1),
    "train.init_params": text,
    "train.export_merged": boolean,
    "train.peak_flops_per_device": number(0),
    "train.demo_samples": integer(0),
    "train.demo_max_new_tokens": integer(1),
    "train.device_memory_gb": number(0, lo_open=True),
    "train.val_files": paths,
    "train.val_image_root": text,
    "train.val_every": integer(0),
    "train.val_before_train": boolean,
    "train.val_samples": integer(0),
    "train.val_max_new_tokens": integer(0),
    "train.val_log_samples": integer(0),
    "grpo.n": integer(1),
    "grpo.shared_prompt": boolean,
    "grpo.rollout_batch_size": integer(1),
    "grpo.kl_coef": number(0),
    "grpo.clip_low": number(0, 1, hi_open=True),
    "grpo.clip_high": number(0),
    "grpo.dual_clip": number(1, lo_open=True),
    "grpo.advantage": text,
    "grpo.reward": text,
    "grpo.probe_every": integer(0),
    "grpo.probe_batches": integer(1),
    "grpo.probe_keys": integer(1),
    "grpo.probe_seed": integer(0),
    "eval.bench_files": paths,
    "eval.out_dir": text,
    "eval.run_name": text,
    "eval.trained": text,
    "eval.blank_observation": boolean,
    "eval.overwrite": boolean,
    "demo.warm_start": boolean,
    "demo.evaluate": boolean,
    "logging.wandb_project": text,
}


def _flat(config, prefix=""):
    for k, v in config.items():
        if hasattr(v, "items"):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _fail(key, problem, value):
    raise ConfigError(f"config key {key} {problem}, got {value!r}")


def check(config, prefix: str = "", runnable: bool = True) -> None:
    """Check every key of `config` (a job config, references resolved or not). runnable=False (--print_config)
    leaves out what only a run needs (a model.path for the paper recipes)."""
    values = {}
    for key, value in _flat(config):
        if key.startswith("demo.sft."):
            continue  # checked below as its own config
        values[key] = value
        rule = RULES.get(key)
        problem = rule(value) if rule else None
        if problem:
            _fail(prefix + key, problem, value)
    get = values.get
    if runnable and not get("model.path") and not get("model.preset"):
        raise ConfigError(f"config key {prefix}model.path is empty and {prefix}model.preset is \"\": this recipe "
                          f"needs a Qwen2.5-VL checkpoint, --config.{prefix}model.path=DIR")
    project = get("logging.wandb_project")  # the training loop's metrics writer imports wandb after the model loads
    if runnable and project and get("job") != "eval" and importlib.util.find_spec("wandb") is None:
        raise ConfigError(f"config key {prefix}logging.wandb_project is {project!r} but the wandb package is not "
                          f"installed: pip install wandb, or leave {prefix}logging.wandb_project empty")
    if not get("model.path") and get("model.preset"):
        if get("model.preset") not in families.preset_names():
            _fail(prefix + "model.preset", f"must be one of {families.preset_names()} (or set model.path)",
                  get("model.preset"))
    if get("data.max_pixels") < get("data.min_pixels"):
        _fail(prefix + "data.max_pixels", f"must be >= data.min_pixels ({get('data.min_pixels')})", get("data.max_pixels"))
    if get("lora.rank") and get("model.freeze_vision") is False:
        _fail(prefix + "model.freeze_vision", "must be True with LoRA (lora.rank > 0 trains the LoRA factors only)",
              False)
    if (get("train.val_files") or get("train.val_image_root")) and not get("train.val_every") \
            and not get("train.val_before_train"):
        key = "train.val_files" if get("train.val_files") else "train.val_image_root"
        _fail(prefix + key, "is set, but train.val_every is 0 and train.val_before_train is False: no validation "
              "would run (set --config.train.val_every=N)", get(key))
    job = get("job")
    # Every batch size is global, the same for any number of processes (docs/multihost.md).
    if job == "sft" and get("train.batch_size") % get("train.micro_batch_size"):
        _fail(prefix + "train.batch_size", f"must be a multiple of train.micro_batch_size "
              f"({get('train.micro_batch_size')})", get("train.batch_size"))
    if job in ("grpo", "demo"):
        from progress_jax.train import registry

        try:
            registry.get_reward(get("grpo.reward"), prefix + "grpo.reward")
            registry.get_advantage(get("grpo.advantage"), prefix + "grpo.advantage")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        rollout, batch, n = get("grpo.rollout_batch_size"), get("train.batch_size"), get("grpo.n")
        if rollout % batch:
            _fail(prefix + "train.batch_size", f"must divide grpo.rollout_batch_size ({rollout})", batch)
        if (batch * n) % get("train.micro_batch_size"):
            _fail(prefix + "train.micro_batch_size", f"must divide train.batch_size x grpo.n ({batch} x {n}, "
                  "the rollout rows per update)", get("train.micro_batch_size"))
        if get("sampling.temperature") <= 0:
            _fail(prefix + "sampling.temperature", "must be > 0 for GRPO rollouts", get("sampling.temperature"))
    if job == "demo":
        check(config.demo.sft, prefix + "demo.sft.", runnable)
