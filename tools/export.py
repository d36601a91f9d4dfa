"""Export a finished SFT or GRPO run: a merged Hub checkpoint, or a PEFT adapter.

    python tools/export.py RUN/final --to hf OUT [--dtype bfloat16] [--max-shard-gb 5] [--overwrite]
    python tools/export.py RUN/final --to peft OUT
    python tools/export.py RUN/final --to hf OUT --push-to-hub user/progresslm-3b-sft

`--to hf`: LoRA folded into the base weights (or the full weights of a lora.rank = 0 run),
config.json + safetensors (sharded with model.safetensors.index.json above --max-shard-gb), and
the base checkpoint's tokenizer, processor, chat template and generation_config: a directory
that transformers (Qwen2_5_VLForConditionalGeneration.from_pretrained) and vLLM load as it is.
`--to peft`: adapter_config.json + adapter_model.safetensors for peft.PeftModel.from_pretrained
(LoRA runs only). The base model is the one recorded in RUN/final/trainable.json (--base
overrides it); a run of the built-in tiny model exports with its preset's config. See docs/export.md.
"""
from __future__ import annotations

if __package__ in (None, ""):  # run as `python tools/X.py`: import this checkout, as `python -m tools.X` does
    import os, sys; sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import os
import sys

from progress_jax.errors import UserError, disk_error  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/export.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("final_dir", metavar="RUN/final",
                   help="a run's final/ directory (trainable.safetensors + trainable.json), from SFT or GRPO")
    p.add_argument("--to", nargs=2, metavar=("FORMAT", "OUT"), required=True,
                   help="FORMAT hf (merged Hub checkpoint) or peft (LoRA adapter), written into directory OUT")
    p.add_argument("--base", default=None,
                   help="base Hub checkpoint directory (default: the model path recorded in trainable.json)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help="hf: weight dtype of the export (default: the base checkpoint's, float32 for the tiny model)")
    p.add_argument("--max-shard-gb", type=float, default=5.0,
                   help="hf: largest safetensors file in GiB; above it the weights are sharded with an index "
                        "(default 5)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the weights already in OUT (default: refuse to write into a directory holding "
                        "weights)")
    p.add_argument("--push-to-hub", metavar="REPO", default=None,
                   help="after exporting, upload OUT to this Hub repo (needs huggingface_hub and a login)")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    return p


def main(argv=None) -> None:
    a = parser().parse_args(argv)
    from progress_jax import export  # heavy (JAX): imported after --help

    fmt, out = a.to
    if fmt not in ("hf", "peft"):
        parser().error(f"--to: FORMAT must be hf or peft, got {fmt!r}")
    if a.push_to_hub:
        export.hub_api()  # fail before the export when huggingface_hub is missing
    try:
        if fmt == "hf":
            result = export.export_hf(a.final_dir, out, base=a.base, dtype=a.dtype,
                                      max_shard_bytes=int(a.max_shard_gb * 2**30), overwrite=a.overwrite)
        else:
            if a.base or a.dtype:
                parser().error("--base and --dtype apply to --to hf only (an adapter holds the trained factors alone)")
            result = export.export_peft(a.final_dir, out, overwrite=a.overwrite)
    except (FileExistsError, FileNotFoundError, ValueError, UserError) as e:  # bad input: its message, no traceback
        sys.exit(f"tools/export.py: error: {e}")
    except OSError as e:  # a full disk, a read-only OUT: the file it stopped at
        if disk_error(e) is None:
            raise
        sys.exit(f"tools/export.py: error: {disk_error(e)} (the export in {out} is incomplete)")
    print(f"wrote {out}: {', '.join(result['files'])}")
    if a.push_to_hub:
        print(f"uploaded to {export.push_to_hub(out, a.push_to_hub, a.private)}")


if __name__ == "__main__":
    main()
