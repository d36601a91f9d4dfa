"""Device mesh, parameter specs from a model family's partition rules, and activation constraints.

Mesh axes: `data` (pure data parallel), `fsdp` (data parallel with parameters sharded), `tensor`
(Megatron-style: column-parallel in-projections, row-parallel out-projections). A dimension
that a mesh axis does not divide stays replicated on that axis, so the same rules serve the
tiny test model and the 3B.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")  # activations' batch dimension is split over both data axes


@dataclass(frozen=True)
class PartitionRules:
    """A model family's partition rules: (regex on the '/'-joined parameter path, PartitionSpec)
    pairs, first match wins; `stacked`: path prefixes of stacked layers (parameters with a leading
    layer axis, scanned over), which get no mesh axis on that leading axis; the rule's spec applies
    to the dimensions after it."""
    rules: tuple[tuple[str, P], ...]
    stacked: tuple[str, ...] = ()

    def stacked_prefix(self, path: str) -> str | None:
        """The stacked prefix the '/'-joined parameter path starts with, None if it is not stacked."""
        return next((prefix for prefix in self.stacked if path.startswith(prefix + "/")), None)

    def is_stacked(self, path: str) -> bool:
        return self.stacked_prefix(path) is not None


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh; one axis may be -1 to take the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError("mesh: at most one of data/fsdp/tensor may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh: {len(devices)} devices not divisible by {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh: data*fsdp*tensor = {int(np.prod(sizes))} but there are {len(devices)} devices")
    return Mesh(np.array(devices).reshape(sizes), AXES)


def spec_for(path: str, shape: tuple[int, ...], mesh: Mesh, rules: PartitionRules, drop: tuple[str, ...] = ()) -> P:
    """The spec of parameter `path` by the model family's `rules` (e.g. model.partition_rules);
    `drop`: mesh axes that split no parameter (replicated along them)."""
    for pattern, spec in rules.rules:
        if re.search(pattern, path):
            break
    else:
        raise ValueError(f"no partition rule for parameter {path}")
    if rules.is_stacked(path):
        spec = (None, *spec)
    spec = tuple(spec) + (None,) * (len(shape) - len(spec))
    # Replicate along any axis that does not divide its dimension.
    fitted = [ax if ax is None or (ax not in drop and dim % mesh.shape[ax] == 0) else None
              for ax, dim in zip(spec, shape)]
    return P(*fitted)


def path_str(path) -> str:
    """'/'-joined parameter path from nnx flat-state tuples or jax key paths (Variable wrappers dropped)."""
    parts = []
    for p in path:
        p = getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))
        if p not in ("value", ".value", "raw_value"):
            parts.append(str(p))
    return "/".join(parts)


def param_shardings(abstract_tree, mesh: Mesh, rules: PartitionRules, drop: tuple[str, ...] = ()):
    """NamedShardings for a pytree of arrays / ShapeDtypeStructs keyed by parameter paths; `drop`
    as for spec_for (the rollout engine's decode layout drops fsdp)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: NamedSharding(mesh, spec_for(path_str(path), tuple(x.shape), mesh, rules, drop)), abstract_tree
    )


def batch_shards(mesh: Mesh) -> int:
    """Batch shards (data x fsdp of the whole mesh): the row groups a global batch splits into.
    Every process holds the whole global host batch (docs/multihost.md)."""
    return int(np.prod([mesh.shape[a] for a in BATCH]))


def batch_sharding(mesh: Mesh, ndim: int, batch_axis: int = 0) -> NamedSharding:
    spec = [None] * ndim
    spec[batch_axis] = BATCH
    return NamedSharding(mesh, P(*spec))


def constrain_batch(x, mesh: Mesh | None, batch_axis: int = 0):
    """Pin an activation's batch dimension to the data axes (no-op without a mesh)."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, batch_sharding(mesh, x.ndim, batch_axis))
