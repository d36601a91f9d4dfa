"""The training jobs' prologue: every input read and checked before the model is loaded, so that a
bad file or config fails in seconds, not after minutes of loading and compiling."""
from __future__ import annotations

import dataclasses

import jax

from progress_jax import data_files, distributed, jobs
from progress_jax.train import validation


@dataclasses.dataclass
class Inputs:
    files: list[str]  # training files (data.train_files or the sim's)
    image_root: str | None
    sim: dict | None  # the sim's paths when training on ProgressBench-Sim
    n_samples: int  # training samples in the files
    val_files: tuple | None  # validation.resolve_files (None: no validation)
    mesh: jax.sharding.Mesh


def check(config, stage: str, rows: str = "rows") -> Inputs:
    """Read the training files of `stage` ("sft" | "rl"), check train.init_params, the validation
    files and the mesh against train.micro_batch_size (jobs.check_micro_batch)."""
    t = config.train
    files, image_root, sim = data_files.train_data(config, stage)
    n_samples = data_files.check_train_files(files, image_root)
    data_files.check_init_params(t.init_params, "train.init_params")
    val_files = validation.resolve_files(config, sim)
    mesh = distributed.make_mesh(config)
    jobs.check_micro_batch(t.micro_batch_size, mesh, rows)
    return Inputs(files, image_root, sim, n_samples, val_files, mesh)

