"""Many processes, the same result (docs/multihost.md): SFT, GRPO and evaluation started the
README's way as 2 processes x 4 CPU devices on localhost (JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID, gloo collectives) log the same per-step losses (and GRPO
rewards) as 1 process x 8 devices, and the eval job's predictions are the 1-process validation's
answers; a run checkpointed by two processes resumes on one. The only test of this path: every job runs as real subprocesses."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from tests import killable
from tests.killable import ENV, ROOT, metrics, write_records

TOL = 1e-5
STEPS = 2
COMMON = ["--config.lora.rank=8", "--config.data.length_buckets=(256,)", "--config.data.patch_buckets=(512,)",
          "--config.data.image_buckets=(32,)", "--config.data.max_pixels=3136", "--config.data.min_pixels=3136"]


def toy_rewards(texts, records):
    """A reward that differs within a group on a random tiny model, so the update is not zero."""
    return [{"overall": sum(map(ord, t)) % 97 / 97.0} for t in texts]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args, processes: int) -> list[subprocess.Popen]:
    """`python -m progress_jax.main ARGS` started as `processes` processes with 8 / processes CPU
    devices each."""
    command = [sys.executable, "-m", "progress_jax.main", *args]
    env = {**ENV, "XLA_FLAGS": killable.xla_flags(8 // processes)}
    if processes > 1:
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}", JAX_NUM_PROCESSES=str(processes))
    return [killable.start(command, {**env, "JAX_PROCESS_ID": str(i)} if processes > 1 else env)
            for i in range(processes)]


def wait(*launches):
    """Waits for every process of the `start`ed launches; fails with the stderr of any that does
    not exit 0. Independent launches run side by side: a compile leaves a core idle on 2 cores."""
    procs = [p for launch in launches for p in launch]
    errors = []
    for i, p in enumerate(procs):
        try:
            _, err = p.communicate(timeout=400)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        if p.returncode:
            errors.append(f"process {i} exit {p.returncode}:\n{err[-3000:]}")
    assert not errors, "\n".join(errors)


def assert_same(got: dict, want: dict, keys, steps):
    for s in steps:
        for k in keys:
            assert got[s][k] == pytest.approx(want[s][k], abs=TOL), (s, k, got[s][k], want[s][k])


def sft_args(d, workdir):
    return ["--config", os.path.join(ROOT, "configs/sft.py"), f"--config.workdir={workdir}",
            f"--config.data.train_files=('{d / 'sft.jsonl'}',)", f"--config.data.image_root={d / 'images'}",
            f"--config.train.steps={STEPS}", "--config.train.save_every=1", "--config.train.batch_size=8",
            "--config.train.micro_batch_size=8", "--config.train.demo_samples=0", *COMMON]


def val_args(d):
    """Validation at the last step on the RL records as a benchmark (every process generates, process 0 writes)."""
    return [f"--config.train.val_files=('{d / 'rl.jsonl'}',)", f"--config.train.val_image_root={d / 'images'}",
            f"--config.train.val_every={STEPS}", "--config.train.val_max_new_tokens=8",
            "--config.train.val_log_samples=3"]


def grpo_args(d, workdir):
    return ["--config", os.path.join(ROOT, "configs/grpo.py"), f"--config.workdir={workdir}",
            f"--config.data.train_files=('{d / 'rl.jsonl'}',)", f"--config.data.image_root={d / 'images'}",
            "--config.train.steps=2", "--config.grpo.rollout_batch_size=4", "--config.train.batch_size=4",
            "--config.grpo.n=2", "--config.train.micro_batch_size=8", "--config.train.lr=1e-2",
            "--config.sampling.max_new_tokens=8", "--config.grpo.reward=tests.test_multihost:toy_rewards",
            "--config.grpo.probe_every=0", "--config.demo.warm_start=False", "--config.demo.evaluate=False", *COMMON]


def eval_args(d, out_dir, trained):
    """Greedy, with validation's answer length: the answers validation gave at the same weights."""
    return ["--config", os.path.join(ROOT, "configs/eval.py"), f"--config.eval.out_dir={out_dir}",
            f"--config.eval.bench_files=('{d / 'rl.jsonl'}',)", f"--config.data.image_root={d / 'images'}",
            f"--config.eval.trained={trained}", "--config.sampling.batch_size=8", "--config.sampling.temperature=0.0",
            "--config.sampling.max_new_tokens=8", *COMMON]


