"""The GRPO job: rollouts on image+text prompts, a reward by name, group advantages, the clipped
update (recipe and sources: docs/recipes.md).

One step (`Step`, a function over the loop's train state): a batch of prompts -> n rollouts each
(the `rollout` program: the JAX sampler, images included; each prompt encoded and prefilled once
for its n rollouts) -> rewards (progress_jax.train.registry: a named reward or a user's
module:function) -> group advantages (an estimator by name) -> old log-probs (`logprobs`: the
current policy, before any update) and reference log-probs (`ref_logprobs`: the same backbone with
LoRA switched off; `logprobs` at a frozen copy of the initial weights when lora.rank = 0) ->
`updates_per_rollout` optimizer updates (`train_step`), each the clipped dual-clip surrogate +
kl_coef * low_var_kl as a token-mean over all response tokens of its global batch, exact under
micro-batching. The programs come from the job spec (progress_jax/jobs.py), their bodies from
progress_jax/train/programs.py.

Log-probs are taken at the rollout temperature (logits / temperature), as EasyR1/verl do.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from progress_jax import distributed, handover, jobs, loading, sampling
from progress_jax.train import checkpoint, inputs, loop, registry, rollouts, validation

log = logging.getLogger(__name__)
PROBE_KEY_MEAN = "probe/overall_key"  # + j: the probe's mean reward with its j-th key (grpo.probe_keys > 1)


class Step:
    """One GRPO run's step, a function over the loop's train state: `step(state, prompts, key) ->
    (state, metrics)` with the programs of its spec (jobs.grpo_spec); the state is donated to the
    updates. Also the rollouts and the probe of given parameters."""

    def __init__(self, spec: jobs.Spec, tokenizer, reward_fn=None):
        """reward_fn(generation, records) -> one {"overall", ...} dict per rollout; default: the
        registry reward config.grpo.reward of each rollout's text."""
        self.spec, self.tokenizer = spec, tokenizer
        g = spec.config.grpo
        if reward_fn is None:
            reward = registry.get_reward(g.reward)
            reward_fn = lambda gen, records: reward(gen.texts, records)  # noqa: E731
        self.reward_fn = reward_fn
        self.advantages = registry.get_advantage(g.advantage)
        self.n, self.kl_coef = g.n, g.kl_coef
        self.per_update = spec.packing.rows_per_update(spec.config.train.batch_size, g.n)  # training rows
        programs = spec.programs
        self._rollout, self._logprobs, self._train_step = (programs["rollout"], programs["logprobs"],
                                                           programs["train_step"])
        self._ref_logprobs = programs.get("ref_logprobs", self._logprobs)
        # Full-parameter RL: the reference policy needs its own frozen copy of the initial weights.
        self.ref_params = (None if spec.config.lora.rank > 0
                           else jax.tree.map(jnp.copy, spec.setup.state["params"]))

    def rollout(self, params: dict, prompts: dict, key) -> tuple[sampling.Generation, dict]:
        """n rollouts of each real prompt row (padding rows dropped; rollouts of a prompt contiguous,
        each prompt's images encoded and prompt prefilled once) and the real prompt rows."""
        family, model_config = self.spec.family, self.spec.model.config
        real = rollouts.repeat_rows(prompts, 1, family, model_config)  # n = 1: drops the padding rows
        return self._rollout(self.spec.policy(params), real, key, self.tokenizer), real

    def records(self, real: dict) -> list:
        """Each rollout's record (a prompt's, n times)."""
        return [r for r in real["records"] for _ in range(self.n)]

    def probe(self, params: dict, batches: list[dict], keys) -> dict:
        """Mean reward components ("probe/...") of n rollouts per prompt of fixed prompt batches,
        sampled once with each key; with several keys also each key's mean reward
        ("probe/overall_key{j}"), whose spread is the probe's own noise."""
        rewards, per_key = [], []
        for key in keys:
            own = []
            for i, prompts in enumerate(batches):
                gen, real = self.rollout(params, prompts, jax.random.fold_in(key, i))
                own += self.reward_fn(gen, self.records(real))
            rewards += own
            per_key.append(float(np.mean([r["overall"] for r in own])))
        out = {f"probe/{k}": float(np.mean([r[k] for r in rewards])) for k in rewards[0]}
        if len(per_key) > 1:
            out.update({f"{PROBE_KEY_MEAN}{j}": v for j, v in enumerate(per_key)})
        return out

    def __call__(self, state: dict, prompts: dict, key) -> tuple[dict, dict]:
        """One GRPO step on a host batch of prompts: (the new state, the step's metrics)."""
        spec = self.spec
        t0 = time.perf_counter()
        gen, real = self.rollout(state["params"], prompts, key)
        t_rollout = time.perf_counter() - t0
        rewards = self.reward_fn(gen, self.records(real))
        overall = np.array([r["overall"] for r in rewards], np.float32)
        adv = np.asarray(self.advantages(overall, self.n))
        # The training rows: each real prompt (its images with it) with packing.per_row of its
        # rollouts (grpo.shared_prompt), or once per rollout.
        rows = rollouts.rollout_sequences(real, gen, spec.family, spec.model.config, self.n, adv,
                                          spec.packing.per_row)

        t1 = time.perf_counter()
        frozen = spec.setup.frozen
        updates = []
        for u in range(0, len(rows), self.per_update):
            dev = spec.packing.micro_batches(rows[u:u + self.per_update], self.tokenizer.pad_id)
            dev["old_logp"] = self._logprobs(state["params"], frozen, dev)
            ref_params = state["params"] if self.ref_params is None else self.ref_params
            dev["ref_logp"] = self._ref_logprobs(ref_params, frozen, dev) if self.kl_coef else dev["old_logp"]
            updates.append(dev)
        jax.block_until_ready([(d["old_logp"], d["ref_logp"]) for d in updates])  # an honest time split
        t2 = time.perf_counter()
        metrics = []
        for dev in updates:
            state, m = self._train_step(state, frozen, dev)
            metrics.append(jax.device_get(m))
        t3 = time.perf_counter()

        out = {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}
        for k in rewards[0]:
            out[f"reward/{k}"] = float(np.mean([r[k] for r in rewards]))
        lengths = gen.lengths.astype(np.float64)
        # Prompt + response tokens of every rollout, whether its prompt is shared or copied.
        total_tokens = self.n * int((real["attention_mask"] > 0).sum()) + sum(int(r["loss_mask"].sum()) for r in rows)
        out.update({
            "response_length": float(lengths.mean()),
            "response_clip_frac": float(np.mean(~gen.stopped)),
            "tokens_per_s": total_tokens / (t3 - t0),
            "time/rollout_s": t_rollout, "time/logprobs_s": t2 - t1, "time/update_s": t3 - t2,
            "step_time_s": t3 - t0,
        })
        return state, out


