"""Train metrics: JSONL (one flushed line per step) and TensorBoard, and MFU.

metrics.jsonl and TensorBoard are the record of a run. Optionally the same scalars also go to
Weights & Biases (config key logging.wandb_project; the `wandb` package is imported only then).

MFU: achieved FLOP/s (progress_jax/models/flops.py's count) over the devices' peak.
"""
from __future__ import annotations

import math
import os

from data_pipeline.jsonl import JsonlAppender, read_appended

WANDB_ID_FILE = "wandb_run_id.txt"


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOPs utilization in [0, 1]: achieved FLOP/s over `peak_flops`, the peak of all
    devices doing the work (e.g. n_chips * 989e12 for bf16 H100s)."""
    return tokens_per_s * flops_per_token / peak_flops


class Text(str):
    """A metric value that is text (e.g. validation's sample answers, as Markdown): it goes to
    TensorBoard's text tab (and W&B as text), never to metrics.jsonl, which holds scalars only."""


class MetricsWriter:
    """Appends {"step": step, **metrics} to `<log_dir>/metrics.jsonl` (flushed each write, so a
    killed run keeps every complete line and its half-written one is cut off on resume; a resumed
    run appends, and the last line for a step wins) and
    the same scalars to TensorBoard in `log_dir`. Writes nothing when `enabled` is False
    (processes other than 0).

    wandb_project: also log to this Weights & Biases project (a resumed run continues the same
    W&B run: its id is kept in `<log_dir>/wandb_run_id.txt`); wandb_config: the run config shown
    there."""

    def __init__(self, log_dir: str, enabled: bool = True, tensorboard: bool = True, wandb_project: str = "",
                 wandb_config: dict | None = None):
        self.enabled = enabled
        self.log_dir = log_dir
        self._jsonl = self._tb = self._wandb = None
        if enabled:
            os.makedirs(log_dir, exist_ok=True)
            self._jsonl = JsonlAppender(os.path.join(log_dir, "metrics.jsonl"))
            if tensorboard:
                from tensorboardX import SummaryWriter  # here: it imports torch when installed (2 s)

                self._tb = SummaryWriter(log_dir)
            if wandb_project:
                self._wandb = start_wandb(wandb_project, log_dir, wandb_config)

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        scalars, texts = {}, {}
        for name, value in metrics.items():
            if isinstance(value, Text):
                texts[name] = str(value)
                continue
            try:
                scalars[name] = float(value)
            except (TypeError, ValueError) as e:
                raise ValueError(f"metric {name!r} at step {step} is not a scalar: {value!r}") from e
        # JSON has no NaN/Inf: write them as strings so the line stays valid JSON.
        line = {k: v if math.isfinite(v) else str(v) for k, v in scalars.items()}
        if scalars:
            self._jsonl.write({"step": int(step), **line})
        if self._tb is not None:
            for name, value in scalars.items():
                self._tb.add_scalar(name, value, int(step))
            for name, value in texts.items():
                self._tb.add_text(name, value, int(step))
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log({**scalars, **texts}, step=int(step))

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        self._jsonl = self._tb = self._wandb = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def start_wandb(project: str, log_dir: str, config: dict | None = None):
    """A Weights & Biases run in `project` (files under log_dir), resumed when log_dir already
    holds one's id. Raises a clear error when wandb is not installed."""
    try:
        import wandb
    except ImportError:
        raise ImportError(f"config key logging.wandb_project is {project!r} but the wandb package is not "
                          "installed: pip install wandb, or leave logging.wandb_project empty") from None
    id_file = os.path.join(log_dir, WANDB_ID_FILE)
    run_id = open(id_file).read().strip() if os.path.isfile(id_file) else None
    run = wandb.init(project=project, dir=log_dir, config=config, id=run_id, resume="allow",
                     name=os.path.basename(os.path.abspath(log_dir)))
    if run_id is None:
        with open(id_file, "w") as f:
            f.write(run.id + "\n")
    return run


def read_metrics(log_dir: str) -> dict[int, dict]:
    """`<log_dir>/metrics.jsonl` as {step: metrics}; the last line for a step wins (a resumed run
    rewrites the steps after its checkpoint)."""
    return {m["step"]: m for _, m in read_appended(os.path.join(log_dir, "metrics.jsonl"))}
