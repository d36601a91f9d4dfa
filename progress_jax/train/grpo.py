"""GRPO on image+text prompts with the decomposed progress reward (REFERENCE §5-6).

One step: a batch of prompts -> n rollouts each (the JAX sampler, images included) -> rewards
(format / ref / score) -> group advantages -> old log-probs (the current policy, before any
update) and reference log-probs (the same backbone with LoRA switched off; a frozen copy of
the initial weights only when lora.rank = 0) -> `updates_per_rollout` optimizer updates, each
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

from progress_jax import lora, runtime, sampling, sharding
from progress_jax.models import qwen2_5_vl
from progress_jax.rewards import progress_rewards
from progress_jax.train import checkpoint, grpo_loss, guards, loop, metrics_writer, schedule
from progress_jax.train.sft import stack_micro

log = logging.getLogger(__name__)

# ---- rollouts --------------------------------------------------------------------------------

def row_images(batch: dict, vision_start_id: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per batch row: (its image_grid_thw rows, its pixel_values rows); one vision_start per image."""
    grid = qwen2_5_vl.positions.valid_grids(batch["image_grid_thw"])
    counts = (np.asarray(batch["input_ids"]) == vision_start_id).sum(1)
    if counts.sum() != len(grid):
        raise ValueError(f"prompts hold {counts.sum()} images but image_grid_thw lists {len(grid)}")
    img_end = np.cumsum(counts)
    patch_end = np.concatenate([[0], np.cumsum(grid.prod(-1))])
    return [(grid[e - c:e], batch["pixel_values"][patch_end[e - c]:patch_end[e]]) for c, e in zip(counts, img_end)]


def repeat_rows(batch: dict, n: int, vision_start_id: int) -> dict:
    """Each prompt row repeated n times (rows of one prompt contiguous), its images with it;
    padding rows of an incomplete batch (record None) dropped."""
    images = row_images(batch, vision_start_id)
    rows = np.array([b for b, r in enumerate(batch["records"]) if r is not None for _ in range(n)])
    return {
        "input_ids": batch["input_ids"][rows],
        "attention_mask": batch["attention_mask"][rows],
        "pixel_values": np.concatenate([images[b][1] for b in rows]),
        "image_grid_thw": np.concatenate([images[b][0] for b in rows]),
        "records": [batch["records"][b] for b in rows],
    }


def rollout_sequences(prompts: dict, gen: sampling.Generation, config) -> list[dict]:
    """One host row per rollout: prompt tokens + response tokens (stop token included); loss_mask
    marks the response tokens; the row's images travel with it. A response is cut before any
    vision special token it generated (a text-only continuation cannot hold an image)."""
    vision_ids = np.array([config.image_token_id, config.video_token_id, config.vision_start_token_id,
                           config.vision_end_token_id])
    rows = []
    for b, (grid, pixels) in enumerate(row_images(prompts, config.vision_start_token_id)):
        prompt = prompts["input_ids"][b][prompts["attention_mask"][b] > 0]
        response = gen.tokens[b, : gen.lengths[b]]
        bad = np.flatnonzero(np.isin(response, vision_ids))
        if bad.size:
            response = response[: bad[0]]
        rows.append({
            "input_ids": np.concatenate([prompt, response]).astype(np.int32),
            "loss_mask": np.concatenate([np.zeros(len(prompt), np.int32), np.ones(len(response), np.int32)]),
            "pixel_values": pixels,
            "image_grid_thw": grid,
        })
    return rows


def pack(rows: list[dict], pad_id: int, length: int, patches: int) -> dict:
    """Rows -> one right-padded host batch of `length` tokens and `patches` patch rows."""
    B = len(rows)
    ids = np.full((B, length), pad_id, np.int32)
    mask = np.zeros((B, length), np.int32)
    loss = np.zeros((B, length), np.int32)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n], mask[i, :n], loss[i, :n] = r["input_ids"], 1, r["loss_mask"]
    pv = np.concatenate([r["pixel_values"] for r in rows])
    pixel_values = np.zeros((patches, pv.shape[1]), np.float32)
    pixel_values[: len(pv)] = pv
    return {"input_ids": ids, "attention_mask": mask, "loss_mask": loss, "pixel_values": pixel_values,
            "image_grid_thw": np.concatenate([r["image_grid_thw"] for r in rows])}


