"""Never lose a GRPO run: the job as a real subprocess, SIGKILLed part-way, SIGTERMed after resuming
(a clean exit 0 with a checkpoint), then resumed to the end, logs the same per-step rewards,
losses and probe rewards as an uninterrupted run. The reward is a user's own function named in the
config (`grpo.reward = module:function`): an arbitrary function of the text, so that a random tiny
model gets rewards that differ within a group and its weights actually move."""

import os
import signal
import sys

import pytest

from progress_jax import handover
from tests.killable import ROOT, finish, metrics, run_to_end, saved_steps, start, start_and_signal, write_records

STEPS = 6


def toy_rewards(texts, records):
    return [{"overall": sum(map(ord, t)) % 97 / 97.0} for t in texts]


def command(d, workdir):
    return [sys.executable, "-m", "progress_jax.main", "--config", os.path.join(ROOT, "configs/grpo.py"),
            f"--config.workdir={workdir}", f"--config.data.train_files=('{d / 'rl.jsonl'}',)",
            f"--config.data.image_root={d / 'images'}", f"--config.train.steps={STEPS}",
            "--config.train.save_every=1", "--config.grpo.rollout_batch_size=2", "--config.train.batch_size=2",
            "--config.grpo.n=2", "--config.train.micro_batch_size=2", "--config.train.lr=1e-2",
            "--config.sampling.max_new_tokens=8", "--config.demo.warm_start=False", "--config.demo.evaluate=False",
            "--config.grpo.reward=tests.test_grpo_resume:toy_rewards",
            "--config.grpo.probe_every=2", "--config.grpo.probe_batches=1", "--config.lora.rank=8",
            "--config.data.length_buckets=(256,)", "--config.data.patch_buckets=(128,)",
            "--config.data.image_buckets=(8,)", "--config.data.max_pixels=3136", "--config.data.min_pixels=3136"]


KEYS = ("reward/overall", "loss", "grad_norm", "kl", "entropy", "probe/overall", "probe/overall_key1")


@pytest.mark.heavy
def test_killed_grpo_run_resumes_to_the_same_steps(tmp_path):
    write_records(tmp_path, answers=False)
    reference = start(command(tmp_path, tmp_path / "ref"))  # uninterrupted, beside the killed run

    run = tmp_path / "run"
    assert start_and_signal(command(tmp_path, run), run, signal.SIGKILL, after_step=2)[0] == -signal.SIGKILL
    saved = saved_steps(run)
    assert saved and max(saved) < STEPS - 2

    code, stopped = start_and_signal(command(tmp_path, run), run, signal.SIGTERM, after_step=max(saved) + 1)
    assert code == 0
    assert stopped < STEPS and stopped in saved_steps(run)
    assert not (run / "final").exists()

    run_to_end(command(tmp_path, run))
    finish(reference)
    expected = metrics(tmp_path / "ref")
    assert sorted(expected) == list(range(0, STEPS + 1))  # step 0: the probe before training
    assert len({round(expected[s]["probe/overall"], 6) for s in (0, 2, 4, 6)}) > 1, "the policy never moved"
    got = metrics(run)
    assert sorted(got) == list(range(0, STEPS + 1))
    for step in range(STEPS + 1):
        for k in KEYS:
            if k in expected[step]:
                assert abs(got[step][k] - expected[step][k]) <= 1e-6, (step, k, got[step][k], expected[step][k])
    params, meta = handover.load_trainable(str(run / "final"))
    assert meta["lora"]["rank"] == 8 and all("lora_" in k for k in params)
