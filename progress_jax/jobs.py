"""One description of each job: everything a run needs, built from the config and the mesh.

`sft_spec`, `grpo_spec` and `eval_spec` (`spec` picks one by config.job) each return a `Spec`: the
job's model (loaded; or, with abstract=True, built by nnx.eval_shape from model.path's config.json
alone: the dry run), the train-state set-up (optimizer, trained/frozen parts, the state and its
shardings), make_dataset's keyword arguments, the sampling parameters and every named program the
job runs:

    sft    train_step
    grpo   rollout, logprobs, ref_logprobs (the LoRA-off reference: grpo.kl_coef > 0 with LoRA),
           train_step (one update)
    eval   rollout

The trainers (train/sft.py, train/grpo.py) and the eval job (eval/runner.py) run these programs;
`--dry_run` (dry_run.py) compiles the same ones at abstract arguments of the largest shapes
(tests/test_dry_run.py: the run's and the dry run's programs lower to the same text).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import jax
from flax import nnx

from progress_jax import handover, loading, lora, sampling, sharding
from progress_jax.config_check import ConfigError
from progress_jax.models import families
from progress_jax.train import loop, programs, rollouts, schedule

log = logging.getLogger(__name__)

# The schedule's length in loop steps for a dry run of train.steps = 0 (the run takes it from the
# number of training samples, which the dry run does not read).
DRY_STEPS = 100


@dataclasses.dataclass
class Spec:
    """Everything a run of one job needs (see the module doc)."""
    job: str  # "sft", "grpo" or "eval"
    config: Any
    mesh: Any
    family: Any  # the model family (progress_jax/models/families.py)
    model: Any  # the model (abstract: every array a ShapeDtypeStruct)
    data: dict  # make_dataset's keyword arguments (files, image root and tokenizer aside)
    sampling: sampling.SamplingParams  # eval, GRPO: the rollouts'; SFT: the greedy samples after training
    programs: dict  # name -> program: callable, and `.trace(*args)` (the dry run)
    # The training jobs:
    steps: int = 0  # loop steps: the schedule's length (GRPO: times updates_per_rollout)
    tx: Any = None  # the optimizer
    setup: loop.Setup | None = None  # trained/frozen parts, the state (abstract: its shape) and shardings
    lr: Callable | None = None  # lr(i): the learning rate of loop step i + 1 (GRPO: of its first update)
    # GRPO:
    updates_per_rollout: int = 1
    packing: rollouts.Packing | None = None  # rollout rows -> the update's micro-batches

    def policy(self, params: dict):
        """The trained model at `params` (works on tracers and ShapeDtypeStructs) with the frozen rest."""
        return self.setup.parts.model(params, self.setup.frozen)


@dataclasses.dataclass(frozen=True)
class Rollout:
    """The `rollout` program: the engine (sampling.generate) with n samples per prompt (each
    prompt encoded and prefilled once) in batch_size slots, the weights in the `layout`
    (sampling.place: config key sampling.decode_layout); its two compiled programs are prefill +
    insert (`trace`) and the decode chunk (`trace_decode`), both traced at a model `place` laid out."""
    params: sampling.SamplingParams
    mesh: Any
    family: Any
    n: int = 1
    batch_size: int | None = None
    layout: str = "tensor"

    def __call__(self, model, prompts: dict, key, tokenizer=None) -> sampling.Generation:
        return sampling.generate(model, prompts, self.params, key, tokenizer=tokenizer, mesh=self.mesh,
                                 batch_size=self.batch_size, family=self.family, n=self.n, layout=self.layout)

    def place(self, model):
        """The model with its weights in the engine's layout (sampling.place)."""
        return sampling.place(model, self.mesh, self.layout)

    def slots(self, prompts: int) -> int:
        """The engine's slots for a batch of `prompts` prompts."""
        return sampling.slot_count(self.batch_size, prompts * self.n, self.n, sharding.batch_shards(self.mesh))

    def inputs(self, prompts: dict, model_config, pad_id: int) -> dict:
        """The prefill inputs (sampling.prefill_inputs) of a host prompt batch as one group."""
        rows = range(len(prompts["input_ids"]))
        return sampling.prefill_inputs(prompts, rows, model_config, pad_id, sharding.batch_shards(self.mesh),
                                       self.family)

    def trace(self, model, slots, inputs: dict, rows, slot_ids, key, settings):
        """The prefill + insert program traced at (abstract) arguments (sampling.trace_prefill)."""
        return sampling.trace_prefill(model, slots, inputs, rows, slot_ids, key, settings, mesh=self.mesh,
                                      family=self.family)

    def trace_decode(self, model, slots, key, settings):
        """The decode chunk traced at (abstract) arguments (sampling.trace_decode)."""
        return sampling.trace_decode(model, slots, key, settings, mesh=self.mesh)


# ---- the pieces every job takes from the config ----------------------------------------------