def run(config) -> dict:
    """The GRPO job (configs/grpo.py:paper, or GRPO within the demo). Returns {"final_dir",
    "steps", "stopped"} (stopped: a SIGTERM ended it; rerunning resumes)."""
    distributed.maybe_initialize_distributed()
    g, t = config.grpo, config.train
    inp = inputs.check(config, "rl", rows="rollout rows")
    tokenizer = loading.load_tokenizer(config)
    validator = None
    if inp.val_files:  # validation answers are logged with the run's reward
        validator = validation.Validator(config, tokenizer, *inp.val_files, mesh=inp.mesh,
                                         reward=registry.get_reward(g.reward))
    steps = t.steps or max(1, math.floor(t.epochs * inp.n_samples / g.rollout_batch_size))
    spec = jobs.grpo_spec(config, inp.mesh, steps=steps)
    grpo_step = Step(spec, tokenizer)

    from data_pipeline.pipeline import make_dataset

    it = iter(make_dataset(inp.files, inp.image_root, tokenizer, **spec.data))
    key = jax.random.key(config.seed)
    hooks = []
    if g.probe_every:
        # The probe: fixed prompts (a shuffle of the training prompts), sampled with fixed keys. A
        # step's own mean reward mostly reflects which prompts it drew; this one moves only when the
        # policy does, though other weights draw other rollouts from a key: the spread of several
        # keys' means is the part of a move that is sampling noise. Prompts and keys come from
        # grpo.probe_seed, not the run's seed, so runs of several seeds share one probe.
        probe_data = make_dataset(inp.files, inp.image_root, tokenizer, **{**spec.data, "seed": g.probe_seed})
        probe = list(itertools.islice(iter(probe_data), g.probe_batches))
        probe_keys = list(jax.random.split(jax.random.key(g.probe_seed), g.probe_keys))
        hooks.append(loop.Hook(lambda _, state: grpo_step.probe(state["params"], probe, probe_keys), g.probe_every,
                               at_start=True))

    if validator:  # beside the probe: the evaluation metrics on held-out benchmark samples, greedy
        hooks.append(validation.hook(config, validator, lambda state: spec.policy(state["params"])))

    log.info("GRPO: %d steps of %d prompts x %d rollouts, workdir %s", steps, g.rollout_batch_size, g.n,
             config.workdir)
    opts = loop.Options(steps, config.workdir, t.save_every, t.keep, log_every=t.log_every, desc="grpo",
                        show="reward/overall", hooks=hooks, lr_fn=spec.lr,
                        run_config=checkpoint.run_config(config), wandb_project=config.logging.wandb_project)
    result = loop.run(lambda state, batch, i: grpo_step(state, batch, jax.random.fold_in(key, i)),
                      spec.setup.state, lambda: next(it), it, opts)
    final_dir = os.path.join(config.workdir, "final")
    if not result.stopped:
        handover.save_final(final_dir, result.state["params"], config, steps)
    return {"final_dir": final_dir, "steps": result.step, "stopped": result.stopped}
