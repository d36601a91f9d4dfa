"""Check data files before a long run: every line parses (benchmark / RL records, SFT chat, predictions,
official result files; the format is detected per file), and with --image-root every image is present
and decodable and every sample fits the token and patch buckets.

    python tools/check_data.py FILE... [--image-root DIR] [--json]
        [--tokenizer CHECKPOINT_DIR] [--length-buckets 2048,4096,...] [--patch-buckets ...]
        [--min-pixels N] [--max-pixels N] [--mode think|direct]

Prints a summary per file: lines (non-blank), ok, skipped (the lines the official ProgressLM loaders
skip: a missing field, an empty task_goal, a step list whose length disagrees with total_steps) and
errors (anything else, with field and reason). --json prints {"files": [{"file", "format", "lines",
"ok", "skipped": [{"line", "reason"}], "errors": [{"line", "field", "reason"}]}]} (1-based lines).
"kind" says what the file is: benchmark or RL training records, SFT training records (with
responses), SFT training (chat), predictions, official results. With --image-root, "stats" gives each file's images per sample and (with --length-buckets, which
loads the tokenizer) tokens per sample: {"min", "median", "max"}, also printed.
Exit status 0 when no file has an error (skips are fine), 1 otherwise.

Token lengths count the prompt (and the line's own answer, if it has one) with the project's prompt
code, untruncated, against the largest --length-buckets entry; images are sized with --min/--max-pixels
as the pipeline sizes them. Pass the buckets and pixels of the job you are about to run, and
--tokenizer the checkpoint (default: the built-in tiny tokenizer, whose counts differ from Qwen's).
Formats and skip rules: docs/formats.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

if __package__ in (None, ""):  # run as `python tools/check_data.py`: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_pipeline.jsonl import read_json_lines  # noqa: E402
from data_pipeline.records import (ChatRecord, RecordError, file_format, parse_chat_record,  # noqa: E402
                                   parse_record, scan_file)


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


class _Sizer:
    """Decodes each image once and gives its patch grid as the pipeline would (smart_resize)."""

    def __init__(self, min_pixels: int, max_pixels: int):
        self.min_pixels, self.max_pixels, self.cache = min_pixels, max_pixels, {}

    def grid(self, path: str) -> tuple[int, int, int]:
        if path not in self.cache:
            from PIL import Image

            from data_pipeline.image_processor import smart_resize

            try:
                with Image.open(path) as image:
                    image.load()  # decode fully: a truncated file fails here
                    width, height = image.size
                h, w = smart_resize(height, width, min_pixels=self.min_pixels, max_pixels=self.max_pixels)
                self.cache[path] = (1, h // 14, w // 14)
            except Exception as e:  # noqa: BLE001 - any decoding failure is reported per line
                self.cache[path] = f"image {path} cannot be read: {type(e).__name__}: {e}"
        return self.cache[path]


def _check_sample(item, image_root, sizer, tokenizer, args, sizes: dict | None = None) -> RecordError | None:
    """Images decodable, tokens and patches within the largest buckets; None when fine. The
    sample's image count and (with a tokenizer) token count are appended to `sizes`."""
    from data_pipeline.prompts import record_images, tokenize_chat, tokenize_record

    path, line = item.path, item.line
    images = list(item.images) if isinstance(item, ChatRecord) else record_images(item, image_root)
    grids = []
    for image in images:
        grid = sizer.grid(image)
        if isinstance(grid, str):
            return RecordError(path, line, "images" if isinstance(item, ChatRecord) else None, grid)
        grids.append(grid)
    if sizes is not None:
        sizes.setdefault("images", []).append(len(grids))
    patches = sum(t * h * w for t, h, w in grids)
    if args.patch_buckets and patches > max(args.patch_buckets):
        return RecordError(path, line, None, f"{patches} image patches, more than the largest patch bucket "
                                             f"{max(args.patch_buckets)}")
    if tokenizer is None:
        return None
    try:
        if isinstance(item, ChatRecord):
            tokens = tokenize_chat(tokenizer, item, grids, max_length=10**9)
        else:
            answer = item.response if args.mode == "think" else None
            tokens = tokenize_record(tokenizer, item, grids, args.mode, answer, max_length=10**9)
    except ValueError as e:
        return RecordError(path, line, None, str(e))
    n = len(tokens.input_ids)
    if sizes is not None:
        sizes.setdefault("tokens", []).append(n)
    if n > max(args.length_buckets):
        return RecordError(path, line, None, f"{n} tokens, more than the largest length bucket "
                                             f"{max(args.length_buckets)} (the prompt text would be cut)")
    return None


def _label(fmt: str | None, items) -> str:
    """What a file is, for the summary: training files named as such."""
    if fmt == "chat":
        return "SFT training (chat)"
    if fmt == "bench":
        if any(getattr(item, "response", None) for item in items):
            return "SFT training records (with responses)"
        return "benchmark or RL training records"
    return {"predictions": "predictions", "results": "official results"}.get(fmt, "unknown")


