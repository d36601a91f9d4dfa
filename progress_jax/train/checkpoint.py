"""Checkpoints of a train run: a thin wrapper over orbax.checkpoint.CheckpointManager.

Each step directory holds two items: `state`, a pytree of arrays (params or LoRA params,
optimizer state, step, RNG keys), and `extra`, JSON (the data iterator's state, run metadata and
the run's defining config). Orbax writes a step into `<step>.orbax-checkpoint-tmp-*` and renames
it when complete, so a crash mid-write leaves no step directory and the previous step is restored.

Resuming (see docs/reliability.md): a checkpoint written under another defining config (`run_config`:
model, dtypes, LoRA, batch geometry), or whose arrays do not match the state being restored
(another param dtype, LoRA rank, trainable set), is refused naming the keys or arrays. Every
checkpoint stores a checksum of each array's values (`extra`), compared with the arrays read back. A
damaged checkpoint (a data file missing or truncated, or an array whose checksum differs) is named by
step and file or array; `restore_latest` moves it aside to `<step>.damaged` and uses the newest
intact one.

A save that fails for a condition of the disk (full, read-only, forbidden) raises CheckpointWriteFailed,
one line naming the directory, the step and the OS error; the step's partial `<step>.orbax-checkpoint-tmp*`
is left for Orbax to clear at the next start, and the older checkpoints stay as they were (Orbax
deletes old steps only after a new one is complete).
"""
from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax import lax

from progress_jax.errors import UserError, disk_cause

log = logging.getLogger(__name__)

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


# The config keys that define a run: a checkpoint only resumes a run with the same values.
RUN_CONFIG_KEYS = ("model.path", "model.preset", "model.param_dtype", "model.compute_dtype", "lora.rank", "lora.alpha",
                   "lora.targets", "train.init_params", "train.batch_size", "train.micro_batch_size", "grpo.n",
                   "grpo.rollout_batch_size", "grpo.init_lora")


_PATH_KEYS = ("model.path", "train.init_params", "grpo.init_lora")


def run_config(config) -> dict:
    """{key: value} of RUN_CONFIG_KEYS in a job config (keys the job does not have are left out;
    paths resolved, so that `./m` and `m` are the same model)."""
    out = {}
    for key in RUN_CONFIG_KEYS:
        value = config
        for part in key.split("."):
            value = value.get(part) if hasattr(value, "get") else None
        if value is not None:
            out[key] = os.path.realpath(value) if key in _PATH_KEYS and value else value
    return json.loads(json.dumps(out))  # tuples as lists: as read back from JSON


class CheckpointMismatch(UserError, ValueError):
    """The checkpoints were written by a run with another defining config or state layout."""


class CheckpointDamaged(UserError, RuntimeError):
    """A checkpoint step cannot be read back (a file missing, truncated or corrupt)."""

    def __init__(self, step: int, file: str, reason: str, message: str | None = None):
        super().__init__(message or f"checkpoint step {step} is damaged: {file} ({reason})")
        self.step, self.file, self.reason = step, file, reason


class CheckpointWriteFailed(UserError, OSError):
    """A checkpoint could not be written: the disk is full, read-only, or the path forbidden."""


class _DropFailedWrites(logging.Filter):
    """Orbax's background threads log every failed write of a save with its traceback (dozens for one
    full disk), before the save's error reaches the job, which reports it in one line: those records
    are dropped unless the console is verbose (the root logger at INFO, console.setup)."""

    def filter(self, record):
        if record.levelno < logging.ERROR or f"{os.sep}orbax{os.sep}" not in record.pathname \
                or logging.getLogger().isEnabledFor(logging.INFO):
            return True
        error = record.exc_info[1] if record.exc_info else None
        return not ((error is not None and disk_cause(error)) or disk_cause(Exception(record.getMessage()))
                    or _FAILED_WRITES)


# Checkpoint directories whose save failed in this process: the writes still in flight there fail
# later, some with other errors ("cannot schedule new futures after shutdown"); the job is ending.
_FAILED_WRITES: set[str] = set()


_WAY_OUT = ("resume with the checkpoint's values, or train with the new ones in a new workdir (to start from this "
            "run's trained weights: train.init_params=<workdir>/final, or grpo.init_lora for GRPO)")


def _messages(error: BaseException) -> str:
    """The messages of an error, its causes and the errors it groups (TensorStore's detail is inside)."""
    seen, todo, out = set(), [error], []
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        out.append(str(e))
        todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]
    return "\n".join(out)


