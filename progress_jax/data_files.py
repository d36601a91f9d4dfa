"""The data files a job reads: ProgressBench-Sim's (generated on first use), the training files
and an earlier run's trained parameters, each checked before any expensive work."""

from __future__ import annotations

import os

import grain
import jax
from jax._src import distributed as jax_distributed

from data_construction import sim
from data_pipeline.records import file_format, load_chat_records, load_records
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
    any expensive work; a missing or empty file is refused naming the config key. Returns the
    number of samples."""
    n = 0
    for f in files:
        if not os.path.isfile(f):
            raise InputNotFound(f"config key {key}: no file {f}")
        if f.endswith(".array_record"):
            count = len(grain.sources.ArrayRecordDataSource([f]))
        else:
            load = load_chat_records if file_format(f) == "chat" else load_records
            count = len(load(f, image_root))
        if count == 0:
            raise BadInput(f"config key {key}: {f} holds no records")
        n += count
    return n


def check_init_params(directory: str, key: str) -> None:
    if directory and not os.path.isfile(os.path.join(directory, handover.TRAINABLE_FILE)):
        raise handover.not_a_final_dir(directory, handover.TRAINABLE_FILE, key)
