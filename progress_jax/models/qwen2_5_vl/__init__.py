"""Flax NNX Qwen2.5-VL (images only) that loads the Hugging Face weights.

    from progress_jax.models import qwen2_5_vl
    model = qwen2_5_vl.from_pretrained(path, dtype=jnp.bfloat16, mesh=None)
    logits = model(input_ids, attention_mask=..., pixel_values=..., image_grid_thw=...)
"""

import jax.numpy as jnp

from .config import Qwen25VLConfig, TextConfig, VisionConfig, preset, qwen2_5_vl_3b, qwen2_5_vl_7b, tiny
from . import family
from .model import Qwen25VL
from .positions import get_rope_index, model_inputs, vision_inputs
from .weights import from_pretrained, load_orbax, save_orbax, save_pretrained, to_hf_tensors


def init(config: Qwen25VLConfig, seed: int = 0, dtype=jnp.float32, param_dtype=jnp.float32) -> Qwen25VL:
    """A randomly initialised model (tests, benchmarks, the built-in tiny default)."""
    return family.build(config, seed, dtype, param_dtype)


__all__ = [
    "Qwen25VL", "Qwen25VLConfig", "TextConfig", "VisionConfig", "from_pretrained", "save_pretrained", "load_orbax", "save_orbax",
    "to_hf_tensors", "get_rope_index", "model_inputs", "vision_inputs", "init", "preset", "qwen2_5_vl_3b", "qwen2_5_vl_7b", "tiny",
]
