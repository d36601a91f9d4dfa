"""The processes and devices of a job: jax.distributed start-up across processes, the mesh."""

from __future__ import annotations

import logging
import os

import jax

from progress_jax import sharding

log = logging.getLogger(__name__)


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
