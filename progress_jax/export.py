"""Weights out of a finished run: a merged Hub checkpoint, or a PEFT adapter (see docs/export.md).

A run's `final/` (SFT or GRPO alike) holds `trainable.safetensors` (the LoRA factors, or every
language-model weight for lora.rank = 0) and `trainable.json` (the lora config, the base model
path or preset, the seed); see handover.save_trainable. The base model is rebuilt exactly as
the run built it (loading.load_policy), so a run of the built-in tiny model (random base from
its seed) exports too.

- `export_hf` (a run's final/) and `write_hf` (a model in memory): LoRA folded in (lora.merge),
  config.json (the base's own, rope settings in transformers 4 and 5 spellings) + safetensors (sharded with an index above `max_shard_bytes`) + the base
  checkpoint's tokenizer, processor, chat-template and generation_config files: a directory
  transformers and vLLM load as they are.
- `export_peft`: adapter_config.json + adapter_model.safetensors under PEFT's key names
  (`base_model.model.model.language_model.layers.N.self_attn.q_proj.lora_A.weight`, the module
  names of transformers >= 4.52) for `peft.PeftModel.from_pretrained(base, directory)`.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil

import jax
import ml_collections
import numpy as np
from flax import nnx

from data_pipeline.paths import atomic_output
from data_pipeline.prompts import CHAT_TEMPLATE

log = logging.getLogger(__name__)

# The non-weight files of a Qwen2.5-VL Hub checkpoint that loaders read beside the weights.
SIDE_FILES = ("tokenizer*", "vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json",
              "*preprocessor_config.json", "processor_config.json", "chat_template*", "generation_config.json")
PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
# What an export of the built-in tiny model (no Hub base to copy from) writes beside the weights,
# so that transformers' tokenizer, image processor, chat template and generation config load.
BUILTIN_SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json",
                      "generation_config.json")
# Our per-layer LoRA path -> PEFT's module name (transformers >= 4.52 module tree of
# Qwen2_5_VLForConditionalGeneration). The trained factors are stacked over the decoder layers
# (`layers/self_attn/q_proj/lora_a` [layers, in, r]); per_layer() splits them first.
_LORA_KEY = re.compile(r"^layers/(\d+)/(self_attn|mlp)/(\w+_proj)/lora_(a|b)$")
_STACKED_KEY = re.compile(r"^layers/(?!\d+/)(.+)$")


def run_config(meta: dict, base: str | None = None, dtype: str = "float32") -> ml_collections.ConfigDict:
    """The slice of a job config that loading.load_policy needs, from a run's trainable.json.
    `base` replaces the recorded base model path (a run moved to another machine)."""
    lora = meta.get("lora") or {}
    missing = [k for k in ("rank", "alpha", "targets") if k not in lora]
    if missing:
        raise ValueError(f"trainable.json: key 'lora' lacks {missing} (not written by an SFT or GRPO run?)")
    c = ml_collections.ConfigDict()
    c.seed = int(meta.get("seed", 0))
    c.model = dict(path=base if base is not None else meta.get("model_path", ""),
                   preset=meta.get("model_preset", "tiny"), param_dtype=dtype, compute_dtype=dtype,
                   attention_chunk=0)  # export runs no attention
    c.lora = dict(rank=int(lora["rank"]), alpha=float(lora["alpha"]), dropout=0.0, targets=lora["targets"])
    return c


def _stored_dtype(base: str) -> str:
    """The base checkpoint's weight dtype name ("bfloat16" for the released Qwen models)."""
    from progress_jax.models import safetensors_io

    first = next(iter(safetensors_io.open_checkpoint(base).values()))
    return "bfloat16" if first.dtype.name == "bfloat16" else "float32"


def load_run(final_dir: str, base: str | None = None, dtype: str | None = None):
    """(model with the run's trained parameters, LoRA still separate; meta; its config).
    dtype None: the base checkpoint's stored dtype (float32 for the tiny model)."""
    from progress_jax import loading
    from progress_jax import handover

    meta = handover.read_meta(final_dir)
    cfg = run_config(meta, base)
    if cfg.model.path and not os.path.isdir(cfg.model.path):
        raise FileNotFoundError(f"{os.path.join(final_dir, handover.TRAINABLE_META)}: base model {cfg.model.path!r} "
                                "is not a directory here; pass the base checkpoint with --base")
    with cfg.unlocked():
        cfg.model.param_dtype = cfg.model.compute_dtype = dtype or (
            _stored_dtype(cfg.model.path) if cfg.model.path else "float32")
    model = loading.load_policy(cfg, None, final_dir)
    return model, meta, cfg


