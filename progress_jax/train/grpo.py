"""The GRPO job: rollouts on image+text prompts, a reward by name, group advantages, the clipped
update (recipe and sources: docs/recipes.md).

One step: a batch of prompts -> n rollouts each (the JAX sampler, images included; each prompt
encoded and prefilled once for its n rollouts) -> rewards
(progress_jax.train.registry: a named reward or a user's module:function) -> group advantages
(an estimator by name) -> old log-probs (the current policy, before any update) and reference
log-probs (the same backbone with LoRA switched off; a frozen copy of the initial weights only
when lora.rank = 0) -> `updates_per_rollout` optimizer updates, each
the clipped dual-clip surrogate + kl_coef * low_var_kl as a token-mean over all response
tokens of its global batch, exact under micro-batching.

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
import optax

from progress_jax import chunked, distributed, handover, loading, lora, sampling
from progress_jax.models import families
from progress_jax.train import checkpoint, grpo_loss, inputs, loop, registry, rollouts, schedule, validation

log = logging.getLogger(__name__)

# ---- log-probs and the update -----------------------------------------------------------------

def token_logps(model, mb: dict, temperature: float, mesh=None, remat: str = "none", loss_chunk: int = 0):
    """log p(token t+1 | tokens <= t) at the given temperature for every position [B, L-1], and
    the per-token entropy of that distribution. loss_chunk > 0: the logits of that many positions
    at a time (progress_jax/chunked.py)."""
    ids = mb["input_ids"]
    hidden = loop.hidden_states(model, mb, mesh, remat)

    def per_position(h, targets):
        logp_all = jax.nn.log_softmax(model.logits(h) / temperature, axis=-1)
        logp = jnp.take_along_axis(logp_all, targets[..., None], axis=-1)[..., 0]
        return logp, -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)

    return chunked.map_positions(per_position, loss_chunk, hidden[:, :-1], ids[:, 1:])


def make_logp_fn(parts: loop.Parts, temperature: float, mesh=None, remat: str = "none", off: bool = False,
                 loss_chunk: int = 0):
    """(params, frozen, micro-batches [k, ...]) -> log-probs [k, B, L-1]; off=True: LoRA switched off."""
    def fn(params, frozen, batch):
        p = lora.lora_off(params) if off else params
        model = parts.model(p, frozen)
        return jax.lax.map(lambda mb: token_logps(model, mb, temperature, mesh, remat, loss_chunk)[0], batch)

    return fn


def make_update(parts: loop.Parts, tx, g, temperature: float, mesh=None, remat: str = "none", loss_chunk: int = 0):
    """update(state, frozen, batch) -> (state, metrics): gradients of the GRPO loss summed over the
    batch's micro-batches, each divided by the global response-token count (exact token-mean)."""
    def update(state, frozen, batch):
        mask_all = batch["loss_mask"][:, :, 1:].astype(jnp.float32)
        n_tokens = jnp.maximum(mask_all.sum(), 1.0)

        def micro(carry, mb):
            def loss_fn(params):
                logp, entropy = token_logps(parts.model(params, frozen), mb, temperature, mesh, remat, loss_chunk)
                mask = mb["loss_mask"][:, 1:].astype(jnp.float32)
                ref = mb["ref_logp"] if g.kl_coef else None
                loss, m = grpo_loss.grpo_loss(logp, mb["old_logp"], ref, mb["advantages"], mask, n_tokens,
                                              kl_coef=g.kl_coef, clip_low=g.clip_low, clip_high=g.clip_high,
                                              dual_clip=g.dual_clip)
                m["entropy"] = grpo_loss.token_mean(entropy, mask, n_tokens)
                return loss, m

            (loss, m), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
            acc = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), carry, (grads, m))
            return acc, None

        zeros_g = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state["params"])
        metric_keys = ("pg_loss", "clip_frac", "dual_clip_frac", "entropy", "loss") + (("kl",) if g.kl_coef else ())
        zeros_m = {k: jnp.zeros((), jnp.float32) for k in metric_keys}
        (grads, metrics), _ = jax.lax.scan(micro, (zeros_g, zeros_m), batch)
        new_state = loop.apply_gradients(state, grads, tx)
        return new_state, {**metrics, "grad_norm": optax.tree.norm(grads), "response_tokens": n_tokens}

    return update


# ---- the trainer -------------------------------------------------------------------------------