def check_file(path: str, args, tokenizer=None, sizer=None) -> dict:
    fmt = file_format(path)
    summary = {"file": path, "format": fmt or "unknown", "lines": 0, "ok": 0, "skipped": [], "errors": []}

    def error(e):
        summary["errors"].append({"line": e.line, "field": e.field if isinstance(e, RecordError) else e.key,
                                  "reason": getattr(e, "reason", str(e))})

    if fmt in ("predictions", "results"):
        from progress_jax.eval.predictions import PredictionError, validate_line

        for entry in read_json_lines(path):
            summary["lines"] += 1
            try:
                if entry.error is not None:
                    raise RecordError(path, entry.number, None, entry.error)
                validate_line(entry.obj, path, entry.number, fmt)
                summary["ok"] += 1
            except (RecordError, PredictionError) as e:
                error(e)
        return summary
    scan = scan_file(path, parse_chat_record if fmt == "chat" else parse_record, args.image_root)
    summary["lines"] = scan.lines
    summary["skipped"] = [{"line": e.line, "reason": str(e).split(f"{path}:{e.line}: ", 1)[-1]} for e in scan.skipped]
    for e in scan.errors:
        error(e)
    ok = len(scan.items)
    summary["kind"] = _label(fmt, scan.items)
    if args.image_root is not None:
        sizes: dict[str, list[int]] = {}
        for item in scan.items:
            problem = _check_sample(item, args.image_root, sizer, tokenizer, args, sizes)
            if problem is not None:
                error(problem)
                ok -= 1
        summary["stats"] = {k: {"min": min(v), "median": float(statistics.median(v)), "max": max(v)}
                            for k, v in sizes.items() if v}
    summary["ok"] = ok
    if not scan.lines:  # nothing a job could read
        summary["errors"].append({"line": 0, "field": None, "reason": "empty file: no records"})
    summary["errors"].sort(key=lambda e: e["line"])
    return summary


def _print(summary: dict) -> None:
    s = summary
    print(f"{s['file']}: {s.get('kind', s['format'])}, {s['lines']} lines, {s['ok']} ok, {len(s['skipped'])} skipped "
          f"(as the official loaders skip them), {len(s['errors'])} errors")
    for kind, entries in (("skipped", s["skipped"]), ("error", s["errors"])):
        for e in entries[:20]:
            field = f"field '{e['field']}': " if e.get("field") else ""
            print(f"  line {e['line']}: {kind}: {field}{e['reason']}")
        if len(entries) > 20:
            print(f"  ... and {len(entries) - 20} more {kind} lines")
    for name, what in (("tokens", "tokens per sample"), ("images", "images per sample")):
        if name in s.get("stats", {}):
            st = s["stats"][name]
            print(f"  {what}: min {st['min']}, median {st['median']:g}, max {st['max']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="JSONL files (benchmark, RL, SFT chat, predictions, official results)")
    parser.add_argument("--image-root", default=None, help="IMAGE_ROOT: also check images and token lengths")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    parser.add_argument("--tokenizer", default=None, help="checkpoint directory with tokenizer.json (default: tiny)")
    parser.add_argument("--length-buckets", type=_ints, default=None,
                        help="token buckets of the job, e.g. 2048,4096,8192,16384,32768 (largest = the limit); "
                             "without it token lengths are not checked")
    parser.add_argument("--patch-buckets", type=_ints, default=None, help="patch buckets of the job (largest = the limit)")
    parser.add_argument("--min-pixels", type=int, default=3136, help="image min_pixels of the job (default 3136)")
    parser.add_argument("--max-pixels", type=int, default=12845056,
                        help="image max_pixels of the job (default 12845056)")
    parser.add_argument("--mode", choices=("think", "direct"), default="think", help="prompt mode (default think)")
    args = parser.parse_args(argv)

    tokenizer = sizer = None
    if args.image_root is not None:
        if not os.path.isdir(args.image_root):
            parser.error(f"--image-root: no directory {args.image_root}")
        sizer = _Sizer(args.min_pixels, args.max_pixels)
        if args.length_buckets:
            from data_pipeline.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(args.tokenizer)
    summaries = []
    for path in args.files:
        if not os.path.isfile(path):
            reason = "a directory, not a JSONL file" if os.path.isdir(path) else "no such file"
            summaries.append({"file": path, "format": "unknown", "lines": 0, "ok": 0, "skipped": [],
                              "errors": [{"line": 0, "field": None, "reason": reason}]})
            continue
        summaries.append(check_file(path, args, tokenizer, sizer))
    if args.json:
        print(json.dumps({"files": summaries}, indent=1))
    else:
        for summary in summaries:
            _print(summary)
    return 1 if any(s["errors"] for s in summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
