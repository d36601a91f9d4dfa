"""Progress-Bench evaluation: `python -m progress_jax.main --config configs/eval.py[:demo|:nano|:paper] [--config.a.b=value ...]`.

    --config.model.path=DIR       a Qwen2.5-VL Hub checkpoint (config.json, safetensors, tokenizer)
    --config.data.bench_dir=DIR   benchmark JSONL files, images under DIR/images (or data.image_root)
    --config.data.mode=direct     no-think prompts and answers (default think)
    --config.eval.trained=RUN/final  evaluate what an SFT or GRPO run trained

`demo` (the default): the built-in tiny random model on ProgressBench-Sim small, end to end in about
a minute on two CPU cores (plus ~20 s to generate the sim the first time), 160 new tokens.
`nano`: the test split of the learning experiment's sim (configs/sft.py:nano, docs/learning.md),
greedy, 80 new tokens, as that run's validation answers.
`paper`: the official evaluation scripts' settings (eval/qwen25vl/scripts/benchmarks/*, see
docs/recipes.md): temperature 0.6, top-p 0.9, top-k 50, up to 40000 new tokens, images of
1003520..4014080 pixels, the official prompt layout. Set model.path and data.bench_dir.

Outputs in `eval.out_dir` (default <workdir>/<mode>): predictions.jsonl (resumable: a rerun only
generates the samples not yet there; predictions of another model or other settings are refused,
or replaced with --config.eval.overwrite=True), metrics.json, table1/table2 .md/.csv, figures.
"""
import ml_collections

from configs.base import VARIANTS, base, demo_data, nano_data, variant


def get_config(arg=None) -> ml_collections.ConfigDict:
    name = variant(arg, VARIANTS + ("nano",))
    c = base()
    c.job = "eval"
    c.workdir = "runs/eval"

    c.eval = ml_collections.ConfigDict()
    c.eval.bench_files = ()  # empty: every *.jsonl in data.bench_dir (or the sim's bench)
    c.eval.out_dir = ""  # "" = <workdir>/<data.mode>
    c.eval.run_name = ""  # row name in the tables; "" = the run or model directory name, or "tiny-random"
    # An SFT/GRPO run's final/ directory: its trained parameters (LoRA adapters at the run's rank,
    # or full weights) on top of model.path (or the random preset and seed it was trained from).
    c.eval.trained = ""
    # Ablation: every observation image replaced by flat grey of its size (docs/learning.md).
    c.eval.blank_observation = False
    c.eval.overwrite = False  # replace predictions made by another model or settings instead of refusing

    if name == "demo":
        demo_data(c)
        c.sampling.max_new_tokens = 160  # the sim's brief answers; a random model's metrics are poor anyway
    elif name == "nano":  # the test split of configs/sft.py:nano's sim, answered as its validation does
        nano_data(c)
        c.workdir = "runs/eval_nano"
        c.sampling.temperature = 0.0
        c.sampling.max_new_tokens = 80
    else:  # eval/qwen25vl/scripts/benchmarks/*/think_3b.sh and friends
        c.workdir = "runs/eval-paper"  # not the demo's runs/eval
        c.model.preset = ""  # model.path required
        c.model.param_dtype = c.model.compute_dtype = "bfloat16"
        c.data.prompt = "official"
        c.model.attention_chunk = 1024  # queries in blocks of 1024 (docs/model.md)
        c.data.min_pixels = 1280 * 28 * 28  # 1003520
        c.data.max_pixels = 5120 * 28 * 28  # 4014080
        # Up to 5120 tokens (20480 patches) per image: several demo frames need long prompts.
        c.data.length_buckets = (4096, 8192, 16384, 32768, 65536)
        c.data.patch_buckets = (32768, 65536, 131072, 262144, 524288)
        c.data.image_buckets = (16, 32, 64, 128)
        c.sampling.temperature = 0.6
        c.sampling.top_p = 0.9
        c.sampling.top_k = 50
        c.sampling.max_new_tokens = 40000
    return c
