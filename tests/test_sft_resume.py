"""Never lose a run: SFT as a real subprocess, SIGKILLed part-way and resumed, gives the losses of an
uninterrupted run; SIGTERM saves and exits cleanly; a NaN loss stops with the last good checkpoint."""

import os
import signal
import sys

import jax.numpy as jnp
import pytest

from progress_jax import handover
from progress_jax.train import checkpoint, guards, loop
from tests.killable import ROOT, finish, metrics, run_to_end, saved_steps, start, start_and_signal, write_records

STEPS = 8


def command(d, workdir):
    return [sys.executable, "-m", "progress_jax.main", "--config", os.path.join(ROOT, "configs/sft.py"),
            f"--config.workdir={workdir}", f"--config.data.train_files=('{d / 'sft.jsonl'}',)",
            f"--config.data.image_root={d / 'images'}", f"--config.train.steps={STEPS}",
            "--config.train.save_every=2", "--config.train.batch_size=2", "--config.train.micro_batch_size=2",
            "--config.train.demo_samples=0", "--config.lora.rank=8", "--config.data.length_buckets=(256,)",
            "--config.data.patch_buckets=(128,)", "--config.data.image_buckets=(8,)",
            "--config.data.max_pixels=3136", "--config.data.min_pixels=3136"]


def losses(workdir):
    return {step: m["loss"] for step, m in metrics(workdir).items()}


@pytest.mark.heavy
def test_killed_run_resumes_to_the_same_losses(tmp_path):
    write_records(tmp_path)
    reference = start(command(tmp_path, tmp_path / "ref"))  # uninterrupted, beside the killed run

    run = tmp_path / "run"
    assert start_and_signal(command(tmp_path, run), run, signal.SIGKILL, after_step=3)[0] == -signal.SIGKILL
    ckpt = run / "checkpoints"
    saved = saved_steps(run)
    assert saved and max(saved) < STEPS

    # Resumed; SIGTERM part-way: a clean exit 0 with a checkpoint of the step it stopped at.
    code, stopped = start_and_signal(command(tmp_path, run), run, signal.SIGTERM, after_step=max(saved) + 2)
    assert code == 0
    assert max(saved) + 2 <= stopped < STEPS and str(stopped) in os.listdir(ckpt)

    # Resumed to the end.
    run_to_end(command(tmp_path, run))
    finish(reference)
    expected = losses(tmp_path / "ref")
    assert sorted(expected) == list(range(1, STEPS + 1))
    got = losses(run)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert abs(got[step] - expected[step]) <= 1e-6, (step, got[step], expected[step])
    assert (run / "final" / handover.TRAINABLE_FILE).exists()
    params, meta = handover.load_trainable(str(run / "final"))
    assert meta["lora"]["rank"] == 8 and all("lora_" in k for k in params)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    """The loop itself, with a step that turns NaN at step 3."""
    class Data:
        def get_state(self):
            return {"next": 0}

    def step_fn(state, batch, step):
        s = state["step"] + 1
        return {"step": s, "w": state["w"] + 1.0}, {"loss": jnp.where(s >= 3, jnp.nan, 1.0), "grad_norm": 1.0}

    state = {"step": jnp.zeros((), jnp.int32), "w": jnp.zeros((4,))}
    ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), save_every=1, keep=5, async_save=False)
    with pytest.raises(guards.NonFiniteLossError, match=r"step 3: loss is nan.*step 2"):
        loop.run(step_fn, state, lambda: None, Data(), loop.Options(10, str(tmp_path), save_every=1, keep=5, ckpt=ckpt))
    ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), save_every=1, keep=5, async_save=False)
    assert ckpt.all_steps() == [1, 2]
    restored, data_state, _ = ckpt.restore(None, checkpoint.abstract_like(state))
    assert float(restored["w"][0]) == 2.0 and data_state == {"next": 0}
