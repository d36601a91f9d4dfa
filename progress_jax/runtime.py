"""Job start-up shared by SFT, GRPO and evaluation: distributed init, mesh, model, tokenizer, data paths."""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp

from progress_jax import sharding
from progress_jax.models import qwen2_5_vl

log = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def maybe_initialize_distributed() -> None:
    """Multi-host: jax.distributed.initialize() when the standard environment says there are
    several processes (JAX_COORDINATOR_ADDRESS / SLURM / Open MPI / TPU pod variables)."""
    if jax.distributed.is_initialized():
        return
    several = any(
        int(os.environ.get(k, "1")) > 1 for k in ("JAX_NUM_PROCESSES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")
    ) or "JAX_COORDINATOR_ADDRESS" in os.environ
    if several:
        jax.distributed.initialize()
        log.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())


def dtype(name: str, key: str):
    if name not in DTYPES:
        raise ValueError(f"config key {key} must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def make_mesh(cfg) -> jax.sharding.Mesh:
    return sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)


def load_model(cfg, mesh=None) -> qwen2_5_vl.Qwen25VL:
    """model.path -> the checkpoint; empty -> a random tiny model (seed cfg.seed), sharded on mesh."""
    param = dtype(cfg.model.param_dtype, "model.param_dtype")
    compute = dtype(cfg.model.compute_dtype, "model.compute_dtype")
    if cfg.model.path:
        if not os.path.isdir(cfg.model.path):
            raise FileNotFoundError(f"config key model.path: no directory {cfg.model.path}")
        return qwen2_5_vl.from_pretrained(cfg.model.path, dtype=param, compute_dtype=compute, mesh=mesh)
    model = qwen2_5_vl.init(qwen2_5_vl.preset(cfg.model.preset), seed=cfg.seed, dtype=compute, param_dtype=param)
    if mesh is not None:
        from flax import nnx

        state = nnx.state(model)
        shardings = sharding.param_shardings(state, mesh)
        nnx.update(model, jax.device_put(state, shardings))
    return model


def load_tokenizer(cfg):
    from data_pipeline.tokenizer import load_tokenizer as load

    return load(cfg.model.path or None)


def sim_paths(cfg) -> dict:
    """Generate ProgressBench-Sim (cached) and return its paths (bench_dir, train_dir, ...)."""
    from data_pipeline import sim

    d = cfg.data
    return sim.generate(d.sim_dir, size=d.sim_size, seed=cfg.seed, image_size=d.sim_image_size,
                        reasoning=d.sim_reasoning)


def load_policy(cfg, mesh, init_dir: str = ""):
    """The model to train: base weights, LoRA injected per cfg.lora, and (init_dir) the trained
    parameters an earlier SFT/GRPO run wrote with train.loop.save_trainable."""
    from progress_jax import lora
    from progress_jax.train import loop

    model = load_model(cfg, mesh)
    lora.from_config(model, cfg.lora, seed=cfg.seed, mesh=mesh)
    if init_dir:
        params, _ = loop.load_trainable(init_dir)
        loop.assign(model, params)
    return model


def train_data(cfg, sim_split: str) -> tuple[list[str], str | None, dict | None]:
    """(files, image root, sim paths or None): data.train_files, else the sim's `sim_split` file
    ("sft" or "rl"), generated on first use."""
    files, image_root = list(cfg.data.train_files), cfg.data.image_root or None
    if files:
        return files, image_root, None
    sim = sim_paths(cfg)
    return [sim[sim_split]], sim["train_images"], sim


def count_samples(files) -> int:
    n = 0
    for f in files:
        if f.endswith(".array_record"):
            import grain

            n += len(grain.sources.ArrayRecordDataSource([f]))
        else:
            with open(f, encoding="utf-8") as fh:
                n += sum(1 for line in fh if line.strip())
    return n
