"""Unanswerable samples: teacher object swaps in text demos, teacher-proposed and applied image edits.

    python -m tools.make_unanswerable text --records text-normal.jsonl --image-root IMAGES \
        --out text-unanswerable.jsonl --backend vllm --model Qwen/Qwen2.5-VL-72B-Instruct \
        [--protocol official|object_tags] [--allowed-objects nouns.txt (object_tags)]
    python -m tools.make_unanswerable image --records visual_same_view.jsonl --image-root IMAGES \
        --queue review_queue.jsonl --out visual-unanswerable.unreviewed.jsonl --backend vllm --model ... \
        --editor diffusers [--protocol official|strategy_tags] [--edit-model Qwen/Qwen-Image-Edit \
        --edit-steps 50 --true-cfg-scale 4 --edit-seed 42 [--per-sample-seed] ...]
    python -m tools.make_unanswerable image ... --editor sim --sim-seed 0     # ProgressBench-Sim, procedural

The teacher prompts and acceptance rules are the official ones by default (--protocol official);
the project's earlier, stricter protocols stay available. Rules, layouts and sources:
docs/data_construction.md and data_construction/unanswerable.py. Edited images go to
IMAGE_ROOT/{id}/{stem}_edit.jpg; the review app (tools/review_app.py) turns the queue into the
final visual-unanswerable file. Both commands resume: settled samples are skipped.
"""
from __future__ import annotations
if __package__ in (None, ""):  # run as `python tools/X.py`: import this checkout, as `python -m tools.X` does
    import os, sys; sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import json
import logging

from data_construction.image_edit import DEFAULT_MODEL, DTYPES, OFFICIAL_SEED, DiffusersEditor, SimEditor
from data_construction.teacher import rejects_path_for
from data_construction.unanswerable import PROTOCOLS, run_image_edits, run_text_swaps
from data_pipeline.paths import check_outputs
from data_pipeline.records import load_records, record_image_path
from tools.generate_cot import add_teacher_args, make_teacher


def _read_steps(path: str) -> dict:
    """JSONL lines with "id" and "steps" (or "text_demo"): the text steps of visual trajectories."""
    from data_pipeline.jsonl import read_json_lines

    steps = {}
    for n, obj, error, _ in read_json_lines(path):
        if error is not None:
            raise SystemExit(f"{path}:{n}: {error}")
        value = obj.get("steps", obj.get("text_demo")) if isinstance(obj, dict) else None
        if not isinstance(value, list) or "id" not in obj:
            raise SystemExit(f"{path}:{n}: expected fields 'id' and 'steps' (a list of strings)")
        steps[str(obj["id"])] = value
    return steps


def _text(args) -> dict:
    records = [r for path in args.records for r in load_records(path)][:args.limit]
    allowed = None
    if args.allowed_objects:
        with open(args.allowed_objects, encoding="utf-8") as f:
            allowed = [line.strip() for line in f if line.strip()]
    return run_text_swaps(records, make_teacher(args), args.out, args.batch_size, args.rejects, allowed,
                          progress=not args.no_progress, image_root=args.image_root, protocol=args.protocol)


def make_editor(args):
    if args.editor == "sim":
        return SimEditor(args.sim_seed)
    return DiffusersEditor.load(args.edit_model, args.edit_dtype, args.edit_device,
                                num_inference_steps=args.edit_steps, true_cfg_scale=args.true_cfg_scale,
                                guidance_scale=args.guidance_scale, negative_prompt=args.negative_prompt,
                                seed=args.edit_seed, per_sample_seed=args.per_sample_seed)