class Trainer:
    """Holds the model parts, jitted functions and state of one GRPO run."""

    def __init__(self, config, model, tokenizer, mesh, reward_fn=None, total_steps: int | None = None, family=None):
        """reward_fn(generation, records) -> one {"overall", ...} dict per rollout; default: the
        registry reward config.grpo.reward of each rollout's text. total_steps: rollout steps (for
        the schedule; default train.steps). family: the model family (default: from the config)."""
        self.config, self.model, self.tokenizer, self.mesh = config, model, tokenizer, mesh
        self.family = family or families.for_config(config)
        g, t = config.grpo, config.train
        if reward_fn is None:
            reward = registry.get_reward(g.reward)
            reward_fn = lambda gen, records: reward(gen.texts, records)  # noqa: E731
        self.reward_fn = reward_fn
        self.advantages = registry.get_advantage(g.advantage)
        self.updates_per_rollout = g.rollout_batch_size // t.batch_size
        total = max(1, (total_steps or t.steps) * self.updates_per_rollout)
        self.tx = schedule.make_optimizer(t.lr, t.weight_decay, t.warmup_ratio, total, t.clip_norm or None,
                                          schedule=t.schedule)
        setup = loop.setup_state(model, mesh, self.tx, rank=config.lora.rank,
                                 freeze_vision=config.model.freeze_vision, seed=config.seed)
        self.parts, self.state, self.state_sh, self.frozen_sh = setup.parts, setup.state, setup.state_sh, setup.frozen_sh
        # Full-parameter RL: the reference policy needs its own frozen copy of the initial weights.
        self.ref_params = None if config.lora.rank > 0 else jax.tree.map(jnp.copy, self.state["params"])
        temp, remat, chunk = config.sampling.temperature, config.model.remat, t.loss_chunk
        self._logp = jax.jit(make_logp_fn(self.parts, temp, mesh, remat, loss_chunk=chunk))
        self._ref_logp = jax.jit(make_logp_fn(self.parts, temp, mesh, remat, off=config.lora.rank > 0, loss_chunk=chunk))
        self._update_fn = make_update(self.parts, self.tx, g, temp, mesh, remat, chunk)
        self._update = {}
        self.sampling = sampling.SamplingParams(
            max_new_tokens=int(config.sampling.max_new_tokens), temperature=float(config.sampling.temperature),
            top_p=float(config.sampling.top_p), top_k=int(config.sampling.top_k))

    def policy(self):
        return self.parts.model(self.state["params"])

    def rollout(self, prompts: dict, key) -> tuple[sampling.Generation, list]:
        """n rollouts of each prompt (rows of one prompt contiguous; padding rows dropped), each
        prompt's images encoded and prompt prefilled once; and each rollout's record."""
        n = self.config.grpo.n
        real = rollouts.repeat_rows(prompts, 1, self.family, self.model.config)  # n = 1: drops padding rows
        gen = sampling.generate(self.policy(), real, self.sampling, key, tokenizer=self.tokenizer, mesh=self.mesh,
                                batch_size=self.config.sampling.batch_size, n=n)
        return gen, [r for r in real["records"] for _ in range(n)]

    def probe(self, batches: list[dict], key) -> dict:
        """Mean reward components ("probe/...") of n rollouts per prompt of fixed prompt batches."""
        rewards = []
        for i, prompts in enumerate(batches):
            rewards += self.reward_fn(*self.rollout(prompts, jax.random.fold_in(key, i)))
        return {f"probe/{k}": float(np.mean([r[k] for r in rewards])) for k in rewards[0]}

    def step(self, prompts: dict, key) -> dict:
        """One GRPO step on a host batch of prompts; returns the step's metrics."""
        g, t = self.config.grpo, self.config.train
        t0 = time.perf_counter()
        gen, records = self.rollout(prompts, key)
        t_rollout = time.perf_counter() - t0
        rewards = self.reward_fn(gen, records)
        overall = np.array([r["overall"] for r in rewards], np.float32)
        adv = np.asarray(self.advantages(overall, g.n))
        # The training rows still hold each prompt n times, its images with it.
        batch = rollouts.repeat_rows(prompts, g.n, self.family, self.model.config)
        rows = rollouts.rollout_sequences(batch, gen, self.family, self.model.config)

        t1 = time.perf_counter()
        per_update = t.batch_size * g.n
        metrics = []
        updates = []
        for u in range(0, len(rows), per_update):
            dev = rollouts.micro_batches(rows[u:u + per_update], adv[u:u + per_update], t.micro_batch_size,
                                         self.config, self.tokenizer.pad_id, self.sampling.max_new_tokens,
                                         self.family, self.model.config, self.mesh)
            frozen = self.parts.frozen
            dev["old_logp"] = self._logp(self.state["params"], frozen, dev)
            ref_params = self.state["params"] if self.ref_params is None else self.ref_params
            dev["ref_logp"] = self._ref_logp(ref_params, frozen, dev) if g.kl_coef else dev["old_logp"]
            updates.append(dev)
        jax.block_until_ready([(d["old_logp"], d["ref_logp"]) for d in updates])  # an honest time split
        t2 = time.perf_counter()
        for dev in updates:
            if "fn" not in self._update:  # shardings depend on the batch's keys: jit on the first batch
                self._update["fn"] = loop.jit_step(self._update_fn, self.mesh, self.state_sh, self.frozen_sh,
                                                   loop.batch_shardings(dev, self.mesh, self.family))
            self.state, m = self._update["fn"](self.state, self.parts.frozen, dev)
            metrics.append(jax.device_get(m))
        t3 = time.perf_counter()

        out = {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}
        for k in rewards[0]:
            out[f"reward/{k}"] = float(np.mean([r[k] for r in rewards]))
        lengths = gen.lengths.astype(np.float64)
        total_tokens = sum(len(r["input_ids"]) for r in rows)
        out.update({
            "response_length": float(lengths.mean()),
            "response_clip_frac": float(np.mean(~gen.stopped)),
            "tokens_per_s": total_tokens / (t3 - t0),
            "time/rollout_s": t_rollout, "time/logprobs_s": t2 - t1, "time/update_s": t3 - t2,
            "step_time_s": t3 - t0,
        })
        return out


