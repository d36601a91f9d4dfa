"""The console shows the run: the job's own messages one short line each, a line per
train.log_every steps, other libraries' INFO records only with --verbose, sample answers in files."""

import json
import logging
import os
import subprocess
import sys

import pytest

from absl import logging as absl_logging

from progress_jax import console
from tests.killable import ENV, ROOT


@pytest.mark.heavy
def test_a_3_step_sft_prints_at_most_15_lines(tmp_path):
    workdir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "progress_jax.main", "--config", "configs/sft.py",
                           "--config.train.steps=3", "--config.train.log_every=2", f"--config.workdir={workdir}",
                           f"--config.data.sim_dir={tmp_path / 'sim'}", "--config.train.demo_max_new_tokens=16",
                           "--config.data.length_buckets=(576,)"],  # one SFT program to compile, not two
                          cwd=ROOT, env=ENV, capture_output=True, timeout=600)  # bytes: keep the \r
    out = (done.stdout + done.stderr).decode()
    assert done.returncode == 0, out[-3000:]
    # Captured, stderr is no terminal: no progress bar and its carriage-return redraws, lines only.
    assert "\r" not in out, out[-3000:]
    console_lines = out.rstrip("\n").split("\n")
    assert len(console_lines) <= 15, "\n".join(console_lines)
    text = "\n".join(console_lines)
    # Steps 2 and 3 (log_every 2, and the last): step, loss, learning rate, throughput.
    for step in (2, 3):
        assert f"sft step {step}/3  loss " in text and "  lr " in text and "  tokens/s " in text, text
    assert "sft step 1/3" not in text
    assert "orbax" not in text.lower() and "checkpoint_manager" not in text, text
    # The sample answers are in the run's files, not on the console.
    rows = [json.loads(line) for line in open(workdir / "samples.jsonl")]
    assert len(rows) == 2 and all(r["step"] == 3 and "response" in r for r in rows)
    assert all(r["response"] not in text for r in rows if r["response"].strip())
    assert "samples.jsonl" in text
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir))


def test_other_libraries_info_records_only_with_verbose():
    loggers = [logging.getLogger(name) for name in console.PROJECT] + [logging.getLogger()]
    saved = [(lg, lg.handlers[:], lg.level, lg.propagate) for lg in loggers], absl_logging.get_verbosity()
    try:
        for verbose in (False, True):
            console.setup(verbose)
            assert logging.getLogger("progress_jax.train.loop").isEnabledFor(logging.INFO)
            assert logging.getLogger("data_construction.sim").isEnabledFor(logging.INFO)
            for other in ("absl", "jax._src.xla_bridge", "orbax.checkpoint"):
                assert logging.getLogger(other).isEnabledFor(logging.INFO) == verbose, (other, verbose)
                assert logging.getLogger(other).isEnabledFor(logging.WARNING)
            assert (absl_logging.get_verbosity() >= absl_logging.INFO) == verbose
    finally:  # as before: the other tests capture the project's records through the root logger
        for lg, handlers, level, propagate in saved[0]:
            lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate
        absl_logging.set_verbosity(saved[1])
