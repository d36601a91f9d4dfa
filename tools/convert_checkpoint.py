"""Convert checkpoints between the Hugging Face Hub layout and Orbax (the model family by config.json's
model_type: Qwen2.5-VL).

    python tools/convert_checkpoint.py hub-to-orbax --src HUB_DIR --dst ORBAX_DIR [--dtype bfloat16] [--overwrite]
    python tools/convert_checkpoint.py orbax-to-hub --src ORBAX_DIR --dst HUB_DIR [--dtype bfloat16] [--overwrite]

The Hub side is config.json + safetensors (sharded with an index above --max-shard-gb); the
Orbax side is `params/` + config.json, in the model's own layout (the decoder layers and vision
blocks stacked: `layers/...` [layers, ...]; an Orbax params/ of the older per-layer layout is refused
with a clear error). Without --dtype, tensors keep their stored dtype, so a
round trip is bit-exact. Tokenizer and processor files are copied along when present. A --dst that
already holds weights is refused unless --overwrite, which removes all of them (every shard, index,
params/) before writing; --dst may not be --src.
"""

from __future__ import annotations
if __package__ in (None, ""):  # run as `python tools/X.py`: import this checkout, as `python -m tools.X` does
    import os, sys; sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import glob
import os
import shutil

from data_pipeline.paths import check_outputs

_SIDE_FILES = ("tokenizer*", "vocab.json", "merges.txt", "*preprocessor_config.json", "chat_template*",
               "special_tokens_map.json", "generation_config.json", "added_tokens.json")


def _stored_dtype(src: str):
    from progress_jax.models import safetensors_io

    tensors = safetensors_io.open_checkpoint(src)
    return next(iter(tensors.values())).dtype


def _copy_side_files(src: str, dst: str) -> None:
    for pattern in _SIDE_FILES:
        for path in glob.glob(os.path.join(src, pattern)):
            shutil.copy2(path, dst)


def hub_to_orbax(src: str, dst: str, dtype=None, overwrite: bool = False) -> None:
    from progress_jax.models import families

    family = families.for_path(src)
    dtype = dtype or _stored_dtype(src)
    family.save_orbax(family.load(src, dtype, dtype), dst, overwrite=overwrite)
    _copy_side_files(src, dst)


def orbax_to_hub(src: str, dst: str, dtype=None, max_shard_bytes: int = 5 * 2**30, overwrite: bool = False) -> None:
    from progress_jax.models import families

    family = families.for_path(src)  # the Orbax side keeps the Hub config.json
    family.save_pretrained(family.load_orbax(src, dtype), dst, max_shard_bytes=max_shard_bytes, overwrite=overwrite)
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
    p.add_argument("--overwrite", action="store_true", help="replace the weights already in --dst (all removed first)")
    a = p.parse_args(argv)
    check_outputs({"--dst": a.dst}, {"--src": a.src})
    import jax.numpy as jnp  # imported here: --help and refusals stay fast

    from progress_jax.models.safetensors_io import refuse_existing_weights

    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, None: None}[a.dtype]
    try:
        refuse_existing_weights(a.dst, a.overwrite)  # before loading the model
        if a.direction == "hub-to-orbax":
            hub_to_orbax(a.src, a.dst, dtype, overwrite=a.overwrite)
        else:
            orbax_to_hub(a.src, a.dst, dtype, int(a.max_shard_gb * 2**30), overwrite=a.overwrite)
    except FileExistsError as e:  # --dst holds weights: one line, nothing written
        raise SystemExit(str(e)) from None
    print(f"wrote {a.dst}")


if __name__ == "__main__":
    main()
