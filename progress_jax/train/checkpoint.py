"""Checkpoints of a train run: a thin wrapper over orbax.checkpoint.CheckpointManager.

Each step directory holds two items: `state`, a pytree of arrays (params or LoRA params,
optimizer state, step, RNG keys), and `extra`, JSON (the data iterator's state and run
metadata). Orbax writes a step into `<step>.orbax-checkpoint-tmp-*` and renames it when
complete, so a crash mid-write leaves no step directory and the previous step is restored.
"""
from __future__ import annotations

import base64
import os

import jax
import orbax.checkpoint as ocp

# JSON cannot hold bytes (Grain's DataLoader iterator state is bytes): stored as base64 under this key.
_BYTES_KEY = "__bytes_base64__"


def _encode(value):
    if isinstance(value, bytes):
        return {_BYTES_KEY: base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def _decode(value):
    if isinstance(value, dict):
        if set(value) == {_BYTES_KEY}:
            return base64.b64decode(value[_BYTES_KEY])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def abstract_like(state):
    """Shape/dtype/sharding stand-ins for `state`, the restore target for `Checkpointer.restore`."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


class Checkpointer:
    """Save every `save_every` steps (and whenever forced: at the end, on SIGTERM), keep the
    newest `keep`. Saves are asynchronous unless `async_save=False`; `close()` waits for them."""

    def __init__(self, directory: str, save_every: int, keep: int, async_save: bool = True):
        if save_every < 1 or keep < 1:
            raise ValueError(f"checkpoint save_every and keep must be >= 1, got {save_every} and {keep}")
        self.directory = os.path.abspath(directory)
        self.save_every = save_every
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state, data_state=None, metadata: dict | None = None,
             force: bool = False) -> bool:
        """Save `state` (pytree of arrays) and JSON extras at `step` if it is a multiple of
        `save_every` or `force`; a step already on disk is not written again. True if saved."""
        if not force and step % self.save_every:
            return False
        if step in self._manager.all_steps():
            return False
        extra = _encode({"data": data_state, "metadata": metadata or {}})
        return self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra)), force=True)

    def restore(self, step: int | None, abstract_state):
        """(state, data_state, metadata) of `step` (None: the latest). `abstract_state` is a
        pytree of jax.ShapeDtypeStruct, with `sharding` set to restore straight onto a mesh
        (see `abstract_like`)."""
        step = self.latest_step() if step is None else step
        if step is None or step not in self._manager.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory} "
                                    f"(steps present: {self.all_steps()})")
        out = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), extra=ocp.args.JsonRestore()))
        extra = _decode(out.extra)
        return out.state, extra["data"], extra["metadata"]

    def wait(self):
        self._manager.wait_until_finished()

    def close(self):
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
