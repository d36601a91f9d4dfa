"""Never lose a run: SFT as a real subprocess, SIGKILLed part-way and resumed, gives the losses of an
uninterrupted run; SIGTERM saves and exits cleanly; a NaN loss stops with the last good checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from progress_jax.train import checkpoint, guards, loop, metrics_writer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8


def write_records(d, n=12):
    """Vision-demo records (2 demo frames + 1 observation, 56x56 images) with four-block answers."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        rid = f"traj{i}"
        os.makedirs(d / "images" / rid)
        for f in ("d0.jpg", "d1.jpg", "obs.jpg"):
            Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)).save(d / "images" / rid / f)
        score = int(rng.integers(0, 100))
        lines.append(json.dumps({
            "id": rid, "task_goal": f"put block {i} in the box", "visual_demo": ["d0.jpg", "d1.jpg"],
            "total_steps": "1", "stage_to_estimate": ["obs.jpg"], "closest_idx": "1", "delta": "+5%",
            "progress_score": f"{score}%", "data_source": "test",
            "response": f"<ref_think>near the first frame</ref_think><ref>1</ref>"
                        f"<score_think>a little after it</score_think><score>{score}%</score>"}))
    (d / "sft.jsonl").write_text("\n".join(lines) + "\n")


def command(d, workdir):
    return [sys.executable, "-m", "progress_jax.main", "--config", os.path.join(ROOT, "configs/sft.py"),
            f"--config.workdir={workdir}", f"--config.data.train_files=('{d / 'sft.jsonl'}',)",
            f"--config.data.image_root={d / 'images'}", f"--config.train.steps={STEPS}",
            "--config.train.save_every=2", "--config.train.batch_size=2", "--config.train.micro_batch_size=2",
            "--config.train.demo_samples=0", "--config.lora.rank=8", "--config.data.length_buckets=(256,)",
            "--config.data.patch_buckets=(128,)", "--config.data.image_buckets=(8,)",
            "--config.data.max_pixels=3136", "--config.data.min_pixels=3136"]


ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}


def losses(workdir):
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            m = json.loads(line)
            out[m["step"]] = m["loss"]  # the last line for a step wins
    return out


def read_lines(path):
    """Complete lines only: the run may be half-way through writing the last one."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line for line in f.read().split("\n")[:-1] if line.strip()]


def saved_steps(workdir):
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def start_and_signal(d, workdir, sig, after_step):
    """Start a run; once this run itself has logged `after_step` (a resumed run's workdir already holds
    the killed run's lines) and a checkpoint was completed, send `sig`. Returns the exit code."""
    path = os.path.join(workdir, "metrics.jsonl")
    old_lines = len(read_lines(path))
    proc = subprocess.Popen(command(d, workdir), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        new = [json.loads(line)["step"] for line in read_lines(path)[old_lines:]]
        if new and max(new) >= after_step and saved_steps(workdir):
            proc.send_signal(sig)
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode in (0, -signal.SIGKILL), err[-3000:]
    return proc.returncode


def test_killed_run_resumes_to_the_same_losses(tmp_path):
    write_records(tmp_path)
    ref = subprocess.run(command(tmp_path, tmp_path / "ref"), cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-3000:]
    expected = losses(tmp_path / "ref")
    assert sorted(expected) == list(range(1, STEPS + 1))

    run = tmp_path / "run"
    assert start_and_signal(tmp_path, run, signal.SIGKILL, after_step=3) == -signal.SIGKILL
    ckpt = run / "checkpoints"
    saved = saved_steps(run)
    assert saved and max(saved) < STEPS

    # Resumed; SIGTERM part-way: a clean exit 0 with a checkpoint of the step it stopped at.
    assert start_and_signal(tmp_path, run, signal.SIGTERM, after_step=max(saved) + 2) == 0
    stopped = max(losses(run))
    assert max(saved) + 2 <= stopped < STEPS and str(stopped) in os.listdir(ckpt)

    # Resumed to the end.
    end = subprocess.run(command(tmp_path, run), cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert end.returncode == 0, end.stderr[-3000:]
    got = losses(run)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert abs(got[step] - expected[step]) <= 1e-6, (step, got[step], expected[step])
    assert (run / "final" / loop.TRAINABLE_FILE).exists()
    params, meta = loop.load_trainable(str(run / "final"))
    assert meta["lora"]["rank"] == 8 and all("lora_" in k for k in params)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    """The loop itself, with a step that turns NaN at step 3."""
    class Data:
        def get_state(self):
            return {"next": 0}

    def step_fn(state, frozen, batch):
        s = state["step"] + 1
        return {"step": s, "w": state["w"] + 1.0}, {"loss": jnp.where(s >= 3, jnp.nan, 1.0), "grad_norm": 1.0}

    state = {"step": jnp.zeros((), jnp.int32), "w": jnp.zeros((4,))}
    ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), save_every=1, keep=5, async_save=False)
    with metrics_writer.MetricsWriter(str(tmp_path), tensorboard=False) as writer:
        with pytest.raises(guards.NonFiniteLossError, match=r"step 3: loss is nan.*step 2"):
            loop.train(step_fn, state, None, lambda: (None, 1), Data(), 10, ckpt, writer)
    assert ckpt.all_steps() == [1, 2]
    restored, data_state, _ = ckpt.restore(None, checkpoint.abstract_like(state))
    assert float(restored["w"][0]) == 2.0 and data_state == {"next": 0}
