"""Metrics writer extras: training-curve PNG from metrics.jsonl, optional Weights & Biases."""
import json
import sys
import types

import numpy as np
import pytest
from PIL import Image

from progress_jax.train import curves
from progress_jax.train.metrics_writer import WANDB_ID_FILE, MetricsWriter


def _grpo_like(path, steps=30):
    """metrics.jsonl as a GRPO run writes it: rewards per step, a sparse probe, timings, one NaN."""
    rng = np.random.default_rng(0)
    with open(path / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"step": 0, "probe/overall": 0.2, "probe/format": 0.5}) + "\n")
        for s in range(1, steps + 1):
            m = {"step": s, "loss": 1.0 / s, "grad_norm": float(rng.uniform(0.5, 1.5)), "lr": 1e-6,
                 "reward/overall": 0.2 + 0.02 * s, "reward/format": min(1.0, 0.5 + 0.05 * s),
                 "reward/score": 0.1 + 0.01 * s, "time/rollout_s": 2.0, "time/update_s": 0.5,
                 "response_length": 100.0 + s}
            if s == 7:
                m["grad_norm"] = "nan"
            if s % 10 == 0:
                m.update({"probe/overall": 0.2 + 0.02 * s, "probe/format": 0.5 + 0.01 * s})
            f.write(json.dumps(m) + "\n")


def test_series_and_panels_group_by_family(tmp_path):
    _grpo_like(tmp_path)
    from progress_jax.train.metrics_writer import read_metrics

    data = curves.series(read_metrics(str(tmp_path)))
    steps, values = data["grad_norm"]
    assert 7 not in steps and len(steps) == 29  # the NaN point is left out
    assert list(data["probe/overall"][0]) == [0, 10, 20, 30]
    assert curves.panels(data) == [
        ("loss", ["loss"]),
        ("probe", ["probe/format", "probe/overall"]),
        ("reward", ["reward/format", "reward/overall", "reward/score"]),
        ("time", ["time/rollout_s", "time/update_s"]),
        ("grad_norm", ["grad_norm"]), ("lr", ["lr"]), ("response_length", ["response_length"]),
    ]


def test_plot_curves_writes_a_png(tmp_path):
    _grpo_like(tmp_path)
    path = curves.plot_curves(str(tmp_path))
    assert path == str(tmp_path / curves.CURVES_FILE)
    img = np.asarray(Image.open(path).convert("L"))
    # 7 panels on a 3-column grid: 3 rows of 4.5 x 3.2 inch panels at 100 dpi.
    assert img.shape == (960, 1350)
    assert (img < 128).mean() > 0.01  # lines, axes and text were drawn


def test_draw_plots_the_curves_once_metrics_exist(tmp_path):
    with MetricsWriter(str(tmp_path / "a"), tensorboard=False) as w:
        for s in range(1, 4):
            w.write(s, {"loss": 1.0 / s})
    assert not (tmp_path / "a" / curves.CURVES_FILE).exists()  # the writer writes metrics only
    curves.draw(str(tmp_path / "a"))
    assert (tmp_path / "a" / curves.CURVES_FILE).is_file()
    curves.draw(str(tmp_path / "b"))  # no metrics: nothing drawn, no error
    assert not (tmp_path / "b").exists()


def test_wandb_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ImportError, match="logging.wandb_project is 'proj' but the wandb package is not installed"):
        MetricsWriter(str(tmp_path), wandb_project="proj")
    MetricsWriter(str(tmp_path), tensorboard=False).close()  # off by default: wandb never imported


class _FakeRun:
    def __init__(self, **kwargs):
        self.kwargs, self.logged, self.finished = kwargs, [], False
        self.id = kwargs["id"] or "run123"

    def log(self, data, step):
        self.logged.append((step, dict(data)))

    def finish(self):
        self.finished = True


def test_wandb_gets_the_same_scalars_and_a_resumed_run_continues(tmp_path, monkeypatch):
    runs = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: runs.append(_FakeRun(**kw)) or runs[-1]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with MetricsWriter(str(tmp_path), tensorboard=False, wandb_project="proj", wandb_config={"lr": 0.1}) as w:
        w.write(1, {"loss": 2.0, "reward/overall": np.float32(0.5)})
        w.write(2, {"loss": float("nan")})
    run = runs[0]
    assert run.kwargs["project"] == "proj" and run.kwargs["config"] == {"lr": 0.1} and run.kwargs["id"] is None
    assert run.logged[0] == (1, {"loss": 2.0, "reward/overall": 0.5})
    assert run.logged[1][0] == 2 and np.isnan(run.logged[1][1]["loss"]) and run.finished
    assert (tmp_path / WANDB_ID_FILE).read_text().strip() == "run123"
    MetricsWriter(str(tmp_path), tensorboard=False, wandb_project="proj").close()
    assert runs[1].kwargs["id"] == "run123" and runs[1].kwargs["resume"] == "allow"