def check_out(out: str, overwrite: bool, inputs: dict | None = None, writes: list[str] = ()) -> None:
    """Refuse to write into one of the inputs ({name: directory}: the run's final/, the base
    checkpoint), and, unless `overwrite`, into a directory that already holds weights or any of
    the files `writes` names."""
    from progress_jax.models.safetensors_io import refuse_existing_weights

    for name, path in (inputs or {}).items():
        if path and os.path.realpath(path) == os.path.realpath(out):
            raise ValueError(f"output directory {out} is the {name} ({path}): choose another directory")
    refuse_existing_weights(out, overwrite)
    present = [n for n in writes if os.path.lexists(os.path.join(out, n))]
    if present and not overwrite:
        raise FileExistsError(f"{out} already holds {', '.join(present)}, which the export would replace: "
                              "choose another directory, or pass --overwrite")


def side_files(base_path: str) -> list[str]:
    """The names of the side files an export copies from `base_path`."""
    return sorted({os.path.basename(p) for pattern in SIDE_FILES for p in glob.glob(os.path.join(base_path, pattern))})


def copy_side_files(src: str, dst: str) -> list[str]:
    """Copy the tokenizer / processor / chat template / generation config files of `src`."""
    names = side_files(src)
    for name in names:
        shutil.copy2(os.path.join(src, name), dst)
    return names


def export_hf(final_dir: str, out: str, *, base: str | None = None, dtype: str | None = None,
              max_shard_bytes: int = 5 * 2**30, overwrite: bool = False) -> dict:
    """Merged Hub-layout checkpoint of a run in `out`. Returns {"out", "files", "side_files"}."""
    from progress_jax import handover

    base_path = base if base is not None else handover.read_meta(final_dir).get("model_path", "")
    check_out(out, overwrite, {"run's final directory": final_dir, "base checkpoint": base_path},
              ["config.json", *(side_files(base_path) if base_path else BUILTIN_SIDE_FILES)])
    model, _, cfg = load_run(final_dir, base, dtype)
    return write_hf(model, out, cfg.model.path, max_shard_bytes=max_shard_bytes, overwrite=True)


def write_hf(model, out: str, base_path: str = "", *, max_shard_bytes: int = 5 * 2**30,
             overwrite: bool = False) -> dict:
    """An in-memory model (LoRA folded in here, in place) as a Hub checkpoint in `out`, with the
    side files of `base_path` ("" = the built-in tiny model: its tokenizer.json). Also for a job
    that just trained the model (SFT's train.export_merged)."""
    from progress_jax import lora
    from progress_jax.models import families

    lora.merge(model)
    families.for_model(model.config).save_pretrained(model, out, max_shard_bytes=max_shard_bytes, overwrite=overwrite)
    dtype = jax.tree.leaves(nnx.state(model, nnx.Param))[0].dtype.name
    with atomic_output(os.path.join(out, "config.json")) as f:
        json.dump(hub_config(model.config, base_path, dtype), f, indent=2)
    side = copy_side_files(base_path, out) if base_path else write_builtin_side_files(out, model.config)
    if not any(s.startswith("tokenizer") for s in side):
        log.warning("%s: no tokenizer files copied from the base model %s", out, base_path)
    return {"out": out, "files": sorted(os.listdir(out)), "side_files": side}