def data_args(config, **job) -> dict:
    """make_dataset's keyword arguments: config.data's prompt layout, mode, buckets, image sizes and
    workers, then the job's own (batch size, stage, answers, seed, epochs, order, batch shards)."""
    d = config.data
    return {"mode": d.mode, "layout": d.prompt, "length_buckets": d.length_buckets, "patch_buckets": d.patch_buckets,
            "image_buckets": d.image_buckets, "min_pixels": d.min_pixels, "max_pixels": d.max_pixels,
            "worker_count": d.worker_count, **job}


def sampling_params(config, **over) -> sampling.SamplingParams:
    """config.sampling's generation settings, with `over` replacing some."""
    s = config.sampling
    return sampling.SamplingParams(**{"max_new_tokens": int(s.max_new_tokens), "temperature": float(s.temperature),
                                      "top_p": float(s.top_p), "top_k": int(s.top_k), **over})


def check_micro_batch(micro_batch_size: int, mesh, rows: str = "rows") -> None:
    """train.micro_batch_size (global `rows`, docs/multihost.md) must split over the data axes."""
    n = sharding.batch_shards(mesh)
    if micro_batch_size % n:
        raise ConfigError(f"config key train.micro_batch_size: {micro_batch_size} {rows} per micro-batch do not "
                          f"split over the mesh's data x fsdp = {n} devices")


# ---- the model -----------------------------------------------------------------------------------

def abstract_model(config, with_lora: bool):
    """The job's model with LoRA per config.lora (with_lora), every array a ShapeDtypeStruct: its
    architecture from model.path's config.json (or model.preset), no weight read."""
    family = families.for_config(config)
    arch = family.architecture(config.model.path, config.model.preset)
    param, compute = loading.DTYPES[config.model.param_dtype], loading.DTYPES[config.model.compute_dtype]

    def build():
        model = family.build(arch, config.seed, compute, param)
        if with_lora:
            lora.from_config(model, config.lora, seed=config.seed)
        return loading.set_attention_chunk(model, config.model.attention_chunk)

    return nnx.eval_shape(build)


def policy(config, mesh, abstract: bool = False):
    """The model to train: base weights, LoRA per config.lora, train.init_params (loading.load_policy)."""
    if abstract:
        return abstract_model(config, with_lora=True)
    return loading.load_policy(config, mesh, config.train.init_params)


def trained_config(config, directory: str, meta: dict | None = None):
    """`config` with the LoRA (rank, alpha, targets) of the training run that wrote `directory`
    (its final/) and, on a random base, that run's preset and seed; refused when the run was trained
    on another base model."""
    meta = meta or handover.read_meta(directory)
    if bool(meta.get("model_path")) != bool(config.model.path):
        raise ValueError(f"config key eval.trained: {directory} was trained on "
                         f"{meta.get('model_path') or 'a built-in preset'}, but model.path is "
                         f"{config.model.path or 'empty (a built-in preset)'}")
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.lora.update({k: meta["lora"][k] for k in ("rank", "alpha", "targets")})
        if not config.model.path:  # the random model the run started from (docs/export.md)
            config.model.preset = meta.get("model_preset", config.model.preset)
            config.seed = int(meta.get("seed", config.seed))
    return config


def eval_model(config, mesh, abstract: bool = False, meta: dict | None = None):
    """The model the eval job scores: the base model (model.path or the preset), or with
    eval.trained a training run's parameters on it (LoRA at the rank and targets the run used)."""
    trained = (config.get("eval") or {}).get("trained")
    if not trained:
        return abstract_model(config, with_lora=False) if abstract else loading.load_model(config, mesh)
    config = trained_config(config, trained, meta)
    return abstract_model(config, with_lora=True) if abstract else loading.load_policy(config, mesh, trained)


# ---- the jobs --------------------------------------------------------------------------------------

def _setup(config, mesh, model, steps: int, abstract: bool):
    t = config.train
    tx = schedule.make_optimizer(t.lr, t.weight_decay, t.warmup_ratio, steps, t.clip_norm or None, schedule=t.schedule)
    setup = loop.setup_state(model, mesh, tx, rank=config.lora.rank, freeze_vision=config.model.freeze_vision,
                             seed=config.seed, abstract=abstract)
    return tx, setup, schedule.make_schedule(t.schedule, t.lr, steps, t.warmup_ratio)


def sft_spec(config, mesh, *, steps: int | None = None, model=None, abstract: bool = False) -> Spec:
    """SFT: `train_step` (one optimizer step on a batch's accumulated micro-batches). steps: the
    run's steps (default train.steps; a dry run of train.steps 0: DRY_STEPS). model: instead of
    loading one (config.train.init_params)."""
    t = config.train
    check_micro_batch(t.micro_batch_size, mesh)
    model = policy(config, mesh, abstract) if model is None else model
    family = families.for_config(config)
    steps = steps or t.steps or DRY_STEPS
    tx, setup, lr = _setup(config, mesh, model, steps, abstract)
    step = programs.make_step(setup.parts, tx, mesh, config.model.remat, t.loss_chunk, dropout=config.lora.dropout > 0)
    data = data_args(config, batch_size=t.micro_batch_size, seed=config.seed, num_epochs=None,
                     batch_shards=sharding.batch_shards(mesh))  # each device encodes its own rows' images
    greedy = sampling_params(config, max_new_tokens=t.demo_max_new_tokens, temperature=0.0)
    return Spec("sft", config, mesh, family, model, data, greedy,
                {"train_step": loop.jit_step(step, mesh, setup.state_sh, setup.frozen_sh)},
                steps=steps, tx=tx, setup=setup, lr=lr)