def bucket(n: int, buckets) -> int:
    """The smallest configured bucket >= n (else the next power of two), so that updates compile
    a handful of shapes."""
    for b in sorted(buckets):
        if n <= b:
            return b
    return 1 << (n - 1).bit_length()


# ---- log-probs and the update -----------------------------------------------------------------

def token_logps(model, mb: dict, temperature: float, mesh=None, remat: str = "none"):
    """log p(token t+1 | tokens <= t) at the given temperature for every position [B, L-1], and
    the per-token entropy of that distribution."""
    ids = mb["input_ids"]
    x = sharding.constrain_batch(model.embed(ids, mb.get("pixel_values"), mb.get("vision")), mesh)
    hidden, _ = model.decode(x, mb["position_ids"], mb["attention_mask"], remat=remat)
    logits = model.logits(hidden[:, :-1]) / temperature
    logp_all = jax.nn.log_softmax(logits, axis=-1)
    logp = jnp.take_along_axis(logp_all, ids[:, 1:, None], axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    return logp, entropy


def make_logp_fn(parts: loop.Parts, temperature: float, mesh=None, remat: str = "none", off: bool = False):
    """(params, frozen, micro-batches [k, ...]) -> log-probs [k, B, L-1]; off=True: LoRA switched off."""
    def fn(params, frozen, batch):
        p = lora.lora_off(params) if off else params
        model = parts.model(p, frozen)
        return jax.lax.map(lambda mb: token_logps(model, mb, temperature, mesh, remat)[0], batch)

    return fn


def make_update(parts: loop.Parts, tx, g, temperature: float, mesh=None, remat: str = "none"):
    """update(state, frozen, batch) -> (state, metrics): gradients of the GRPO loss summed over the
    batch's micro-batches, each divided by the global response-token count (exact token-mean)."""
    def update(state, frozen, batch):
        mask_all = batch["loss_mask"][:, :, 1:].astype(jnp.float32)
        n_tokens = jnp.maximum(mask_all.sum(), 1.0)

        def micro(carry, mb):
            def loss_fn(params):
                logp, entropy = token_logps(parts.model(params, frozen), mb, temperature, mesh, remat)
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


# ---- config ----------------------------------------------------------------------------------

def resolve(config) -> None:
    """Fill unset fields with the paper's recipe (model.path given) or the built-in demo's, then
    check every value, naming the key."""
    g, t = config.grpo, config.train
    demo = not config.model.path
    defaults = [
        (t, dict(lr=1e-4 if demo else 1e-6, batch_size=8 if demo else 64, micro_batch_size=8 if demo else 4,
                steps=24 if demo else 0, epochs=2.0)),
        (g, dict(rollout_batch_size=8 if demo else 64, probe_every=4 if demo else 0)),
        (config.sampling, dict(max_new_tokens=128 if demo else 8192, temperature=1.0 if demo else 0.6)),
        # The demo's tiny model is small enough to train whole, against a frozen copy of the SFT model.
        (config.lora, dict(rank=0 if demo else 8)),
    ]
    with config.unlocked():
        for section, values in defaults:
            for k, v in values.items():
                if section.get(k) is None:
                    section[k] = v
    checks = [
        ("grpo.n", g.n >= 1, "must be >= 1"),
        ("lora.rank", isinstance(config.lora.rank, int) and config.lora.rank >= 0, "must be an integer >= 0"),
        ("grpo.kl_coef", g.kl_coef >= 0, "must be >= 0"),
        ("grpo.advantage", g.advantage in ("grpo", "drgrpo"), "must be 'grpo' or 'drgrpo'"),
        ("grpo.reward", g.reward in ("paper", "anti_hack"), "must be 'paper' or 'anti_hack'"),
        ("grpo.rollout_batch_size", g.rollout_batch_size >= 1, "must be >= 1"),
        ("grpo.probe_every", g.probe_every >= 0, "must be >= 0"),
        ("grpo.probe_batches", g.probe_batches >= 1, "must be >= 1"),
        ("train.batch_size", t.batch_size >= 1 and g.rollout_batch_size % t.batch_size == 0,
         "must divide grpo.rollout_batch_size"),
        ("train.micro_batch_size", t.micro_batch_size >= 1 and (t.batch_size * g.n) % t.micro_batch_size == 0,
         "must divide train.batch_size x grpo.n (rollout rows per update)"),
        ("train.lr", t.lr > 0, "must be > 0"),
        ("sampling.temperature", config.sampling.temperature > 0, "must be > 0 for GRPO rollouts"),
        ("sampling.max_new_tokens", config.sampling.max_new_tokens >= 1, "must be >= 1"),
    ]
    for key, ok, problem in checks:
        if not ok:
            section, name = key.split(".")
            raise ValueError(f"config key {key} {problem}, got {config[section][name]!r}")
    if g.rollout_batch_size % jax.process_count():
        raise ValueError(f"config key grpo.rollout_batch_size must be a multiple of the {jax.process_count()} processes")
    if g.init_lora and not os.path.isfile(os.path.join(g.init_lora, loop.TRAINABLE_FILE)):
        raise FileNotFoundError(f"config key grpo.init_lora: no {loop.TRAINABLE_FILE} in {g.init_lora}")
    for f in config.data.train_files:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"config key data.train_files: no file {f}")


