"""Guided reasoning completion: a teacher gets the official CoT-generation prompt with its ground-truth
hint and fills in the reasoning; accepted answers become SFT chat records (docs/data_construction.md).

    python -m tools.generate_cot --records train.jsonl --image-root IMAGES --out sft_cot.jsonl \
        --backend vllm --model Qwen/Qwen2.5-VL-72B-Instruct --tensor-parallel-size 4
    python -m tools.generate_cot ... --backend jax [--model CHECKPOINT_DIR | --preset tiny]

--accept official (default: the official runner keeps every answer whose <score> parses), match
(its ref and score must also equal the ground truth) or strict (the project's own check: the four
blocks exactly, <ref> digits, the score within 0.005 points of the label).

Unanswerable text records get the text nega prompt, whose hint names the step the unedited
observation showed: taken, as the official loader does, from the line's own `raw_text_demo[rank]`
when the records file has those fields ("" otherwise).

Resumable: samples already in --out (or rejected for a reason other than an engine error, in
--rejects, default OUT.rejected.jsonl) are skipped. The images of the output are relative to the
same --image-root ({id}/{file}).
"""
from __future__ import annotations
if __package__ in (None, ""):  # run as `python tools/X.py`: import this checkout, as `python -m tools.X` does
    import os, sys; sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import json
import logging

from data_construction.teacher import (ACCEPT_RULES, JaxTeacher, TeacherSampling, VllmTeacher, rejects_path_for,
                                       run_guided_completion, sample_key)
from data_pipeline.paths import check_outputs
from data_pipeline.records import load_records


def add_teacher_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("teacher")
    g.add_argument("--backend", choices=("vllm", "jax"), required=True,
                   help="teacher engine: vllm (GPU, the paper's setup) or jax (this project's sampler)")
    g.add_argument("--model", default="", help="vLLM model name/path, or a checkpoint directory for jax "
                                                 "(empty with jax: a random model of --preset)")
    g.add_argument("--preset", default="tiny", help="jax: model preset when --model is empty")
    g.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm: GPUs per model (default 1)")
    g.add_argument("--max-images", type=int, default=16, help="vllm: limit_mm_per_prompt images")
    g.add_argument("--batch-size", type=int, default=8, help="prompts sent to the teacher at a time (default 8)")
    g.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (default 0.6)")
    g.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (default 0.9)")
    g.add_argument("--top-k", type=int, default=50, help="top-k sampling cut-off (default 50)")
    g.add_argument("--max-tokens", type=int, default=4096, help="most generated tokens per answer (default 4096)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    g.add_argument("--max-prompt-length", type=int, default=16384, help="jax: prompt tokens (longer are cut)")
    g.add_argument("--max-pixels", type=int, default=12845056, help="jax: image max_pixels")
    g.add_argument("--jax-dtype", choices=("float32", "bfloat16"), default="float32",
                   help="jax: parameter and compute dtype (bfloat16 for a 3B model on an accelerator)")


def jax_generate_fn(model_path: str, preset: str, sampling: TeacherSampling, dtype: str = "float32"):
    """progress_jax.sampling.generate on one model (one device) as `batch -> texts`, with its tokenizer."""
    import jax
    import jax.numpy as jnp

    from data_pipeline.tokenizer import load_tokenizer
    from progress_jax import sampling as sampler
    from progress_jax.models import families

    dt = getattr(jnp, dtype)
    if model_path:
        model = families.for_path(model_path).load(model_path, dt, dt)
    else:
        family = families.for_preset(preset)
        model = family.build(family.architecture("", preset), sampling.seed, dt, dt)
    tokenizer = load_tokenizer(model_path or None)
    params = sampler.SamplingParams(max_new_tokens=sampling.max_tokens, temperature=sampling.temperature,
                                    top_p=sampling.top_p, top_k=sampling.top_k)
    key, calls = jax.random.key(sampling.seed), [0]

    def generate(batch: dict) -> list[str]:
        calls[0] += 1
        return sampler.generate(model, batch, params, jax.random.fold_in(key, calls[0]), tokenizer=tokenizer).texts

    return generate, tokenizer


def make_teacher(args):
    sampling = TeacherSampling(args.temperature, args.top_p, args.top_k, args.max_tokens, args.seed)
    if args.backend == "vllm":
        if not args.model:
            raise SystemExit("--model is required with --backend vllm")
        return VllmTeacher.load(args.model, args.tensor_parallel_size, args.max_images, sampling)
    generate, tokenizer = jax_generate_fn(args.model, args.preset, sampling, args.jax_dtype)
    return JaxTeacher(generate, tokenizer, args.max_prompt_length, max_pixels=args.max_pixels)


def original_steps(path: str, records) -> dict[str, str]:
    """sample_key -> raw_text_demo[rank] for the unanswerable text records of `path` whose line has both
    (text_nega_dataset.py's original_step); a rank outside the list is an error naming the line."""
    from data_pipeline.jsonl import read_json_lines

    lines = {entry.number: entry.obj for entry in read_json_lines(path)}  # the record loader's reader and numbers
    out = {}
    for r in records:
        if r.kind != "text" or r.answerable:
            continue
        obj = lines[r.line]
        if "raw_text_demo" in obj and "rank" in obj:
            steps, rank = obj["raw_text_demo"], obj["rank"]
            if not isinstance(steps, list) or not isinstance(rank, int) or not 0 <= rank < len(steps):
                raise SystemExit(f"{path}:{r.line}: field 'rank' {rank!r} is outside raw_text_demo")
            out[sample_key(r)] = steps[rank]
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", nargs="+", required=True, help="benchmark/RL-format JSONL files")
    ap.add_argument("--image-root", required=True, help="IMAGE_ROOT: image paths in --records are relative to it")
    ap.add_argument("--out", required=True, help="SFT chat JSONL (appended)")
    ap.add_argument("--rejects", default=None, help="rejected answers JSONL (default OUT.rejected.jsonl)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N records")
    ap.add_argument("--accept", choices=ACCEPT_RULES, default="official",
                    help="acceptance rule of an answer: official (its <score> parses, as the official runner), "
                         "match (ref and score equal the ground truth), strict (the four blocks checked against "
                         "the ground truth); see docs/data_construction.md")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_teacher_args(ap)
    args = ap.parse_args(argv)
    check_outputs({"--out": args.out, "--rejects": args.rejects or rejects_path_for(args.out)},
                  {"--records": args.records})
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    records, steps = [], {}
    for path in args.records:
        loaded = load_records(path, image_root=args.image_root)
        records += loaded
        steps.update(original_steps(path, loaded))
    counts = run_guided_completion(records[:args.limit], args.image_root, make_teacher(args), args.out,
                                   args.batch_size, args.rejects, progress=not args.no_progress, accept=args.accept,
                                   original_steps=steps)
    print(json.dumps(counts))
    return counts


if __name__ == "__main__":
    main()