def _damage(step: int, step_dir: str, error: Exception) -> CheckpointDamaged:
    """The file a read error names (the innermost one inside the step directory; else the array
    being read in its OCDBT database) and why it failed."""
    text = _messages(error)
    files = [f for f in re.findall(r'local file "([^"]+)"', text) if f.startswith(step_dir) and not f.endswith("/")]
    arrays = re.findall(r'Error reading "([^"]+)" in OCDBT database at local file "([^"]+)"', text)
    if files:
        file = files[-1]
    elif arrays:
        file = f"{arrays[-1][1]} (array {arrays[-1][0]})"
    else:
        file = getattr(error, "filename", None) or step_dir
    code = re.search(r"\b(NOT_FOUND|OUT_OF_RANGE|DATA_LOSS|FAILED_PRECONDITION):", text)
    reason = {"NOT_FOUND": "missing", "OUT_OF_RANGE": "truncated", "DATA_LOSS": "corrupt",
              "FAILED_PRECONDITION": "missing, truncated or corrupt data"}.get(
        code.group(1) if code else "", f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}")
    return CheckpointDamaged(step, file, reason)


def _extra_digest(extra: dict) -> str:
    """sha256 of the JSON item's content (the data position, metadata, run config, array checksums)."""
    return hashlib.sha256(json.dumps({k: v for k, v in extra.items() if k != "sha256"}, sort_keys=True).encode()
                          ).hexdigest()


# Step directories being read, or whose read failed, in this process: when one read fails, those
# still in flight fail later, and may be reported before the first failure reaches `_read`.
_READ_DIRS: set[str] = set()


def _about_damage(text: str) -> bool:
    return any(d in text for d in _READ_DIRS)


class _DropAbortedReads(logging.Filter):
    """asyncio's "Task exception was never retrieved" for a read of a damaged checkpoint (logged
    whenever the task is collected, possibly after the job has printed its one-line error)."""

    def filter(self, record):
        message = record.getMessage()
        return not (_READ_DIRS and "exception was never retrieved" in message
                    and _about_damage(message + "".join(map(str, record.exc_info or ()))))


def _quiet_aborted_reads() -> None:
    """When one read of a restore (or one write of a save) fails, Orbax's event loop closes while
    the others are in flight; each of them reports through sys.unraisablehook ("Event loop is
    closed", or its own error) or asyncio's logger when it finishes: dozens of tracebacks, the
    damage already named. Those reports are dropped; any other is shown."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop", False):
        return

    def hook(unraisable):
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            return
        if error is not None and _READ_DIRS and _about_damage(_messages(error)):
            return
        previous(unraisable)

    hook.drops_closed_loop = True
    sys.unraisablehook = hook
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _DropAbortedReads) for f in asyncio_log.filters):  # the hook may be reset (pytest)
        asyncio_log.addFilter(_DropAbortedReads())


def _path_key(path) -> tuple:
    return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _describe(x) -> str:
    return f"{jnp.dtype(x.dtype).name}{list(x.shape)}"


_UNSIGNED = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


def _mix(i, seed: int):
    """A murmur3-style finaliser of uint32 indices: a pseudo-random weight per element."""
    h = i ^ jnp.uint32(seed)
    h = (h ^ (h >> 16)) * jnp.uint32(0x85EBCA6B)
    h = (h ^ (h >> 13)) * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _leaf_checksum(x):
    """Two weighted sums of the array's bit patterns, mod 2^32: exact integer arithmetic, so the
    same on any sharding or process count; every weight is odd, so any changed element changes both."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        u = x.astype(jnp.uint32)
    else:  # 8-byte types become [..., 2] uint32
        u = lax.bitcast_convert_type(x, _UNSIGNED.get(x.dtype.itemsize, jnp.uint32)).astype(jnp.uint32)
    u = u.reshape((1,)) if u.ndim == 0 else u
    index, stride = jnp.zeros(u.shape, jnp.uint32), 1
    for d in reversed(range(u.ndim)):  # the flat index without a reshape (which could reshard)
        index = index + lax.broadcasted_iota(jnp.uint32, u.shape, d) * jnp.uint32(stride % 2**32)
        stride *= u.shape[d]
    return jnp.stack([jnp.sum(u * (_mix(index, seed) | jnp.uint32(1)), dtype=jnp.uint32)
                      for seed in (0x9E3779B9, 0x7F4A7C15)])


_checksums_jit = jax.jit(lambda state: jax.tree.map(_leaf_checksum, state))


def checksums(state) -> dict[str, str]:
    """{'/'-joined array path: 16 hex digits} of a state pytree's values."""
    sums = jax.device_get(_checksums_jit(state))
    return {"/".join(_path_key(p)): "".join(f"{int(v):08x}" for v in np.asarray(c))
            for p, c in jax.tree_util.tree_flatten_with_path(sums)[0]}