def _image(args) -> dict:
    records = [r for path in args.records for r in load_records(path, image_root=args.image_root)][:args.limit]
    editor = make_editor(args)
    steps = _read_steps(args.steps) if args.steps else {}
    if isinstance(editor, SimEditor):  # the sim knows its steps
        from PIL import Image

        for r in records:
            if r.id not in steps:
                with Image.open(record_image_path(args.image_root, r, r.observation)) as im:
                    steps[r.id] = editor.steps(r, im.size[0])
    return run_image_edits(records, args.image_root, make_teacher(args), editor, args.queue, args.out, steps,
                           args.batch_size, args.rejects, progress=not args.no_progress, protocol=args.protocol)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    text = sub.add_parser("text", help="object swaps in text demos -> text-unanswerable records")
    text.add_argument("--records", nargs="+", required=True, help="text-normal JSONL files")
    text.add_argument("--image-root", required=True, help="the teacher sees each record's observation image")
    text.add_argument("--out", required=True, help="text-unanswerable JSONL (appended)")
    text.add_argument("--protocol", choices=PROTOCOLS["text"], default="official",
                      help="official: the release's object-replacement prompt; object_tags: the earlier "
                           "tagged protocol (docs/data_construction.md)")
    text.add_argument("--allowed-objects", default=None, help="file with one allowed new object per line")
    image = sub.add_parser("image", help="teacher edit proposals + image editing -> review queue")
    image.add_argument("--records", nargs="+", required=True, help="answerable visual JSONL files")
    image.add_argument("--image-root", required=True, help="IMAGE_ROOT: image paths in --records are relative to it")
    image.add_argument("--queue", required=True, help="review queue JSONL (appended)")
    image.add_argument("--out", required=True, help="all queued records, unreviewed (rewritten)")
    image.add_argument("--steps", default=None, help="JSONL {id, steps} with the text steps of the trajectories")
    image.add_argument("--editor", choices=("diffusers", "sim"), default="diffusers",
                       help="diffusers: an image-editing pipeline (GPU); sim: the ProgressBench-Sim renderer (CPU)")
    image.add_argument("--edit-model", default=DEFAULT_MODEL, help="diffusers pipeline name or local path")
    image.add_argument("--edit-dtype", choices=DTYPES, default="bfloat16",
                       help="diffusers: pipeline dtype (default bfloat16)")
    image.add_argument("--edit-device", default="cuda", help="diffusers: torch device (default cuda)")
    image.add_argument("--edit-steps", type=int, default=50, help="diffusers: denoising steps (default 50)")
    image.add_argument("--true-cfg-scale", type=float, default=None, help="default: the pipeline's (4.0 for Qwen)")
    image.add_argument("--guidance-scale", type=float, default=None, help="default: the pipeline's")
    image.add_argument("--negative-prompt", default=" ", help="diffusers: negative prompt (default a single space)")
    image.add_argument("--protocol", choices=PROTOCOLS["image"], default="official",
                       help="official: the release's adversarial-editing prompt and tags; strategy_tags: the "
                            "earlier protocol (docs/data_construction.md)")
    image.add_argument("--edit-seed", type=int, default=OFFICIAL_SEED,
                       help="diffusers: the generator seed of every edit (default 42, as the official script)")
    image.add_argument("--per-sample-seed", action="store_true", help="seed each edit with edit-seed + crc32(key)")
    image.add_argument("--sim-seed", type=int, default=0, help="seed ProgressBench-Sim was generated with")
    for p in (text, image):
        p.add_argument("--rejects", default=None,
                       help="rejected answers JSONL (default OUT.rejected.jsonl, QUEUE.rejected.jsonl for image)")
        p.add_argument("--limit", type=int, default=None, help="only the first N records")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        add_teacher_args(p)
    args = ap.parse_args(argv)
    queue = getattr(args, "queue", None)
    rejects = args.rejects or rejects_path_for(queue or args.out)
    check_outputs({"--queue": queue, "--out": args.out, "--rejects": rejects},
                  {"--records": args.records, "--steps": getattr(args, "steps", None),
                   "--allowed-objects": getattr(args, "allowed_objects", None)})
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    counts = _text(args) if args.command == "text" else _image(args)
    print(json.dumps(counts))
    return counts


if __name__ == "__main__":
    main()