def grpo_spec(config, mesh, *, steps: int | None = None, model=None, abstract: bool = False) -> Spec:
    """GRPO: `rollout` (grpo.n samples of each prompt), `logprobs` (the old log-probs of one
    update's micro-batches), `ref_logprobs` (with grpo.kl_coef and LoRA: the same with LoRA off; a
    full-parameter run's reference is `logprobs` at a copy of the initial weights) and `train_step`
    (one update; grpo.rollout_batch_size // train.batch_size of them per loop step). steps and
    model as for sft_spec."""
    g, t, s, d = config.grpo, config.train, config.sampling, config.data
    check_micro_batch(t.micro_batch_size, mesh, "rollout rows")
    model = policy(config, mesh, abstract) if model is None else model
    family = families.for_config(config)
    steps = steps or t.steps or DRY_STEPS
    updates = g.rollout_batch_size // t.batch_size
    tx, setup, lr = _setup(config, mesh, model, max(1, steps * updates), abstract)
    temp, remat, chunk = s.temperature, config.model.remat, t.loss_chunk
    on_params = (setup.state_sh["params"], setup.frozen_sh, None)  # the batch: its arrays' own shardings
    progs = {"rollout": Rollout(sampling_params(config), mesh, family, n=g.n, batch_size=s.batch_size,
                                layout=s.decode_layout),
             "logprobs": jax.jit(programs.make_logp_fn(setup.parts, temp, mesh, remat, loss_chunk=chunk),
                                 in_shardings=on_params)}
    if g.kl_coef and config.lora.rank > 0:
        progs["ref_logprobs"] = jax.jit(programs.make_logp_fn(setup.parts, temp, mesh, remat, off=True,
                                                              loss_chunk=chunk), in_shardings=on_params)
    progs["train_step"] = loop.jit_step(programs.make_update(setup.parts, tx, g, temp, mesh, remat, chunk), mesh,
                                        setup.state_sh, setup.frozen_sh)
    shards = sharding.batch_shards(mesh)
    rows, per_row = rollouts.layout(t.micro_batch_size, g.n, shards, g.shared_prompt)
    if g.shared_prompt and per_row == 1 and g.n > 1:
        log.warning("grpo.shared_prompt: each row still holds its own copy of the prompt, since "
                    "train.micro_batch_size %d over %d batch shards leaves one rollout per device; "
                    "%d shares a group's prompt (docs/recipes.md)", t.micro_batch_size, shards, g.n * shards)
    packing = rollouts.Packing(rows, per_row, rollouts.length_buckets(d.length_buckets, per_row * s.max_new_tokens),
                               tuple(d.patch_buckets), family, model.config, mesh)
    data = data_args(config, stage="rl", with_answers=False, batch_size=g.rollout_batch_size, seed=config.seed,
                     num_epochs=None)
    return Spec("grpo", config, mesh, family, model, data, progs["rollout"].params, progs, steps=steps, tx=tx,
                setup=setup, lr=lambda i: lr(i * updates), updates_per_rollout=updates, packing=packing)


def eval_spec(config, mesh, *, model=None, abstract: bool = False, blank_observation: bool | None = None,
              meta: dict | None = None) -> Spec:
    """Evaluation: `rollout` (one answer per benchmark prompt, in sampling.batch_size slots).
    model: instead of loading eval_model's; blank_observation: default eval.blank_observation;
    meta: eval.trained's handover meta, where already read."""
    model = eval_model(config, mesh, abstract, meta) if model is None else model
    family = families.for_config(config)
    if blank_observation is None:
        blank_observation = bool((config.get("eval") or {}).get("blank_observation"))
    data = data_args(config, with_answers=False, batch_size=config.sampling.batch_size, shuffle=False, num_epochs=1,
                     drop_remainder=False, blank_observation=blank_observation)
    rollout = Rollout(sampling_params(config), mesh, family, batch_size=config.sampling.batch_size,
                      layout=config.sampling.decode_layout)
    return Spec("eval", config, mesh, family, model, data, rollout.params, {"rollout": rollout})


SPECS = {"sft": sft_spec, "grpo": grpo_spec, "demo": grpo_spec, "eval": eval_spec}


def spec(config, mesh, abstract: bool = False) -> Spec:
    """The spec of config.job (the demo: its GRPO stage)."""
    return SPECS[config.job](config, mesh, abstract=abstract)
