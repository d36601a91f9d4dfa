"""Progress-Bench evaluation: `python -m progress_jax.main --config configs/eval.py [--config.a.b=value ...]`.

    --config.model.path=DIR       a Qwen2.5-VL Hub checkpoint (config.json, safetensors, tokenizer)
    --config.data.bench_dir=DIR   benchmark JSONL files, images under DIR/images (or data.image_root)
    --config.data.mode=direct     no-think prompts and answers (default think)
    --config.eval.trained=RUN/final  evaluate what an SFT or GRPO run trained

With model.path: the paper's eval sampling (REFERENCE §6: temperature 0.6, top_p 0.9, 4096 new
tokens), images at most 1003520 pixels (the SFT recipe's image_max_pixels, so that the model sees
images as in training). With nothing given: the built-in tiny random model on ProgressBench-Sim
small, end to end in about a minute on two CPU cores (plus ~20 s to generate the sim the first time); 160 new tokens (enough for the sim's
shortest reasoning answers; a random model's metrics are poor anyway).

Outputs in `eval.out_dir` (default <workdir>/<mode>): predictions.jsonl (resumable: a rerun only
generates the samples not yet there), metrics.json, table1/table2 .md/.csv, figures.
"""
import ml_collections
from ml_collections import config_dict

from configs.base import base


def get_config() -> ml_collections.ConfigDict:
    c = base()
    c.job = "eval"
    c.workdir = "runs/eval"
    # None = chosen for the model by progress_jax.eval.runner.resolve (see the docstring).
    c.sampling.max_new_tokens = config_dict.placeholder(int)
    for key, kind in (("min_pixels", int), ("max_pixels", int), ("length_buckets", tuple),
                      ("patch_buckets", tuple), ("image_buckets", tuple)):
        c.data[key] = config_dict.placeholder(kind)

    c.eval = ml_collections.ConfigDict()
    c.eval.bench_files = ()  # empty: every *.jsonl in data.bench_dir (or the sim's bench)
    c.eval.out_dir = ""  # "" = <workdir>/<data.mode>
    c.eval.run_name = ""  # row name in the tables; "" = the run or model directory name, or "tiny-random"
    # An SFT/GRPO run's final/ directory: its trained parameters (LoRA adapters at the run's rank,
    # or full language-model weights) on top of model.path (or the tiny model it was trained from).
    c.eval.trained = ""
    return c
