"""The data files a job reads: ProgressBench-Sim's (generated on first use), the training files
and an earlier run's trained parameters, each checked before any expensive work."""

from __future__ import annotations

import os

import grain
import jax
from jax._src import distributed as jax_distributed

from data_construction import sim
from data_pipeline.array_record import SUFFIX, decode_entry
from data_pipeline.jsonl import read_json_lines
from data_pipeline.records import (Record, RecordError, SkippedLine, check_images, file_format, load_chat_records,
                                   load_records, parse_chat_record, parse_record, record_image_path)
from progress_jax import handover
from progress_jax.errors import BadInput, InputNotFound


def sim_paths(cfg) -> dict:
    """Generate ProgressBench-Sim (cached) and return its paths (bench_dir, train_dir, ...)."""
    d = cfg.data

    def generate():
        try:
            return sim.generate(d.sim_dir, size=d.sim_size, seed=d.sim_seed, image_size=d.sim_image_size,
                                reasoning=d.sim_reasoning)
        except sim.OtherSimHere as e:
            raise BadInput(f"config key data.sim_dir: {e}") from e

    if jax.process_count() == 1:
        return generate()
    # Several processes share the directory: process 0 writes it, the others then read the cached
    # copy. The barrier is the coordination service's (a device collective's gloo set-up times out
    # after 30 s, shorter than a generation); JAX has no public name for it.
    if jax.process_index() == 0:
        generate()
    jax_distributed.global_state.client.wait_at_barrier("progress_jax_sim_generated", 3_600_000)
    return generate()


def train_data(cfg, sim_split: str) -> tuple[list[str], str | None, dict | None]:
    """(files, image root, sim paths or None): data.train_files, else the sim's `sim_split` file
    ("sft" or "rl"), generated on first use."""
    files, image_root = list(cfg.data.train_files), cfg.data.image_root or None
    if files:
        return files, image_root, None
    paths = sim_paths(cfg)
    return [paths[sim_split]], paths["train_images"], paths


def check_train_files(files, image_root: str | None, key: str = "data.train_files") -> int:
    """Read every record of the training files (and check its images under image_root) before
    any expensive work; a missing or empty file or a bad line is refused naming the config key.
    Returns the number of samples."""
    n = 0
    for f in files:
        if not os.path.isfile(f):
            raise InputNotFound(f"config key {key}: no file {f}")
        if f.endswith(SUFFIX):
            count = len(grain.sources.ArrayRecordDataSource([f]))
        else:
            load = load_chat_records if file_format(f) == "chat" else load_records
            try:
                count = len(load(f, image_root))
            except RecordError as e:
                raise BadInput(f"config key {key}: {e}") from None
        if count == 0:
            raise BadInput(f"config key {key}: {f} holds no records")
        n += count
    return n


def _first_record(f: str, image_root: str):
    """The first record of a training file (None if it has none), read by its format's reader;
    a chat record's images checked under image_root ("": as given, as the pipeline reads them)."""
    if f.endswith(SUFFIX):
        shard = grain.sources.ArrayRecordDataSource([f])
        return decode_entry(shard[0], image_root) if len(shard) else None
    parse = parse_chat_record if file_format(f) == "chat" else parse_record
    source = os.path.splitext(os.path.basename(f))[0]
    for entry in read_json_lines(f):
        if entry.error is not None:
            raise RecordError(f, entry.number, None, entry.error)
        try:
            return parse(entry.obj, source, f, entry.number, image_root if parse is parse_chat_record else None)
        except SkippedLine:
            continue
    return None


def check_first_images(files, image_root: str | None, key: str = "data.image_root") -> None:
    """The images of each training file's first record are found under image_root. Run before the
    run directory is taken: a missing or wrong image root then fails in a second, naming the
    file, line, image and key, not inside the input pipeline once the model has loaded."""
    for f in files:
        if not os.path.isfile(f):
            continue  # check_train_files names it
        try:
            record = _first_record(f, image_root or "")
            if isinstance(record, Record):
                if not image_root:  # the pipeline reads a record's images only under an image root
                    image = record_image_path("", record, record.observation)
                    raise BadInput(f"config key {key} is empty, but {f}:{record.line} names its images under it "
                                   f"({image}, ...): --config.{key}=DIR, the folder holding <id>/<image>")
                check_images(record, image_root)
        except RecordError as e:
            if e.reason.startswith("image file not found"):
                raise BadInput(f"config key {key}={image_root or ''!r}: {e}") from None
            raise BadInput(f"config key data.train_files: {e}") from None


def check_training_images(config) -> None:
    """check_first_images for a job's training files (the demo's warm start's too)."""
    for c in (config, config.get("demo", {}).get("sft")):
        if c is not None and c.data.get("train_files"):
            check_first_images(c.data.train_files, c.data.image_root)


def check_init_params(directory: str, key: str) -> None:
    if directory and not os.path.isfile(os.path.join(directory, handover.TRAINABLE_FILE)):
        raise handover.not_a_final_dir(directory, handover.TRAINABLE_FILE, key)
