"""Train metrics: JSONL (one flushed line per step) and TensorBoard, and MFU.

FLOP counting (PaLM appendix B convention, as MaxText reports it), per trained token:
  forward  = 2 * N  +  2 * 2 * L * n_layers * d_attn
      N: parameters used in matmuls per token (every linear layer, including the output
         projection, tied or not; not the embedding lookup), so 2 * N multiply-adds;
      2 * 2 * L * n_layers * d_attn: QK^T and attention-times-V, each 2 * L * d_attn per token
         per layer, L the sequence length, d_attn = n_heads * head_dim; no causal halving;
  backward = 2 * forward (activation and weight gradients), so training = 3 * forward =
             6 * N + 12 * L * n_layers * d_attn.
With LoRA the base weights' weight-gradient matmuls are skipped: pass backward_factor=1.0 to
count only the work done (the default 2.0 is the conventional full-training count).
"""
from __future__ import annotations

import json
import math
import os

from tensorboardX import SummaryWriter

from data_pipeline.jsonl import JsonlAppender


def train_flops_per_token(n_matmul_params: int, n_layers: int, seq_len: int, attn_dim: int,
                          backward_factor: float = 2.0) -> float:
    """Training FLOPs per token, as documented at the top of this module."""
    forward = 2.0 * n_matmul_params + 2.0 * 2.0 * seq_len * n_layers * attn_dim
    return forward * (1.0 + backward_factor)


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOPs utilization in [0, 1]: achieved FLOP/s over `peak_flops`, the peak of all
    devices doing the work (e.g. n_chips * 989e12 for bf16 H100s)."""
    return tokens_per_s * flops_per_token / peak_flops


class MetricsWriter:
    """Appends {"step": step, **metrics} to `<log_dir>/metrics.jsonl` (flushed each write, so a
    killed run keeps every complete line and its half-written one is cut off on resume; a resumed
    run appends, and the last line for a step wins) and
    the same scalars to TensorBoard in `log_dir`. Writes nothing when `enabled` is False
    (processes other than 0)."""

    def __init__(self, log_dir: str, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self._jsonl = self._tb = None
        if enabled:
            os.makedirs(log_dir, exist_ok=True)
            self._jsonl = JsonlAppender(os.path.join(log_dir, "metrics.jsonl"))
            self._tb = SummaryWriter(log_dir) if tensorboard else None

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        scalars = {}
        for name, value in metrics.items():
            try:
                scalars[name] = float(value)
            except (TypeError, ValueError) as e:
                raise ValueError(f"metric {name!r} at step {step} is not a scalar: {value!r}") from e
        # JSON has no NaN/Inf: write them as strings so the line stays valid JSON.
        line = {k: v if math.isfinite(v) else str(v) for k, v in scalars.items()}
        self._jsonl.write({"step": int(step), **line})
        if self._tb is not None:
            for name, value in scalars.items():
                self._tb.add_scalar(name, value, int(step))
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        self._jsonl = self._tb = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_metrics(log_dir: str) -> dict[int, dict]:
    """`<log_dir>/metrics.jsonl` as {step: metrics}; the last line for a step wins (a resumed run
    rewrites the steps after its checkpoint)."""
    out = {}
    with open(os.path.join(log_dir, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            m = json.loads(line)
            out[m["step"]] = m
    return out
