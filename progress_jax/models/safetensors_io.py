"""Minimal safetensors reader/writer on NumPy memory maps.

Reading maps the file and hands out zero-copy views, so a loader can send each tensor (or each
device's slice of it) to its device without a full host copy of the checkpoint. bfloat16 is
read and written through ml_dtypes, which the `safetensors` package's NumPy API does not do.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import struct

import ml_dtypes
import numpy as np

from data_pipeline.paths import atomic_output
from progress_jax.errors import BadInput  # a damaged file: one line, a ValueError all the same

DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
NAMES = {v: k for k, v in DTYPES.items()}


INDEX = "model.safetensors.index.json"


def read_header(path: str) -> tuple[dict, int]:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise BadInput(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if 8 + n > size:
            raise BadInput(f"{path}: corrupt or truncated safetensors file (header of {n} bytes, file of {size})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadInput(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise BadInput(f"{path}: corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    return header, 8 + n


def _entry(path: str, name: str, info, data_size: int) -> tuple[np.dtype, list, int, int]:
    """dtype, shape and byte range of one header entry, checked against the data the file holds."""
    try:
        dtype, shape, (a, b) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
    except (KeyError, TypeError, ValueError):
        raise BadInput(f"{path}: tensor {name}: corrupt header entry {info!r}") from None
    if dtype not in DTYPES:
        raise BadInput(f"{path}: tensor {name} has unsupported dtype {dtype}")
    need = int(np.prod(shape)) * DTYPES[dtype].itemsize
    if b - a != need:
        raise BadInput(f"{path}: tensor {name} ({dtype} {shape}) needs {need} bytes but its header gives "
                         f"{b - a}: corrupt header")
    if b > data_size:
        raise BadInput(f"{path}: tensor {name} ({dtype} {shape}) ends at data byte {b}, the file holds "
                         f"{data_size}: truncated file (copy or convert it again)")
    return DTYPES[dtype], shape, a, b


def open_tensors(path: str) -> dict[str, np.ndarray]:
    """name -> read-only memory-mapped array. A truncated file or corrupt header is a ValueError
    naming the file and the tensor."""
    header, start = read_header(path)
    data_size = os.path.getsize(path) - start
    entries = {name: _entry(path, name, info, data_size) for name, info in header.items()}
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    return {name: mm[start + a : start + b].view(dtype).reshape(shape)
            for name, (dtype, shape, a, b) in entries.items()}


def checkpoint_files(directory: str) -> list[str]:
    """The safetensors files of a checkpoint directory: the files its index names, or the
    single-file weights. Refuses a directory holding both (a stale checkpoint beside a new one:
    loaders would disagree on which to read) and an index naming files that are not there."""
    files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
    index = os.path.join(directory, INDEX)
    if os.path.exists(index):
        try:
            with open(index) as f:
                named = sorted(set(json.load(f)["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{index}: not a safetensors index ({type(e).__name__}: {e})") from None
        missing = [n for n in named if n not in files]
        if missing:
            raise FileNotFoundError(f"{index} names files that are not there: {', '.join(missing)}")
        extra = [f for f in files if f not in named]
        if extra:
            kind = ("both single-file weights" if "model.safetensors" in extra
                    else "weight files its index does not name")
            raise ValueError(f"{directory} holds {kind} ({', '.join(extra)}) and sharded weights "
                             f"({INDEX} naming {', '.join(named)}): remove the stale ones")
        return [os.path.join(directory, name) for name in named]
    if not files:
        raise FileNotFoundError(f"no .safetensors files in {directory}")
    return [os.path.join(directory, f) for f in files]


def open_checkpoint(directory: str) -> dict[str, np.ndarray]:
    tensors = {}
    for path in checkpoint_files(directory):
        for name, arr in open_tensors(path).items():
            if name in tensors:
                raise ValueError(f"{directory}: tensor {name} appears in more than one file")
            tensors[name] = arr
    return tensors


def save_file(tensors: dict[str, np.ndarray], path: str, metadata: dict | None = None) -> None:
    header, offset = {}, 0
    arrays = []
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        if arr.dtype not in NAMES:
            raise ValueError(f"tensor {name}: unsupported dtype {arr.dtype}")
        header[name] = {"dtype": NAMES[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        arrays.append(arr)
    if metadata:
        header["__metadata__"] = metadata
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with atomic_output(path, "wb") as f:  # a killed writer leaves no half file under the name
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in arrays:
            f.write(arr.tobytes())


def save_checkpoint(tensors: dict[str, np.ndarray], directory: str, max_shard_bytes: int = 5 * 2**30) -> None:
    """Write one file, or shards plus model.safetensors.index.json when over max_shard_bytes."""
    os.makedirs(directory, exist_ok=True)
    shards, current, size = [], {}, 0
    for name in sorted(tensors):
        nbytes = tensors[name].nbytes
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensors[name]
        size += nbytes
    shards.append(current)
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], os.path.join(directory, "model.safetensors"), meta)
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(directory, fname), meta)
        weight_map.update({name: fname for name in shard})
    total = sum(t.nbytes for t in tensors.values())
    with atomic_output(os.path.join(directory, INDEX)) as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


# Hub weights (safetensors or PyTorch bins, with their indexes) and Orbax `params/`.
_WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json",
                    "params", "adapter_config.json")


def weight_files(directory: str) -> list[str]:
    """Names of the weight files (and Orbax params/) in `directory`."""
    return sorted({os.path.basename(p) for pat in _WEIGHT_PATTERNS for p in glob.glob(os.path.join(directory, pat))})


def refuse_existing_weights(directory: str, overwrite: bool) -> list[str]:
    """FileExistsError naming them if `directory` already holds weights and not `overwrite`;
    returns the weight files present."""
    stale = weight_files(directory) if os.path.isdir(directory) else []
    if stale and not overwrite:
        raise FileExistsError(f"{directory} already holds weights ({', '.join(stale)}): write to another directory, "
                              "or pass --overwrite (overwrite=True) to replace them")
    return stale


def clear_weights(directory: str, overwrite: bool) -> None:
    """Refuse a directory that already holds weights, unless `overwrite`: then every one of them
    goes first, so that no stale shard or index survives beside the new weights."""
    stale = refuse_existing_weights(directory, overwrite)
    os.makedirs(directory, exist_ok=True)
    for name in stale:
        path = os.path.join(directory, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