@pytest.mark.heavy
def test_two_processes_match_one(tmp_path):
    sft_dir, rl_dir = tmp_path / "sft", tmp_path / "rl"
    sft_dir.mkdir()
    rl_dir.mkdir()
    write_records(sft_dir, n=12)  # 8 a step (the last 4 wait for the next epoch)
    write_records(rl_dir, n=8, answers=False)

    # The 1-process references: SFT (validating at its last step) and GRPO, side by side.
    wait(start(sft_args(sft_dir, tmp_path / "sft1") + val_args(rl_dir), 1), start(grpo_args(rl_dir, tmp_path / "grpo1"), 1))

    # SFT: 1 x 8 devices, then 2 x 4 devices: the same losses step by step, and the same validation.
    one = metrics(tmp_path / "sft1")
    assert sorted(one) == list(range(1, STEPS + 1))
    wait(start(sft_args(sft_dir, tmp_path / "sft2") + val_args(rl_dir), 2))
    assert_same(metrics(tmp_path / "sft2"), one, ("loss", "grad_norm"), range(1, STEPS + 1))
    assert_same(metrics(tmp_path / "sft2"), one, ("val/afrr", "val/vision/afrr"), (STEPS,))
    samples = [(tmp_path / d / "val_samples.jsonl").read_text().splitlines() for d in ("sft1", "sft2")]
    assert len(samples[0]) == 3 and samples[0] == samples[1]  # written once, by process 0

    # The 2-process run's step-1 checkpoint resumed by 1 process gives step 2 again (the data
    # iterator's state counts global batches); its programs come from the compilation cache.
    # Beside it, the eval job as 2 processes on the 1-process run's final weights.
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "sft2" / "checkpoints" / "1", resumed / "checkpoints" / "1")
    wait(start(sft_args(sft_dir, resumed), 1), start(eval_args(rl_dir, tmp_path / "eval2", tmp_path / "sft1" / "final"), 2))
    got = metrics(resumed)
    assert sorted(got) == [2]
    assert_same(got, one, ("loss", "grad_norm"), (2,))

    # Evaluation: the answers the 1-process validation gave at the same (final) weights, written once.
    def answers(path):
        return sorted((p["line"], p["response"]) for p in map(json.loads, open(path)))

    two = answers(tmp_path / "eval2" / "predictions.jsonl")
    assert len(two) == 8 and two == answers(tmp_path / "sft1" / "val" / f"step_{STEPS:06d}" / "predictions.jsonl")

    # GRPO: the same rewards and losses.
    wait(start(grpo_args(rl_dir, tmp_path / "grpo2"), 2))
    one, two = metrics(tmp_path / "grpo1"), metrics(tmp_path / "grpo2")
    assert sorted(one) == sorted(two) == [1, 2]
    assert_same(two, one, ("reward/overall", "loss", "grad_norm", "kl"), (1, 2))


@pytest.mark.parametrize("env, message", [
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "missing: JAX_COORDINATOR_ADDRESS"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
     "JAX_PROCESS_ID 2 is outside 0..1"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
     "must be integers"),
])
def test_incomplete_multi_process_variables_are_refused(monkeypatch, env, message):
    from progress_jax import distributed

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=message):
        distributed.maybe_initialize_distributed()


def test_one_process_starts_nothing(monkeypatch):
    from progress_jax import distributed

    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri",
              "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "1")  # a one-task SLURM job is one process
    distributed.maybe_initialize_distributed()
    import jax

    assert not jax.distributed.is_initialized()


def test_a_start_up_that_does_not_complete_is_one_line_within_the_timeout():
    """Process 1 with no coordinator listening, and process 0 of 2 alone: each ends after
    PROGRESS_JAX_START_TIMEOUT (2 s) with one line and exit status 1 (JAX itself waits 300 s and
    aborts blaming "another task"); the default on one host is 30 s."""
    import time

    from progress_jax import distributed

    port = free_port()
    code = "from progress_jax import distributed; distributed.maybe_initialize_distributed()"
    procs = {i: subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env={**ENV, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port + i}",
                                                 "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i),
                                                 distributed.START_TIMEOUT: "2"})
             for i in (0, 1)}  # other ports: each alone
    began = time.time()
    out = {i: p.communicate(timeout=120) for i, p in procs.items()}
    assert time.time() - began < 60
    for i, p in procs.items():
        assert p.returncode == 1 and "Traceback" not in out[i][1], out[i][1][-2000:]
    assert out[1][1].strip().splitlines()[-1] == (
        f"error: process 1 of 2: nothing answers at the coordinator address 127.0.0.1:{port + 1} (Connection refused) "
        "after 2 s: start process 0 with the same JAX_COORDINATOR_ADDRESS, or correct its host and port")
    assert out[0][1].strip().splitlines()[-1].startswith(
        f"error: process 0 of 2: not all 2 processes joined the coordinator at 127.0.0.1:{port} within 2 s: one of "
        "processes 0..1 other than 0 is missing")
    assert distributed.start_timeout({}, "127.0.0.1:1234") == 30 and distributed.start_timeout({}, "node7:1234") == 300


