"""JSONL record files -> ArrayRecord shards, so that large sets stream instead of being loaded whole.

Each entry is one validated JSONL line as UTF-8 JSON: {"path", "source", "line", "chat", "obj"}, so
errors raised when it is read back still name the original file and line. TensorFlow Datasets'
data_source is not used: it needs tensorflow_datasets, which this project does not depend on.

CLI: python -m data_pipeline.array_record --out DIR [--num-shards N] [--image-root R] FILE.jsonl ...
"""
from __future__ import annotations

import argparse
import json
import logging
import os

from data_pipeline.jsonl import read_json_lines
from data_pipeline.records import RecordError, SkippedLine, parse_chat_record, parse_record

logger = logging.getLogger(__name__)

SUFFIX = ".array_record"


def _is_chat(obj) -> bool:
    return isinstance(obj, dict) and "messages" in obj


def encode_line(path: str, line: int, obj, image_root: str | None = None) -> bytes:
    """Validate one decoded JSONL line (raising RecordError) and return its ArrayRecord entry."""
    source = os.path.splitext(os.path.basename(path))[0]
    chat = _is_chat(obj)
    (parse_chat_record if chat else parse_record)(obj, source, path, line, image_root)
    return json.dumps({"path": path, "source": source, "line": line, "chat": chat, "obj": obj}).encode("utf-8")


def decode_entry(data: bytes, image_root: str | None = None):
    """An ArrayRecord entry -> Record or ChatRecord (chat image paths resolved against image_root)."""
    entry = json.loads(data)
    parse = parse_chat_record if entry["chat"] else parse_record
    # Record images are resolved later (IMAGE_ROOT/{id}/{file}); chat images are plain paths.
    root = image_root if entry["chat"] else None
    return parse(entry["obj"], entry["source"], entry["path"], entry["line"], root)


def convert(jsonl_paths: list[str], out_dir: str, num_shards: int = 1, image_root: str | None = None) -> list[str]:
    """Write every line of the JSONL files, validated, round-robin into num_shards shards; returns their paths.

    The lines the official loaders skip are skipped with a warning each and counted, as load_records
    does (docs/formats.md); any other bad line stops the conversion with its RecordError."""
    from array_record.python.array_record_module import ArrayRecordWriter

    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    os.makedirs(out_dir, exist_ok=True)
    stem = "_".join(os.path.splitext(os.path.basename(p))[0] for p in jsonl_paths)[:100] or "records"
    paths = [os.path.join(out_dir, f"{stem}-{i:05d}-of-{num_shards:05d}{SUFFIX}") for i in range(num_shards)]
    writers = [ArrayRecordWriter(p, "group_size:1") for p in paths]  # group_size 1: cheap random access
    count = skipped = 0
    try:
        for path in jsonl_paths:
            path = os.fspath(path)
            for entry in read_json_lines(path):
                if entry.error is not None:
                    raise RecordError(path, entry.number, None, entry.error)
                try:
                    data = encode_line(path, entry.number, entry.obj, image_root)
                except SkippedLine as e:
                    logger.warning("skipped %s", e)
                    skipped += 1
                    continue
                writers[count % num_shards].write(data)
                count += 1
    finally:
        for w in writers:
            w.close()
    if skipped:
        logger.warning("skipped %d line(s) as the official loaders do, wrote %d", skipped, count)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description="Convert record JSONL files to ArrayRecord shards.")
    parser.add_argument("files", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--num-shards", type=int, default=1)
    parser.add_argument("--image-root", default=None, help="check that every image exists")
    args = parser.parse_args()
    for p in convert(args.files, args.out, args.num_shards, args.image_root):
        print(p)


if __name__ == "__main__":
    main()
