"""Weight I/O between Hugging Face safetensors checkpoints and the NNX model.

Reads the Hub key layout (`visual.*`, `model.*`, optional `lm_head.weight`) and the
transformers-5 layout (`model.visual.*`, `model.language_model.*`); writes the Hub layout.
PyTorch Linear weights are [out, in]; ours are [in, out]. The Conv3d patch embedding
[D, C, T, p, p] is the linear map [C*T*p*p, D].
"""

from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_pipeline.paths import atomic_output

from ... import sharding as shd
from .. import safetensors_io
from .config import Qwen25VLConfig
from .model import Qwen25VL

_RENAMES = (
    (r"^model\.visual\.", "visual."),
    (r"^model\.language_model\.", "model."),
    (r"^model\.", ""),
    (r"\.merger\.mlp\.0\.", ".merger.fc1."),
    (r"\.merger\.mlp\.2\.", ".merger.fc2."),
    (r"\.patch_embed\.proj\.", ".patch_embed."),
)


def _to_path(name: str) -> tuple:
    for pat, rep in _RENAMES:
        name = re.sub(pat, rep, name)
    return tuple(int(p) if p.isdigit() else p for p in name.split("."))


def _hf_name(path: tuple) -> str:
    """Our parameter path -> Hub-layout name."""
    s = ".".join(str(p) for p in path)
    if s == "embed_tokens":
        return "model.embed_tokens.weight"
    s = re.sub(r"\.kernel$", ".weight", s)
    s = s.replace("merger.fc1.", "merger.mlp.0.").replace("merger.fc2.", "merger.mlp.2.")
    s = s.replace("patch_embed.weight", "patch_embed.proj.weight")
    if s.startswith("visual.") or s.startswith("lm_head."):
        return s
    return "model." + s


def abstract_model(config: Qwen25VLConfig, dtype=jnp.float32, param_dtype=jnp.float32) -> Qwen25VL:
    return nnx.eval_shape(lambda: Qwen25VL(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0)))


def _hf_views(path: tuple, tensor: np.ndarray, config: Qwen25VLConfig) -> np.ndarray:
    """Lazy view of a Hub tensor in our layout (no copy of the memory map)."""
    if path == ("visual", "patch_embed", "kernel"):
        return tensor.reshape(tensor.shape[0], -1).T
    if path[-1] == "kernel":
        return tensor.T
    return tensor


def _stacked_prefix(path: tuple, model) -> int:
    """Length of the stacked-layer prefix a Hub path starts with (`layers`, `visual/blocks`,
    followed by the layer number), 0 if none."""
    for prefix in model.partition_rules.stacked:
        parts = tuple(prefix.split("/"))
        if path[:len(parts)] == parts and len(path) > len(parts) and isinstance(path[len(parts)], int):
            return len(parts)
    return 0


def _our_path(name: str, flat: dict, model) -> tuple[tuple, int | None]:
    """Hub tensor name -> (our parameter path, layer number within a stacked module or None)."""
    path = _to_path(name)
    if path == ("embed_tokens", "weight"):
        return ("embed_tokens",), None
    n = _stacked_prefix(path, model)
    layer = path[n] if n else None
    if n:
        path = path[:n] + path[n + 1:]
    if path[-1] == "weight" and path[:-1] + ("kernel",) in flat:
        path = path[:-1] + ("kernel",)
    return path, layer


def _per_layer(path: tuple, model) -> int:
    """Where the layer number goes in the Hub name of a stacked parameter path (0: not stacked)."""
    prefix = model.partition_rules.stacked_prefix("/".join(str(p) for p in path))
    return 0 if prefix is None else len(prefix.split("/"))


def load_state(model_abstract: Qwen25VL, tensors: dict[str, np.ndarray], mesh=None, source: str = "checkpoint"):
    """Place each Hub tensor straight onto its device(s) in the abstract model's state. Per-layer
    Hub tensors (`model.layers.N.*`, `visual.blocks.N.*`) land in their stacked parameter
    [layers, ...]: each device's shard is assembled from the memory-mapped tensors of its layers,
    converted to the parameter dtype piece by piece (no full float32 copy)."""
    config = model_abstract.config
    graphdef, abs_state = nnx.split(model_abstract)
    flat = dict(nnx.to_flat_state(abs_state))
    by_path, unexpected = {}, []
    for name, arr in tensors.items():
        path, layer = _our_path(name, flat, model_abstract)
        var = flat.get(path)
        n = _per_layer(path, model_abstract)
        if var is not None and (layer is None) == (n == 0) and (layer is None or 0 <= layer < var.shape[0]):
            by_path.setdefault(path, {})[layer] = (name, arr)
        else:
            unexpected.append(f"  unexpected: {name} {list(arr.shape)}")
    missing, wrong = [], []
    for path, var in flat.items():
        expected = tuple(var.get_value().shape)
        n = _per_layer(path, model_abstract)
        layers = list(range(expected[0])) if n else [None]
        if n:
            expected = expected[1:]
        got = by_path.get(path, {})
        for layer in layers:
            if layer not in got:
                missing.append(f"  missing: {_hf_name(_with_layer(path, n, layer))} expected "
                               f"{list(_hf_shape(path, expected, config))}")
                continue
            name, arr = got[layer]
            if tuple(_hf_views(path, arr, config).shape) != expected:
                wrong.append(f"  wrong shape: {name} expected {list(_hf_shape(path, expected, config))} "
                             f"found {list(arr.shape)}")
    if missing or unexpected or wrong:
        raise ValueError(f"{source}: weights do not match the config:\n" + "\n".join(missing + wrong + unexpected))

    for path, var in flat.items():
        shape, dtype = tuple(var.get_value().shape), var.get_value().dtype
        got = by_path[path]
        if _per_layer(path, model_abstract):
            views = [_hf_views(path, got[i][1], config) for i in range(shape[0])]

            def piece(idx, views=views, d=dtype):
                return np.stack([np.asarray(views[i][idx[1:]], dtype=d) for i in range(len(views))[idx[0]]])
        else:
            view = _hf_views(path, got[None][1], config)

            def piece(idx, v=view, d=dtype):
                return np.asarray(v[idx], dtype=d)
        if mesh is None:
            sh = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        else:
            sh = jax.sharding.NamedSharding(
                mesh, shd.spec_for(shd.path_str(path), shape, mesh, model_abstract.partition_rules))
        var.set_value(jax.make_array_from_callback(shape, sh, piece))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _with_layer(path: tuple, n: int, layer) -> tuple:
    """A stacked parameter path with the layer number put back after its prefix (Hub naming)."""
    return path if not n else path[:n] + (layer,) + path[n:]