def _processes(code, counts, args=(), **env):
    """`python -c code ARGS` as processes 0..len(counts)-1 of one coordinator, process i saying
    JAX_NUM_PROCESSES counts[i]; one CPU device each. A long start-up timeout: a loaded machine may
    take a while to import JAX in every process, and a start-up that completes does not wait for it."""
    port = free_port()
    env = {"PROGRESS_JAX_START_TIMEOUT": "300", **env}
    return [subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             env={**ENV, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": str(n),
                                  "JAX_PROCESS_ID": str(i), **env})
            for i, n in enumerate(counts)]


def _last_lines(procs, timeout=300):
    """(exit status, last stderr line) of each process; kills them all if one outlives `timeout`."""
    out = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=timeout)
            out.append((p.returncode, err.strip().splitlines()[-1] if err.strip() else "", err))
    finally:
        for p in procs:
            p.kill()
    return out


def test_processes_that_disagree_on_the_process_count_each_say_so_in_one_line():
    """Process 1 says 3 to a coordinator started for 2: both join, and JAX runs 2 processes without
    a word; each now stops at once naming every process's count. (A coordinator started for 3 with
    process 1 saying 2 never completes the start-up: the timeout's line, below, where process 1
    reached the coordinator and so does not blame the address.)"""
    from progress_jax import distributed

    code = "from progress_jax import distributed, errors; errors.one_line(distributed.maybe_initialize_distributed)"
    for i, (rc, line, err) in enumerate(_last_lines(_processes(code, (2, 3)))):
        assert rc == 1 and "Traceback" not in err, err[-2000:]
        assert line.startswith(f"error: process {i}: the processes disagree on JAX_NUM_PROCESSES (process 0 says 2, "
                               "process 1 says 3; the coordinator at 127.0.0.1:"), line
        assert line.endswith(" started 2): start every process with the same JAX_NUM_PROCESSES"), line
    line = distributed._start_failed("127.0.0.1:1", 2, 1, 3, answered=True)
    assert line.startswith("process 1 of 2: not all 2 processes joined the coordinator at 127.0.0.1:1 within 3 s") and \
        "disagree on JAX_NUM_PROCESSES (this one says 2)" in line, line


PEER = """
import os, sys
import numpy as np
from progress_jax import distributed
distributed.maybe_initialize_distributed()
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
distributed.watch_checkpoints(sys.argv[1])
mesh = jax.sharding.Mesh(np.array(jax.devices()), ("d",))
x = jax.make_array_from_callback((3,), NamedSharding(mesh, P("d")), lambda i: np.ones(3)[i])
total = jax.jit(lambda x: x.sum(), out_shardings=NamedSharding(mesh, P()))
for step in range(10_000):
    total(x).block_until_ready()  # a collective over the three processes
    if step == 3 and jax.process_index() == 2:
        os.kill(os.getpid(), 9)
"""


def test_a_killed_peer_is_one_line_naming_it_and_the_last_checkpoint(tmp_path):
    """Process 2 of 3 killed between collectives: process 0 sees its socket close, tells process 1,
    and both end at once with one line naming process 2 and the newest checkpoint (JAX alone
    blocks them in the collective until its heartbeat timeout, then aborts with a gloo error)."""
    for step in ("1", "2", "2.orbax-checkpoint-tmp"):
        (tmp_path / step).mkdir()
    out = _last_lines(_processes(PEER, (3, 3, 3), args=(str(tmp_path),)))
    assert out[2][0] == -9
    for i in (0, 1):
        rc, line, err = out[i]
        assert rc == 1 and "Traceback" not in err, err[-2000:]
        assert line == (f"error: process {i} of 3: process 2 stopped (killed or crashed), so the collectives cannot go on; "
                        f"the last checkpoint is {tmp_path / '2'}: rerun every process to resume from it"), line
