"""The built-in demo job (configs/grpo.py with no variant): ProgressBench-Sim, an SFT warm start
of the tiny model, GRPO from it, both models evaluated on the sim's test split side by side, and
the reward report. Each stage is its own job (sft, grpo, eval); this module only chains them.

A SIGTERM anywhere ends the chain cleanly: the stage that is training saves and stops, and
rerunning the same command resumes it (finished stages are skipped: their checkpoints are complete).
"""
from __future__ import annotations

import logging
import os

import jax
import numpy as np

from data_pipeline.jsonl import write_text
from data_pipeline.records import load_records
from progress_jax import data_files, distributed, loading
from progress_jax.eval import baselines, runner, tables
from progress_jax.eval.predictions import load_bench
from progress_jax.train import grpo, guards, metrics_writer, sft

log = logging.getLogger(__name__)

BENCH = ("visual_same_view", "visual_cross_view", "text-normal", "text-unanswerable", "visual-unanswerable")


def _evaluate(config, mesh, tokenizer, bench, init_dir: str, name: str) -> dict:
    model = loading.load_policy(config, mesh, init_dir)
    files, image_root = bench
    return runner.evaluate(model, tokenizer, files, image_root, os.path.join(config.workdir, f"eval_{name}"),
                           config, mesh=mesh, run_name=name)


def run(config) -> dict:
    distributed.maybe_initialize_distributed()
    config = config.copy_and_resolve_references()
    d = config.demo
    main = jax.process_index() == 0
    with guards.StopRequest() as stop:
        # Inputs first (generated once and cached): the RL prompts, and the benchmark the model is
        # evaluated on, read before the warm start begins.
        files, image_root, _ = data_files.train_data(config, "rl")
        data_files.check_train_files(files, image_root)
        bench = None
        if d.evaluate:
            sim = data_files.sim_paths(config)
            bench = ([sim[n] for n in BENCH], sim["bench_images"])
            runner.check_bench(bench[0])

        init = config.train.init_params
        if d.warm_start and not init:
            sft_config = d.sft
            with sft_config.unlocked():
                sft_config.workdir = os.path.join(config.workdir, "sft")
            out = sft.run(sft_config)
            if out["stopped"]:
                log.warning("SFT warm start stopped; rerun the same command to resume it")
                return {"stopped": True}
            init = out["final_dir"]
        with config.unlocked():
            config.train.init_params = init

        results = {}
        if bench is not None:
            # The blind baseline first: the best constant answer (25%, 50% or the training mean).
            train_mean = baselines.training_mean(r for f in files for r in load_records(f))
            name, metrics = baselines.best_constant(load_bench(bench[0]), train_mean)
            results[name] = metrics
            mesh, tokenizer = distributed.make_mesh(config), loading.load_tokenizer(config)
            results["sft"] = _evaluate(config, mesh, tokenizer, bench, init, "sft")
        if stop.requested:
            log.warning("%s received before the first GRPO step: stopping", stop.signal_name)
            return {"stopped": True}

        out = grpo.run(config)
        if out["stopped"]:
            return {"stopped": True}
        if bench is not None and not stop.requested:
            results["grpo"] = _evaluate(config, mesh, tokenizer, bench, out["final_dir"], "grpo")
            if main:
                md = tables.to_markdown(*tables.table1(results))
                write_text(os.path.join(config.workdir, "table1.md"), md + "\n")
                print("\nProgressBench-Sim test split: the best constant answer, the SFT model, and after GRPO:\n" + md,
                      flush=True)
    history = metrics_writer.read_metrics(config.workdir) if main else {}
    if history:
        g = config.grpo
        print(reward_report(history, g.probe_batches * g.rollout_batch_size, g.n, g.probe_keys), flush=True)
    return {"history": history, "metrics": results, "final_dir": out["final_dir"], "stopped": False}


def reward_report(history: dict[int, dict], probe_prompts: int, n: int, keys: int) -> str:
    """The steps' own mean rewards, the probe's curve and, with several keys, its noise: how far
    apart its keys' means lie at one step (a rise smaller than that is not the policy's)."""
    steps = [s for s in sorted(history) if "reward/overall" in history[s]]
    rewards = [history[s]["reward/overall"] for s in steps]
    lines = [f"mean reward per step (its own prompts): {' '.join(f'{r:.3f}' for r in rewards)}"]
    probes = [(s, history[s]) for s in sorted(history) if "probe/overall" in history[s]]
    if probes:
        lines.append(f"probe reward ({probe_prompts} fixed prompts x {n} rollouts, {keys} fixed "
                     f"key{'s' if keys > 1 else ''}), by step:")
        spreads = []
        for s, m in probes:
            per_key = [v for k, v in m.items() if k.startswith(grpo.PROBE_KEY_MEAN)]
            curve = [(k[6:], v) for k, v in m.items()
                     if k.startswith("probe/") and not k.startswith(grpo.PROBE_KEY_MEAN)]
            lines.append(f"  step {s:4d}: " + "  ".join(f"{k} {v:.3f}" for k, v in curve))
            if len(per_key) > 1:
                spreads.append(max(per_key) - min(per_key))
        if spreads:
            first, last = probes[0][1]["probe/overall"], probes[-1][1]["probe/overall"]
            lines.append(f"probe noise: its keys' means differ by {np.mean(spreads):.3f} at a step on average "
                         f"(at most {max(spreads):.3f}); the probe moved {last - first:+.3f} from step "
                         f"{probes[0][0]} to step {probes[-1][0]}")
    return "\n".join(lines)