def write_builtin_side_files(out: str, model_config) -> list[str]:
    """The built-in tiny model's tokenizer (tokenizer.json + tokenizer_config.json), its chat
    template, image processor settings (data_pipeline.image_processor's) and generation config
    (stop at <|im_end|>), as a Qwen2.5-VL-Instruct Hub checkpoint carries them."""
    from data_pipeline import image_processor
    from data_pipeline.tokenizer import TINY_PATH, load_tokenizer

    tok = load_tokenizer()
    shutil.copy2(TINY_PATH, os.path.join(out, "tokenizer.json"))
    v = model_config.vision
    files = {
        "tokenizer_config.json": {
            "tokenizer_class": "Qwen2Tokenizer", "processor_class": "Qwen2_5_VLProcessor",
            "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None, "unk_token": None,
            "model_max_length": model_config.text.max_position_embeddings, "clean_up_tokenization_spaces": False,
            "errors": "replace", "split_special_tokens": False},
        "preprocessor_config.json": {
            "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
            "min_pixels": 3136, "max_pixels": 12845056, "patch_size": v.patch_size,
            "temporal_patch_size": v.temporal_patch_size, "merge_size": v.spatial_merge_size,
            "image_mean": list(image_processor.CLIP_MEAN), "image_std": list(image_processor.CLIP_STD)},
        "generation_config.json": {"bos_token_id": tok.pad_id, "pad_token_id": tok.pad_id,
                                   "eos_token_id": [tok.eos_id, tok.pad_id]},
    }
    for name, content in files.items():
        with atomic_output(os.path.join(out, name)) as f:
            json.dump(content, f, indent=2)
    with atomic_output(os.path.join(out, "chat_template.jinja")) as f:
        f.write(CHAT_TEMPLATE)
    assert set(files) | {"tokenizer.json", "chat_template.jinja"} == set(BUILTIN_SIDE_FILES)
    return list(BUILTIN_SIDE_FILES)


def hub_config(model_config, base_path: str, dtype: str) -> dict:
    """config.json of an export: the base checkpoint's own when there is one (fields this project
    does not model, e.g. vision_config.tokens_per_second, kept), else ours; the weights' dtype; the
    text rope settings in both spellings the Hub's Qwen2.5-VL configs carry: transformers 5 reads
    `rope_parameters`, 4.x `rope_scaling` + `rope_theta` (top level, or text_config where nested);
    `tie_word_embeddings` in text_config too, where 4.x looks for it."""
    path = os.path.join(base_path, "config.json") if base_path else ""
    if path and os.path.isfile(path):
        with open(path) as f:
            cfg = json.load(f)
    else:
        cfg = model_config.to_hf_dict()
    t = model_config.text
    scaling = {"type": "mrope", "mrope_section": list(t.mrope_section), "rope_type": "default"}
    nested = isinstance(cfg.get("text_config"), dict)
    for d in (cfg, cfg["text_config"]) if nested else (cfg,):
        d.update(rope_scaling=dict(scaling), rope_theta=t.rope_theta)
    (cfg["text_config"] if nested else cfg)["rope_parameters"] = {**scaling, "rope_theta": t.rope_theta}
    if nested and "tie_word_embeddings" in cfg:  # 4.x ties lm_head by the text config's flag (default False)
        cfg["text_config"].setdefault("tie_word_embeddings", cfg["tie_word_embeddings"])
    cfg["torch_dtype"] = cfg["dtype"] = dtype
    return cfg


def peft_name(path: str) -> str:
    """Our LoRA parameter path (`layers/3/self_attn/q_proj/lora_a`) -> PEFT's saved key."""
    m = _LORA_KEY.match(path)
    if m is None:
        raise ValueError(f"LoRA parameter {path!r} is not on a decoder layer projection: PEFT export supports "
                         "the language model's q/k/v/o/gate/up/down projections")
    layer, block, proj, ab = m.groups()
    return f"base_model.model.model.language_model.layers.{layer}.{block}.{proj}.lora_{ab.upper()}.weight"


def _target_modules(modules: list[str]):
    """A regex PEFT full-matches against module names: every layer with the same projections
    gives one short pattern (it must not match the vision tower's mlp.*_proj); else the list."""
    by_layer: dict[str, set] = {}
    for m in modules:
        layer, rest = re.match(r".*\.layers\.(\d+)\.(.*)$", m).groups()
        by_layer.setdefault(layer, set()).add(rest)
    suffixes = set(next(iter(by_layer.values())))
    if any(s != suffixes for s in by_layer.values()):
        return sorted(modules)
    alt = "|".join(re.escape(s) for s in sorted(suffixes))
    layers = "|".join(sorted(by_layer, key=int))
    return rf".*language_model\.layers\.({layers})\.({alt})"