def run(config) -> dict:
    """The GRPO job (configs/grpo.py:paper, or GRPO within the demo). Returns {"final_dir",
    "steps", "stopped"} (stopped: a SIGTERM ended it; rerunning resumes)."""
    distributed.maybe_initialize_distributed()
    g, t, d = config.grpo, config.train, config.data
    inp = inputs.check(config, "rl", rows="rollout rows")
    files, image_root, n_samples, val_files, mesh = inp.files, inp.image_root, inp.n_samples, inp.val_files, inp.mesh
    tokenizer = loading.load_tokenizer(config)
    validator = None
    if val_files:  # validation answers are logged with the run's reward
        validator = validation.Validator(config, tokenizer, *val_files, mesh=mesh,
                                         reward=registry.get_reward(g.reward))
    model = loading.load_policy(config, mesh, t.init_params)

    from data_pipeline.pipeline import make_dataset

    def prompts(**kw):
        return make_dataset(files, image_root, tokenizer, mode=d.mode, layout=d.prompt, stage="rl",
                            with_answers=False, batch_size=g.rollout_batch_size,
                            length_buckets=d.length_buckets, patch_buckets=d.patch_buckets,
                            image_buckets=d.image_buckets, min_pixels=d.min_pixels, max_pixels=d.max_pixels,
                            worker_count=d.worker_count, **kw)

    it = iter(prompts(seed=config.seed, num_epochs=None))
    steps = t.steps or max(1, math.floor(t.epochs * n_samples / g.rollout_batch_size))
    trainer = Trainer(config, model, tokenizer, mesh, total_steps=steps)
    key = jax.random.key(config.seed)
    hooks = []
    if g.probe_every:
        # The probe: fixed prompts (another shuffle of the training prompts), sampled with one fixed
        # key. A step's own mean reward mostly reflects which prompts it drew; this one moves only
        # when the policy does.
        probe = list(itertools.islice(iter(prompts(seed=config.seed + 1, num_epochs=None)), g.probe_batches))
        probe_key = jax.random.fold_in(key, 0)  # steps use fold_in(key, step), step >= 1

        def probe_hook(_, state):
            trainer.state = state
            return trainer.probe(probe, probe_key)

        hooks.append(loop.Hook(probe_hook, g.probe_every, at_start=True))

    if validator:  # beside the probe: the evaluation metrics on held-out benchmark samples, greedy
        hooks.append(validation.hook(config, validator, lambda state: trainer.parts.model(state["params"])))

    def step(state, batch, i):
        trainer.state = state
        metrics = trainer.step(batch, jax.random.fold_in(key, i))
        return trainer.state, metrics

    log.info("GRPO: %d steps of %d prompts x %d rollouts, workdir %s", steps, g.rollout_batch_size, g.n,
             config.workdir)
    # The learning rate of a step's first update (the schedule counts updates).
    lr = schedule.make_schedule(t.schedule, t.lr, max(1, steps * trainer.updates_per_rollout), t.warmup_ratio)
    opts = loop.Options(steps, config.workdir, t.save_every, t.keep, log_every=t.log_every, desc="grpo",
                        show="reward/overall", hooks=hooks, lr_fn=lambda i: lr(i * trainer.updates_per_rollout),
                        run_config=checkpoint.run_config(config), wandb_project=config.logging.wandb_project)
    result = loop.run(step, trainer.state, lambda: next(it), it, opts)
    final_dir = os.path.join(config.workdir, "final")
    if not result.stopped:
        handover.save_trainable(final_dir, result.state["params"], handover.run_meta(config, steps))
    return {"final_dir": final_dir, "steps": result.step, "stopped": result.stopped}
