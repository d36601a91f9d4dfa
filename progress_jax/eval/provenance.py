"""What made a predictions file: the model weights (a hash of their files, or the random preset
and its seed), the trained weights (the sha256 of trainable.safetensors), the mode, the prompt
layout, the image pixel bounds and the sampling settings. Every line the eval job writes carries
`made_by`, a digest of these; `<out_dir>/provenance.json` holds the description. A resume into a
file with lines of another `made_by` is refused (or, with eval.overwrite, the file starts anew)."""
from __future__ import annotations

import hashlib
import json
import os

from data_pipeline.jsonl import write_text
from progress_jax import handover
from progress_jax.errors import UserError

PROVENANCE_FILE = "provenance.json"


class PredictionsMismatch(UserError):
    """The predictions file holds answers of another model or other settings."""


def model_identity(config) -> dict:
    """The base model's weights: a sha256 over the files of model.path, or the preset and seed of
    the random model."""
    path = config.model.path
    if not path:
        return {"preset": config.model.preset, "seed": int(config.seed)}
    files = sorted(n for n in os.listdir(path) if not n.startswith(".") and os.path.isfile(os.path.join(path, n)))
    h = hashlib.sha256()
    for name in files:
        h.update(f"{name}\0{handover.file_sha256(os.path.join(path, name))}\0".encode())
    return {"path": os.path.realpath(path), "files_sha256": h.hexdigest()}


def trained_identity(directory: str) -> dict:
    return {"path": os.path.realpath(directory),
            "sha256": handover.file_sha256(os.path.join(directory, handover.TRAINABLE_FILE))}


def describe(config, weights: dict, blank_observation: bool = False) -> dict:
    """The provenance of predictions made with `config` (eval-style) by a model of identity `weights`
    (blank_observation: the ablation that greys every observation, named only when on)."""
    s = config.sampling
    out = {"weights": weights, "mode": config.data.mode, "prompt": config.data.prompt,
           "pixels": [int(config.data.min_pixels), int(config.data.max_pixels)],
           "sampling": {"max_new_tokens": int(s.max_new_tokens), "temperature": float(s.temperature),
                        "top_p": float(s.top_p), "top_k": int(s.top_k)}}
    if blank_observation:
        out["observation"] = "blank"
    return out


def _without_paths(value):
    """Paths name where the weights are, not what they are: left out of the digest (a moved model is the same)."""
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items() if k != "path"}
    return value


def digest(description: dict) -> str:
    return hashlib.sha256(json.dumps(_without_paths(description), sort_keys=True).encode()).hexdigest()[:16]


def _differences(old: dict, new: dict) -> str:
    out = []
    for key in sorted(set(old) | set(new)):
        if _without_paths(old.get(key)) != _without_paths(new.get(key)):
            out.append(f"{key}: {json.dumps(old.get(key))} then, {json.dumps(new.get(key))} now")
    return "; ".join(out)


def check_resume(out_dir: str, lines, description: dict, overwrite: bool) -> bool:
    """Whether the predictions `lines` (objects already in out_dir's predictions file) may be resumed
    by a run of `description`; False (start anew) only with `overwrite`. Raises PredictionsMismatch."""
    made_by = digest(description)
    foreign = [obj for obj in lines if obj.get("made_by") != made_by]
    if not foreign:
        return True
    if overwrite:
        return False
    try:
        with open(os.path.join(out_dir, PROVENANCE_FILE)) as f:
            old = json.load(f)
    except (OSError, ValueError):
        old = {}
    if any("made_by" not in obj for obj in foreign):
        why = "by a model and settings it does not record (no made_by field)"
    elif old.get("made_by") == foreign[0]["made_by"]:
        why = f"with other weights or settings ({_differences(old['description'], description)})"
    else:
        why = f"by another model or settings (made_by {foreign[0]['made_by']}, this run {made_by})"
    raise PredictionsMismatch(f"{out_dir}/predictions.jsonl holds {len(foreign)} predictions made {why}; evaluate "
                              "into another eval.out_dir, or pass --config.eval.overwrite=True to replace them")


def write(out_dir: str, description: dict) -> None:
    write_text(os.path.join(out_dir, PROVENANCE_FILE),
               json.dumps({"made_by": digest(description), "description": description}, indent=2) + "\n")
