"""Entry point: `python -m progress_jax.main --config configs/X.py [--config.a.b=value ...]`.

The config file's `get_config()` returns an ml_collections ConfigDict whose `job` field names
the job (sft, grpo, eval). Command-line overrides of unknown keys are refused by name.
"""

from __future__ import annotations

import importlib
import logging

from absl import app
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)

JOBS = {
    "sft": "progress_jax.train.sft",
    "grpo": "progress_jax.train.grpo",
    "eval": "progress_jax.eval.runner",
}


def run(config) -> None:
    job = config.get("job")
    if job not in JOBS:
        raise ValueError(f"config key 'job' must be one of {sorted(JOBS)}, got {job!r}")
    importlib.import_module(JOBS[job]).run(config)


def _main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None:
        raise app.UsageError("--config is required, e.g. --config configs/grpo.py")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(_CONFIG.value)


if __name__ == "__main__":
    app.run(_main)