def abstract_like(state):
    """Shape/dtype/sharding stand-ins for `state`, the restore target for `Checkpointer.restore`."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


class Checkpointer:
    """Save every `save_every` steps (and whenever forced: at the end, on SIGTERM), keep the
    newest `keep`. Saves are asynchronous unless `async_save=False`; `close()` waits for them."""

    def __init__(self, directory: str, save_every: int, keep: int, async_save: bool = True,
                 run_config: dict | None = None):
        """`run_config`: the run's defining config ({key: value}, see `run_config()`), stored with
        every checkpoint and compared at restore."""
        if save_every < 1 or keep < 1:
            raise ValueError(f"checkpoint save_every and keep must be >= 1, got {save_every} and {keep}")
        self.directory = os.path.abspath(directory)
        self.save_every = save_every
        self.run_config = None if run_config is None else json.loads(json.dumps(run_config))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save)
        # Handlers named per item, so that `extra` and the state's metadata can be read alone.
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers={
            "state": ocp.StandardCheckpointHandler(), "extra": ocp.JsonCheckpointHandler()})
        self._pending: int | None = None  # the step of the save in flight
        self._failed: CheckpointWriteFailed | None = None
        absl_log = logging.getLogger("absl")  # Orbax logs through absl
        if not any(isinstance(f, _DropFailedWrites) for f in absl_log.filters):
            absl_log.addFilter(_DropFailedWrites())
        _quiet_aborted_reads()  # a failed write aborts the others in flight as a failed read does

    @contextlib.contextmanager
    def _writing(self, step: int | None):
        """A disk condition while writing `step` becomes CheckpointWriteFailed (raised again by every
        later save, wait or close: one report); the manager is closed, its threads stopped."""
        if self._failed is not None:
            raise self._failed
        try:
            yield
        except Exception as e:
            cause = disk_cause(e)
            if cause is None:
                raise
            _FAILED_WRITES.add(self.directory)
            kept = [int(n) for n in os.listdir(self.directory) if n.isdigit()]
            self._failed = CheckpointWriteFailed(
                f"cannot write {'a checkpoint' if step is None else f'checkpoint step {step}'} in {self.directory}: "
                f"{os.strerror(cause[0])} "
                f"({errno.errorcode.get(cause[0], cause[0])}); "
                + (f"step {max(kept)}, the newest complete checkpoint, is left as it was" if kept else
                   "no complete checkpoint there yet") + "; free the space (or fix the permissions) and rerun "
                "the same command to resume")
            with contextlib.suppress(Exception):
                self._manager.close()
            raise self._failed from e

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
        extra = _encode({"data": data_state, "metadata": metadata or {}, "run_config": self.run_config,
                         "checksums": checksums(state)})
        extra["sha256"] = _extra_digest(extra)
        with self._writing(self._pending):  # the previous save's error surfaces here
            self._manager.wait_until_finished()
        self._pending = step
        with self._writing(step):
            return self._manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra)), force=True)

    def restore(self, step: int | None, abstract_state):
        """(state, data_state, metadata) of `step` (None: the newest intact one, see restore_latest).
        `abstract_state` is a pytree of jax.ShapeDtypeStruct, with `sharding` set to restore straight
        onto a mesh (see `abstract_like`). Raises CheckpointMismatch or CheckpointDamaged."""
        if step is None:
            found = self.restore_latest(abstract_state)
            if found is None:
                raise FileNotFoundError(f"no checkpoint in {self.directory}")
            return found[1:]
        if step not in self._manager.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory} "
                                    f"(steps present: {self.all_steps()})")
        return self._read(step, abstract_state)

    def restore_latest(self, abstract_state):
        """(step, state, data_state, metadata) of the newest intact checkpoint, or None when there is
        none. Damaged newer ones are logged by step and file and moved aside to `<step>.damaged`;
        if every one is damaged, CheckpointDamaged names them all and nothing is moved."""
        damaged = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                found = (step, *self._read(step, abstract_state))
            except CheckpointDamaged as e:
                damaged.append(e)
                continue
            for e in damaged:
                moved = self._move_aside(e.step)
                log.warning("%s: %s; moved to %s, resuming from step %d", self.directory, e, moved, step)
            return found
        if damaged:
            listed = "; ".join(f"step {e.step}: {e.file} ({e.reason})" for e in damaged)
            raise CheckpointDamaged(damaged[0].step, damaged[0].file, damaged[0].reason, message=(
                f"no intact checkpoint in {self.directory}: {listed}. Nothing was moved: repair them, or move "
                f"{self.directory} aside to start over"))
        return None

    def _read(self, step: int, abstract_state):
        step_dir = os.path.join(self.directory, str(step))
        _quiet_aborted_reads()
        _READ_DIRS.add(step_dir)
        try:
            extra = self._manager.restore(step, args=ocp.args.Composite(extra=ocp.args.JsonRestore())).extra
            if "sha256" in extra and extra["sha256"] != _extra_digest(extra):
                raise CheckpointDamaged(step, f"{step_dir}/extra/metadata", "its content does not match its checksum")
            extra = _decode(extra)
            saved = self._manager.item_metadata(step)["state"]
            if saved is None:
                raise FileNotFoundError(f'local file "{step_dir}/state/_METADATA" is unreadable')
        except CheckpointDamaged:
            raise
        except Exception as e:  # noqa: BLE001 -- any failure to read these small files is damage
            raise _damage(step, step_dir, e) from e
        self._check_run_config(step, extra.get("run_config"))
        self._check_layout(step, saved, abstract_state)
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        except Exception as e:
            if step_dir not in str(e) and not isinstance(e, (OSError, json.JSONDecodeError, UnicodeDecodeError)):
                raise  # not a file of this checkpoint (e.g. out of memory): not damage
            raise _damage(step, step_dir, e) from e
        _READ_DIRS.discard(step_dir)  # read whole: any later report about it is news
        self._check_sums(step, step_dir, extra.get("checksums"), out.state)
        return out.state, extra["data"], extra["metadata"]

    def _check_sums(self, step: int, step_dir: str, saved: dict | None, state) -> None:
        """The restored arrays against the checksums written with them (bytes flipped in a data file
        can decode to other numbers without any read error)."""
        if saved is None:
            log.warning("%s: checkpoint step %d records no checksums (written by an older version): not verified",
                        self.directory, step)
            return
        bad = [k for k, v in checksums(state).items() if saved.get(k) != v]
        if bad:
            raise CheckpointDamaged(step, f"{step_dir}/state/ (array {bad[0]}"
                                    + (f" and {len(bad) - 1} more)" if len(bad) > 1 else ")"),
                                    "array data does not match its checksum")

    def _check_run_config(self, step: int, saved: dict | None) -> None:
        if self.run_config is None:
            return
        if saved is None:
            log.warning("%s: checkpoint step %d records no run config (written by an older version): not compared",
                        self.directory, step)
            return
        diff = [f"{k}: {saved.get(k, '(unset)')!r} in the checkpoint, {self.run_config.get(k, '(unset)')!r} now"
                for k in sorted(set(saved) | set(self.run_config)) if saved.get(k) != self.run_config.get(k)]
        if diff:
            raise CheckpointMismatch(f"{self.directory} holds checkpoints (step {step}) of a run with another config: "
                                     + "; ".join(diff) + f". To go on: {_WAY_OUT}")

    def _check_layout(self, step: int, saved_tree, abstract_state) -> None:
        """Shapes and dtypes on disk against the state to restore (Orbax would cast a dtype silently)."""
        saved = {_path_key(p): x for p, x in jax.tree_util.tree_flatten_with_path(saved_tree)[0]}
        want = {_path_key(p): x for p, x in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
        diff = []
        for path, x in sorted(want.items(), key=lambda kv: kv[0][:1] != ("params",)):  # parameters first
            if path in saved and not jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
                old = saved[path]
                if tuple(old.shape) != tuple(x.shape) or jnp.dtype(old.dtype) != jnp.dtype(x.dtype):
                    diff.append(f"{'/'.join(path)}: {_describe(old)} in the checkpoint, {_describe(x)} now")
        trained = [{p[1:] for p in tree if p[:1] == ("params",)} for tree in (saved, want)]
        diff += [f"params/{'/'.join(p)}: only in the checkpoint" for p in sorted(trained[0] - trained[1])]
        diff += [f"params/{'/'.join(p)}: not in the checkpoint" for p in sorted(trained[1] - trained[0])]
        if diff:
            shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
            raise CheckpointMismatch(f"{self.directory}: checkpoint step {step} does not fit this run's state "
                                     f"({len(diff)} arrays differ: {shown}). To go on: {_WAY_OUT}")

    def _move_aside(self, step: int) -> str:
        """`<step>` -> `<step>.damaged` (kept for inspection; Orbax ignores it). Process 0 renames."""
        src = os.path.join(self.directory, str(step))
        dst, n = src + ".damaged", 1
        while os.path.exists(dst):
            dst, n = f"{src}.damaged{n}", n + 1
        if jax.process_index() == 0:
            os.rename(src, dst)
        self._manager.reload()
        return dst

    def wait(self):
        with self._writing(self._pending):
            self._manager.wait_until_finished()

    def close(self):
        if self._failed is not None:
            return  # closed when the write failed
        with self._writing(self._pending):
            self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