def _hf_shape(path, ours, config):
    if path == ("visual", "patch_embed", "kernel"):
        v = config.vision
        return (ours[1], v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
    if path[-1] == "kernel":
        return ours[::-1]
    return ours


def from_pretrained(path: str, dtype=jnp.float32, compute_dtype=None, mesh=None) -> Qwen25VL:
    """Load a Hub checkpoint directory (config.json + safetensors). `dtype` is the parameter dtype;
    `compute_dtype` defaults to it. With a mesh, every tensor lands directly in its sharding."""
    config = Qwen25VLConfig.from_json(path)
    abstract = abstract_model(config, dtype=compute_dtype or dtype, param_dtype=dtype)
    tensors = safetensors_io.open_checkpoint(path)
    return load_state(abstract, tensors, mesh=mesh, source=path)


def to_hf_tensors(model: Qwen25VL, dtype=None) -> dict[str, np.ndarray]:
    """Hub-layout tensors of a model (LoRA must be merged first); stacked layers come out one
    tensor per layer (`model.layers.N.*`, `visual.blocks.N.*`)."""
    config = model.config
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if path[-1] in ("lora_a", "lora_b"):
            raise ValueError("model holds LoRA factors: merge them first (progress_jax.lora.merge)")
        arr = np.asarray(jax.device_get(var.get_value()))
        if dtype is not None:
            arr = arr.astype(dtype)
        n = _per_layer(path, model)
        for layer, a in (enumerate(arr) if n else [(None, arr)]):
            if path == ("visual", "patch_embed", "kernel"):
                a = a.T.reshape(_hf_shape(path, a.shape, config))
            elif path[-1] == "kernel":
                a = a.T
            out[_hf_name(_with_layer(path, n, layer))] = np.ascontiguousarray(a)
    return out


def _write_config(cfg: dict, directory: str) -> None:
    with atomic_output(os.path.join(directory, "config.json")) as f:
        json.dump(cfg, f, indent=2)


def save_pretrained(model: Qwen25VL, directory: str, dtype=None, max_shard_bytes: int = 5 * 2**30,
                    overwrite: bool = False) -> None:
    """Write config.json + Hub-layout safetensors that transformers loads. A directory that
    already holds weights is refused unless `overwrite` (which removes them all first)."""
    tensors = to_hf_tensors(model, dtype)
    safetensors_io.clear_weights(directory, overwrite)
    safetensors_io.save_checkpoint(tensors, directory, max_shard_bytes)
    cfg = model.config.to_hf_dict()
    cfg["torch_dtype"] = next(iter(tensors.values())).dtype.name
    _write_config(cfg, directory)


def save_orbax(model: Qwen25VL, directory: str, overwrite: bool = False) -> None:
    """Parameters as an Orbax checkpoint (`params/`) plus the Hub-style config.json beside it; the
    same overwrite rule as save_pretrained."""
    import orbax.checkpoint as ocp

    directory = os.path.abspath(directory)
    safetensors_io.clear_weights(directory, overwrite)
    state = nnx.state(model, nnx.Param)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(os.path.join(directory, "params"), state)
    _write_config(model.config.to_hf_dict(), directory)


def _refuse_per_layer_layout(metadata, directory: str) -> None:
    """A clear error for an Orbax params/ written before the layers were stacked (scan)."""
    tree = getattr(metadata, "tree", metadata)
    layers = tree.get("layers") if hasattr(tree, "get") else None
    if hasattr(layers, "keys") and any(str(k).isdigit() for k in layers.keys()):
        raise ValueError(f"{directory}/params holds one entry per decoder layer (layers/0/...): it was written by a "
                         "progress_jax before the decoder layers were stacked (layers/... [layers, ...]); "
                         "convert it with that version to a Hub checkpoint (tools/convert_checkpoint.py "
                         "orbax-to-hub) and load that")


def load_orbax(directory: str, dtype=None, compute_dtype=None, mesh=None) -> Qwen25VL:
    """Inverse of save_orbax; dtype None keeps the stored parameter dtype."""
    import orbax.checkpoint as ocp

    directory = os.path.abspath(directory)
    params = os.path.join(directory, "params")
    config = Qwen25VLConfig.from_json(directory)
    with ocp.StandardCheckpointer() as ckpt:
        if dtype is None:
            dtype = jax.tree.leaves(ckpt.metadata(params).item_metadata)[0].dtype
        model = abstract_model(config, dtype=compute_dtype or dtype, param_dtype=dtype)
        graphdef, state = nnx.split(model)
        _refuse_per_layer_layout(ckpt.metadata(params).item_metadata, directory)
        if mesh is not None:
            shardings = shd.param_shardings(state, mesh, model.partition_rules)
        else:
            shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), state)
        target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
        restored = ckpt.restore(params, target)
    return nnx.merge(graphdef, restored)