def per_layer(params: dict) -> dict:
    """Trained parameters with the stacked decoder layers split: `layers/self_attn/q_proj/lora_a`
    [layers, in, r] -> `layers/N/self_attn/q_proj/lora_a` [in, r] for each layer N."""
    out = {}
    for k, v in params.items():
        m = _STACKED_KEY.match(k)
        if m is None:
            out[k] = v
        else:
            out.update({f"layers/{i}/{m.group(1)}": v[i] for i in range(v.shape[0])})
    return out


def base_name(model_path: str) -> str | None:
    """The adapter's base_model_name_or_path: the run's base checkpoint, absolute when it is a
    directory here (a relative path would be read from wherever the adapter is loaded); None for
    the built-in tiny model, which has no checkpoint to name."""
    if not model_path:
        return None
    return os.path.abspath(model_path) if os.path.isdir(model_path) else model_path


def peft_adapter(params: dict, meta: dict) -> tuple[dict, dict]:
    """(adapter_config, {PEFT key: array}) from a LoRA run's trained parameters (stacked over the
    decoder layers) and meta: one PEFT tensor per layer and projection.
    PEFT stores lora_A.weight [r, in] and lora_B.weight [out, r]; ours are [in, r] and [r, out]."""
    lora_cfg = meta.get("lora") or {}
    rank = int(lora_cfg.get("rank", 0))
    if rank <= 0:
        raise ValueError("a full-parameter run (lora.rank = 0) has no adapter: export it with --to hf")
    # The tensors decide: a rank in trainable.json that they do not have would make an adapter PEFT cannot load.
    ranks = {v.shape[-1] for k, v in params.items() if k.endswith("lora_a")}
    ranks |= {v.shape[-2] for k, v in params.items() if k.endswith("lora_b")}
    if ranks != {rank}:
        raise ValueError(f"trainable.json says lora.rank {rank}, but the LoRA factors in "
                         f"trainable.safetensors have rank {', '.join(map(str, sorted(ranks))) or 'none'}: "
                         "the two files do not belong together")
    # Layers the targets did not select carry masked-off factors in the stacked tensors: left out.
    selected = re.compile(lora_cfg.get("targets") or ".")
    tensors = {peft_name(k): np.ascontiguousarray(np.asarray(v, np.float32).T) for k, v in per_layer(params).items()
               if selected.search(k.rsplit("/", 1)[0])}
    modules = sorted({k.removeprefix("base_model.model.").rsplit(".lora_", 1)[0] for k in tensors})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name(meta.get("model_path") or ""),
        "r": rank,
        "lora_alpha": float(lora_cfg["alpha"]),
        "lora_dropout": float(lora_cfg.get("dropout", 0.0)),
        "target_modules": _target_modules(modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
    }
    return config, tensors


def export_peft(final_dir: str, out: str, *, overwrite: bool = False) -> dict:
    """PEFT adapter of a LoRA run in `out` (the base model is not needed). Returns {"out", "files"}."""
    from progress_jax.models import safetensors_io
    from progress_jax import handover

    check_out(out, overwrite, {"run's final directory": final_dir})  # the adapter's files count as weights
    params, meta = handover.load_trainable(final_dir)
    config, tensors = peft_adapter(params, meta)
    safetensors_io.clear_weights(out, overwrite)
    safetensors_io.save_file(tensors, os.path.join(out, PEFT_WEIGHTS), {"format": "pt"})
    with atomic_output(os.path.join(out, PEFT_CONFIG)) as f:
        json.dump(config, f, indent=2)
    return {"out": out, "files": sorted(os.listdir(out))}


def hub_api():
    """huggingface_hub.HfApi(), or a clear error when the package is missing (checked before exporting)."""
    try:
        import huggingface_hub
    except ImportError:
        raise ImportError("--push-to-hub needs huggingface_hub: pip install huggingface_hub") from None
    return huggingface_hub.HfApi()


def push_to_hub(directory: str, repo: str, private: bool = False) -> str:
    """Upload an exported directory to the Hub repo `repo` (created if missing). Returns its URL."""
    api = hub_api()
    url = api.create_repo(repo, private=private, exist_ok=True)
    api.upload_folder(folder_path=directory, repo_id=repo, commit_message="Upload from progress_jax tools/export.py")
    return str(url)