# ---- the trainer -------------------------------------------------------------------------------

class Trainer:
    """Holds the model parts, jitted functions and state of one GRPO run."""

    def __init__(self, config, model, tokenizer, mesh, reward_fn=None):
        """reward_fn(generation, records) -> one {"overall", ...} dict per rollout; default: the
        progress reward (config.grpo.reward) of each text against its record's closest_idx,
        progress and num_demos."""
        self.config, self.model, self.tokenizer, self.mesh = config, model, tokenizer, mesh
        self.reward_fn = reward_fn or (lambda gen, recs: progress_rewards(
            gen.texts, [r.closest_idx for r in recs], [r.progress for r in recs], [r.num_demos for r in recs],
            variant=config.grpo.reward))
        g, t = config.grpo, config.train
        self.parts, params = loop.split(model, lora.trainable_filter(config.lora.rank))
        self.updates_per_rollout = g.rollout_batch_size // t.batch_size
        self.tx = schedule.make_optimizer(t.lr, t.weight_decay, t.warmup_ratio,
                                          max(1, t.steps * self.updates_per_rollout), t.clip_norm or None)
        state = loop.init_state(params, self.tx, config.seed)
        self.state_sh = loop.state_shardings(jax.eval_shape(lambda: state), mesh)
        self.state = jax.device_put(state, self.state_sh)
        self.frozen_sh = sharding.param_shardings(self.parts.frozen, mesh)
        # Full-parameter RL: the reference policy needs its own frozen copy of the initial weights.
        self.ref_params = None if config.lora.rank > 0 else jax.tree.map(jnp.copy, self.state["params"])
        temp, remat = config.sampling.temperature, config.model.remat
        self._logp = jax.jit(make_logp_fn(self.parts, temp, mesh, remat))
        self._ref_logp = jax.jit(make_logp_fn(self.parts, temp, mesh, remat, off=config.lora.rank > 0))
        self._update_fn = make_update(self.parts, self.tx, g, temp, mesh, remat)
        self._update = {}
        self.sampling = sampling.SamplingParams(
            max_new_tokens=int(config.sampling.max_new_tokens), temperature=float(config.sampling.temperature),
            top_p=float(config.sampling.top_p), top_k=int(config.sampling.top_k))

    def policy(self):
        return self.parts.model(self.state["params"])

    def _micro(self, rows: list[dict], advantages: np.ndarray) -> dict:
        """Rollout rows -> device micro-batches [k, mb, ...] with position ids and vision indices."""
        mb = self.config.train.micro_batch_size
        d = self.config.data
        new = self.sampling.max_new_tokens
        length = bucket(max(len(r["input_ids"]) for r in rows), [-(-(b + new) // 128) * 128 for b in d.length_buckets])
        hosts = []
        for i in range(0, len(rows), mb):
            chunk = rows[i:i + mb]
            patches = bucket(sum(len(r["pixel_values"]) for r in chunk), d.patch_buckets)
            hosts.append(pack(chunk, self.tokenizer.pad_id, length, patches))
        stacked = stack_micro(hosts, self.model.config)
        stacked["advantages"] = advantages.reshape(len(hosts), mb).astype(np.float32)
        return loop.to_device(stacked, loop.batch_shardings(stacked, self.mesh))

    def probe(self, batches: list[dict], key) -> dict:
        """Mean reward components ("probe/...") of n rollouts per prompt of fixed prompt batches."""
        rewards = []
        for i, prompts in enumerate(batches):
            batch = repeat_rows(prompts, self.config.grpo.n, self.model.config.vision_start_token_id)
            gen = sampling.generate(self.policy(), batch, self.sampling, jax.random.fold_in(key, i),
                                    tokenizer=self.tokenizer, mesh=self.mesh)
            rewards += self.reward_fn(gen, batch["records"])
        return {f"probe/{k}": float(np.mean([r[k] for r in rewards])) for k in rewards[0]}

    def step(self, prompts: dict, key) -> dict:
        """One GRPO step on a host batch of prompts; returns the step's metrics."""
        g, t = self.config.grpo, self.config.train
        t0 = time.perf_counter()
        batch = repeat_rows(prompts, g.n, self.model.config.vision_start_token_id)
        gen = sampling.generate(self.policy(), batch, self.sampling, key, tokenizer=self.tokenizer, mesh=self.mesh)
        t_rollout = time.perf_counter() - t0
        rewards = self.reward_fn(gen, batch["records"])
        overall = np.array([r["overall"] for r in rewards], np.float32)
        adv = np.asarray(grpo_loss.group_advantages(overall, g.n, g.advantage))
        rows = rollout_sequences(batch, gen, self.model.config)

        t1 = time.perf_counter()
        per_update = t.batch_size * g.n
        metrics = []
        updates = []
        for u in range(0, len(rows), per_update):
            dev = self._micro(rows[u:u + per_update], adv[u:u + per_update])
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
                                                   loop.batch_shardings(dev, self.mesh))
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
    """The GRPO job (configs/grpo.py). With no model.path: the built-in demo (sim data, a short
    SFT warm start, GRPO, then both models evaluated side by side). Returns a summary dict
    ({"stopped": True} when a SIGTERM ended it; rerunning resumes)."""
    runtime.maybe_initialize_distributed()
    demo = not config.model.path
    resolve(config)
    # A SIGTERM anywhere in the job ends it cleanly: the warm start and the step loop save and
    # stop; between them this handler skips what is left (evaluations, the final export).
    with guards.StopRequest() as stop:
        if demo and config.grpo.demo_sft and not config.grpo.init_lora:
            from progress_jax.train import sft

            sft_cfg = config.demo_sft_config
            with sft_cfg.unlocked():
                sft_cfg.workdir = os.path.join(config.workdir, "sft")
            if sft.run(sft_cfg)["stopped"]:
                log.warning("SFT warm start stopped; rerun the same command to resume it")
                return {"stopped": True}
            with config.unlocked():
                config.grpo.init_lora = os.path.join(sft_cfg.workdir, "final")
        return _run_grpo(config, demo, stop)


def _run_grpo(config, demo: bool, stop: guards.StopRequest) -> dict:
    g, t = config.grpo, config.train
    mesh = runtime.make_mesh(config)
    model = runtime.load_policy(config, mesh, g.init_lora)
    tokenizer = runtime.load_tokenizer(config)
    files, image_root, sim = runtime.train_data(config, "rl")

    from data_pipeline.pipeline import make_dataset

    d = config.data
    per_process = g.rollout_batch_size // jax.process_count()

    def prompts(**kw):
        return make_dataset(files, image_root, tokenizer, mode=d.mode, layout=d.prompt, stage="rl",
                            with_answers=False, batch_size=per_process,
                            length_buckets=d.length_buckets, patch_buckets=d.patch_buckets,
                            image_buckets=d.image_buckets, min_pixels=d.min_pixels, max_pixels=d.max_pixels,
                            worker_count=d.worker_count, **kw)

    it = iter(prompts(seed=config.seed, num_epochs=None))
    # The probe: fixed prompts (another shuffle of the training prompts), sampled with one fixed
    # key. A step's own mean reward mostly reflects which prompts it drew; this one moves only
    # when the policy does.
    probe = (list(itertools.islice(iter(prompts(seed=config.seed + 1, num_epochs=None)), g.probe_batches))
             if g.probe_every else [])
    if not t.steps:
        with config.unlocked():
            t.steps = max(1, math.floor(t.epochs * runtime.count_samples(files) / g.rollout_batch_size))
    trainer = Trainer(config, model, tokenizer, mesh)

    results = {}
    bench = None
    if demo and g.eval_demo:
        from progress_jax.eval import runner

        bench = _sim_bench(sim or runtime.sim_paths(config))
        results["sft"] = runner.evaluate(trainer.policy(), tokenizer, bench[0], bench[1],
                                         os.path.join(config.workdir, "eval_sft"), config, mesh=mesh, run_name="sft")
    if stop.requested:
        log.warning("%s received before the first GRPO step: stopping", stop.signal_name)
        return {"stopped": True}

    os.makedirs(config.workdir, exist_ok=True)
    ckpt = checkpoint.Checkpointer(os.path.join(config.workdir, "checkpoints"), t.save_every, t.keep,
                                  run_config=checkpoint.run_config(config))
    trainer.state, start = loop.restore_or_keep(ckpt, trainer.state, it)
    key = jax.random.key(config.seed)
    probe_key = jax.random.fold_in(key, 0)  # steps use fold_in(key, step), step >= 1
    log.info("GRPO: %d steps of %d prompts x %d rollouts, from step %d, workdir %s",
             t.steps, g.rollout_batch_size, g.n, start, config.workdir)
    main = jax.process_index() == 0
    with metrics_writer.MetricsWriter(config.workdir, enabled=main) as writer:
        if probe and start == 0:
            writer.write(0, trainer.probe(probe, probe_key))
        bar = metrics_writer.progress_bar(t.steps, start, desc="grpo", enabled=main)
        last_saved = ckpt.latest_step()
        for step in range(start + 1, t.steps + 1):
            m = trainer.step(next(it), jax.random.fold_in(key, step))
            guards.check_finite(step, last_saved, loss=m["loss"], grad_norm=m["grad_norm"])
            if probe and (step % g.probe_every == 0 or step == t.steps):
                m.update(trainer.probe(probe, probe_key))
            writer.write(step, m)
            bar.update(1)
            bar.set_postfix(reward=f"{m['reward/overall']:.3f}")
            if ckpt.save(step, trainer.state, it.get_state(), {"step": step}, force=step == t.steps or stop.requested):
                last_saved = step
            if stop.requested:
                break
        bar.close()
    ckpt.close()
    if stop.requested:
        log.warning("%s received: saved step %d, stopping; rerun the same command to resume", stop.signal_name,
                    last_saved)
        return {"stopped": True}
    final_dir = os.path.join(config.workdir, "final")
    loop.save_trainable(final_dir, trainer.state["params"],
                        {"lora": config.lora.to_dict(), "model_path": config.model.path,
                         "model_preset": config.model.preset, "seed": config.seed, "steps": t.steps})
    if bench is not None and not stop.requested:
        from progress_jax.eval import runner, tables

        results["grpo"] = runner.evaluate(trainer.policy(), tokenizer, bench[0], bench[1],
                                          os.path.join(config.workdir, "eval_grpo"), config, mesh=mesh,
                                          run_name="grpo")
        if main:
            md = tables.to_markdown(*tables.table1(results))
            with open(os.path.join(config.workdir, "table1.md"), "w") as f:
                f.write(md + "\n")
            print("\nProgressBench-Sim test split, SFT warm start vs after GRPO:\n" + md, flush=True)
    history = metrics_writer.read_metrics(config.workdir) if main else {}
    if history:
        print(_reward_report(history, g.probe_batches * per_process, g.n), flush=True)
    return {"history": history, "metrics": results, "final_dir": final_dir, "stopped": False}


def _reward_report(history: dict[int, dict], probe_prompts: int, n: int) -> str:
    steps = [s for s in sorted(history) if "reward/overall" in history[s]]
    rewards = [history[s]["reward/overall"] for s in steps]
    lines = [f"mean reward per step (its own prompts): {' '.join(f'{r:.3f}' for r in rewards)}"]
    probes = [(s, history[s]) for s in sorted(history) if "probe/overall" in history[s]]
    if probes:
        lines.append(f"probe reward ({probe_prompts} fixed prompts x {n} rollouts, one fixed key), by step:")
        lines += [f"  step {s:4d}: " + "  ".join(f"{k[6:]} {v:.3f}" for k, v in m.items() if k.startswith("probe/"))
                  for s, m in probes]
    return "\n".join(lines)


def _sim_bench(sim: dict):
    names = ("visual_same_view", "visual_cross_view", "text-normal", "text-unanswerable", "visual-unanswerable")
    return [sim[n] for n in names], sim["bench_images"]
