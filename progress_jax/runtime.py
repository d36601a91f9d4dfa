"""Job start-up shared by SFT, GRPO, evaluation and the demo: distributed init, mesh, model,
tokenizer, data paths, the inputs checked before any expensive work, the progress bar."""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp

from progress_jax import handover, sharding
from progress_jax.errors import BadInput, InputNotFound
from progress_jax.models import families

log = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}



def _cluster_processes(env) -> int:
    """Processes a cluster manager whose variables jax.distributed.initialize() reads itself
    says there are (SLURM, Open MPI, a multi-host TPU slice); 1 when none does."""
    if "SLURM_JOB_ID" in env:
        return int(env.get("SLURM_NTASKS", "1"))
    if "OMPI_MCA_orte_hnp_uri" in env:
        return int(env.get("OMPI_COMM_WORLD_SIZE", "1"))
    if env.get("TPU_WORKER_HOSTNAMES"):
        return len(env["TPU_WORKER_HOSTNAMES"].split(","))
    return 1


def maybe_initialize_distributed() -> None:
    """Several processes (docs/multihost.md): jax.distributed.initialize() with
    JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID passed explicitly (JAX reads only
    the first itself), or with no arguments under SLURM, Open MPI or a TPU pod, which JAX
    detects. One process (none of these set): nothing to do. On CPU the collectives go over gloo."""
    if jax.distributed.is_initialized():
        return
    env = os.environ
    explicit = "JAX_COORDINATOR_ADDRESS" in env or "JAX_NUM_PROCESSES" in env or "JAX_PROCESS_ID" in env
    if not explicit and _cluster_processes(env) <= 1:
        return
    if explicit:
        missing = [k for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if k not in env]
        if missing:
            raise ValueError(f"multi-process start: set all of JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and "
                             f"JAX_PROCESS_ID (missing: {', '.join(missing)})")
        try:
            n, i = int(env["JAX_NUM_PROCESSES"]), int(env["JAX_PROCESS_ID"])
        except ValueError:
            raise ValueError("JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers, got "
                             f"{env['JAX_NUM_PROCESSES']!r} and {env['JAX_PROCESS_ID']!r}") from None
        if not 0 <= i < n:
            raise ValueError(f"JAX_PROCESS_ID {i} is outside 0..{n - 1} (JAX_NUM_PROCESSES {n})")
    # Cross-process collectives between CPU devices need a backend (only the CPU client reads this);
    # it must be set before the backends start.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        jax.distributed.initialize(env["JAX_COORDINATOR_ADDRESS"], num_processes=n, process_id=i)
    else:
        jax.distributed.initialize()  # SLURM / Open MPI / TPU: JAX reads the cluster's variables
    log.info("jax.distributed: process %d of %d, %d local of %d devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())


def make_mesh(cfg) -> jax.sharding.Mesh:
    return sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)


def load_model(cfg, mesh=None):
    """model.path -> the checkpoint (its family by config.json's model_type); empty -> a random
    model of preset model.preset (seed cfg.seed), sharded on mesh."""
    param, compute = DTYPES[cfg.model.param_dtype], DTYPES[cfg.model.compute_dtype]
    if cfg.model.path and not os.path.isdir(cfg.model.path):
        raise InputNotFound(f"config key model.path: no directory {cfg.model.path}")
    family = families.for_config(cfg)
    if cfg.model.path:
        return set_attention_chunk(family.load(cfg.model.path, param, compute, mesh), cfg.model.attention_chunk)
    model = family.init(cfg.model.preset, cfg.seed, compute, param)
    if mesh is not None:
        from flax import nnx

        state = nnx.state(model)
        shardings = sharding.param_shardings(state, mesh, family.PARTITION_RULES)
        nnx.update(model, jax.device_put(state, shardings))
    return set_attention_chunk(model, cfg.model.attention_chunk)


def set_attention_chunk(model, chunk: int):
    """model.attention_chunk onto every module of `model` with an `attention_chunk` attribute (a
    family's attention layers: queries in blocks of `chunk`, 0 = one block). Returns the model."""
    from flax import nnx

    modules = [m for _, m in nnx.iter_graph(model) if hasattr(m, "attention_chunk")]
    for m in modules:
        m.attention_chunk = int(chunk)
    return model


def load_tokenizer(cfg):
    from data_pipeline.tokenizer import load_tokenizer as load

    return load(cfg.model.path or None)


def sim_paths(cfg) -> dict:
    """Generate ProgressBench-Sim (cached) and return its paths (bench_dir, train_dir, ...)."""
    from data_pipeline import sim

    d = cfg.data

    def generate():
        return sim.generate(d.sim_dir, size=d.sim_size, seed=cfg.seed, image_size=d.sim_image_size,
                            reasoning=d.sim_reasoning)

    if jax.process_count() == 1:
        return generate()
    # Several processes share the directory: process 0 writes it, the others then read the cached
    # copy. The barrier is the coordination service's (a device collective's gloo set-up times out
    # after 30 s, shorter than a generation); JAX has no public name for it.
    from jax._src import distributed

    if jax.process_index() == 0:
        generate()
    distributed.global_state.client.wait_at_barrier("progress_jax_sim_generated", 3_600_000)
    return generate()


def load_policy(cfg, mesh, init_dir: str = ""):
    """The model to train: base weights, LoRA injected per cfg.lora, and (init_dir) the trained
    parameters an earlier SFT/GRPO run wrote with handover.save_trainable."""
    from progress_jax import lora

    model = load_model(cfg, mesh)
    lora.from_config(model, cfg.lora, seed=cfg.seed, mesh=mesh)
    if init_dir:
        params, _ = handover.load_trainable(init_dir)
        handover.assign(model, params)
    return model


def train_data(cfg, sim_split: str) -> tuple[list[str], str | None, dict | None]:
    """(files, image root, sim paths or None): data.train_files, else the sim's `sim_split` file
    ("sft" or "rl"), generated on first use."""
    files, image_root = list(cfg.data.train_files), cfg.data.image_root or None
    if files:
        return files, image_root, None
    sim = sim_paths(cfg)
    return [sim[sim_split]], sim["train_images"], sim


def _is_chat(path: str) -> bool:
    try:  # the records module's format detection, where it has one
        from data_pipeline.records import file_format
    except ImportError:
        from data_pipeline.pipeline import _is_chat_file

        return _is_chat_file(path)
    return file_format(path) == "chat"


def check_train_files(files, image_root: str | None, key: str = "data.train_files") -> int:
    """Read every record of the training files (and check its images under image_root) before
    any expensive work; a missing or empty file is refused naming the config key. Returns the
    number of samples."""
    from data_pipeline.records import load_chat_records, load_records

    n = 0
    for f in files:
        if not os.path.isfile(f):
            raise InputNotFound(f"config key {key}: no file {f}")
        if f.endswith(".array_record"):
            import grain

            count = len(grain.sources.ArrayRecordDataSource([f]))
        else:
            load = load_chat_records if _is_chat(f) else load_records
            count = len(load(f, image_root))
        if count == 0:
            raise BadInput(f"config key {key}: {f} holds no records")
        n += count
    return n


def check_init_params(directory: str, key: str) -> None:
    if directory and not os.path.isfile(os.path.join(directory, handover.TRAINABLE_FILE)):
        raise handover.not_a_final_dir(directory, handover.TRAINABLE_FILE, key)


def progress_bar(total: int, initial: int = 0, desc: str = "train", enabled: bool = True):
    """A tqdm bar over steps or samples; starts at `initial` when a run resumes. Disabled off process 0."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True)
