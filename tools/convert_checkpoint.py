"""Convert Qwen2.5-VL checkpoints between the Hugging Face Hub layout and Orbax.

    python tools/convert_checkpoint.py hub-to-orbax --src HUB_DIR --dst ORBAX_DIR [--dtype bfloat16]
    python tools/convert_checkpoint.py orbax-to-hub --src ORBAX_DIR --dst HUB_DIR [--dtype bfloat16]

The Hub side is config.json + safetensors (sharded with an index above --max-shard-gb); the
Orbax side is `params/` + config.json. Without --dtype, tensors keep their stored dtype, so a
round trip is bit-exact. Tokenizer and processor files are copied along when present.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil

import jax.numpy as jnp

from progress_jax.models import qwen2_5_vl, safetensors_io

_SIDE_FILES = ("tokenizer*", "vocab.json", "merges.txt", "*preprocessor_config.json", "chat_template*",
               "special_tokens_map.json", "generation_config.json", "added_tokens.json")


def _stored_dtype(src: str):
    tensors = safetensors_io.open_checkpoint(src)
    return next(iter(tensors.values())).dtype


def _copy_side_files(src: str, dst: str) -> None:
    for pattern in _SIDE_FILES:
        for path in glob.glob(os.path.join(src, pattern)):
            shutil.copy2(path, dst)


def hub_to_orbax(src: str, dst: str, dtype=None) -> None:
    model = qwen2_5_vl.from_pretrained(src, dtype=dtype or _stored_dtype(src))
    qwen2_5_vl.save_orbax(model, dst)
    _copy_side_files(src, dst)


def orbax_to_hub(src: str, dst: str, dtype=None, max_shard_bytes: int = 5 * 2**30) -> None:
    model = qwen2_5_vl.load_orbax(src, dtype=dtype)
    qwen2_5_vl.save_pretrained(model, dst, max_shard_bytes=max_shard_bytes)
    _copy_side_files(src, dst)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("direction", choices=["hub-to-orbax", "orbax-to-hub"],
                   help="hub-to-orbax: Hub safetensors -> Orbax params/; orbax-to-hub: the reverse")
    p.add_argument("--src", required=True, help="source checkpoint directory")
    p.add_argument("--dst", required=True, help="destination directory (created)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help="convert the weights to this dtype (default: keep the stored dtype, bit-exact)")
    p.add_argument("--max-shard-gb", type=float, default=5.0,
                   help="orbax-to-hub: largest safetensors file in GiB, sharded with an index above it (default 5)")
    a = p.parse_args(argv)
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, None: None}[a.dtype]
    if a.direction == "hub-to-orbax":
        hub_to_orbax(a.src, a.dst, dtype)
    else:
        orbax_to_hub(a.src, a.dst, dtype, int(a.max_shard_gb * 2**30))
    print(f"wrote {a.dst}")


if __name__ == "__main__":
    main()
