"""Helpers for the kill-and-resume tests: a job as a real subprocess, signalled once its own
metrics reach a step and a checkpoint exists."""

import atexit
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def xla_flags(devices: int) -> str:
    """XLA_FLAGS for a test process: `devices` simulated CPU devices, compiled without XLA's and
    LLVM's expensive optimisations. The tests' programs are tiny, so compiling dominates their
    time; this cuts the suite's time by about a quarter and changes no result beyond rounding."""
    return (f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
            " --xla_llvm_disable_expensive_passes=true")


# One persistent compilation cache for the jobs the tests start: the reference run compiles, the
# killed and resumed runs (and other tests' jobs of the same shapes) load the same programs instead
# of compiling them again. Made by the first process that imports this module (pytest itself, or
# its controller under pytest -n) and shared with its workers through the environment.
if "PROGRESS_JAX_TESTS_XLA_CACHE" not in os.environ:
    os.environ["PROGRESS_JAX_TESTS_XLA_CACHE"] = tempfile.mkdtemp(prefix="progress_jax_tests_xla_")
    atexit.register(shutil.rmtree, os.environ["PROGRESS_JAX_TESTS_XLA_CACHE"], ignore_errors=True)
XLA_CACHE = os.environ["PROGRESS_JAX_TESTS_XLA_CACHE"]
ENV = {**os.environ, "XLA_FLAGS": xla_flags(1), "JAX_PLATFORMS": "cpu",
       "JAX_COMPILATION_CACHE_DIR": XLA_CACHE, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
       "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def write_records(d, n=12, answers=True):
    """<d>/sft.jsonl (answers=True: with four-block responses) or <d>/rl.jsonl (without) and
    <d>/images: vision-demo records, 2 demo frames + 1 observation, 56x56 random images."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        rid = f"traj{i}"
        os.makedirs(d / "images" / rid)
        for f in ("d0.jpg", "d1.jpg", "obs.jpg"):
            Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)).save(d / "images" / rid / f)
        score = int(rng.integers(0, 100))
        record = {
            "id": rid, "task_goal": f"put block {i} in the box", "visual_demo": ["d0.jpg", "d1.jpg"],
            "total_steps": "1", "stage_to_estimate": ["obs.jpg"], "closest_idx": "1", "delta": "+5%",
            "progress_score": f"{score}%", "data_source": "test"}
        if answers:
            record["response"] = (f"<ref_think>near the first frame</ref_think><ref>1</ref>"
                                  f"<score_think>a little after it</score_think><score>{score}%</score>")
        lines.append(json.dumps(record))
    (d / ("sft.jsonl" if answers else "rl.jsonl")).write_text("\n".join(lines) + "\n")


def read_lines(path):
    """Complete lines only: the run may be half-way through writing the last one."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line for line in f.read().split("\n")[:-1] if line.strip()]


def metrics(workdir) -> dict[int, dict]:
    """{step: metrics line}; the last line for a step wins."""
    out = {}
    for line in read_lines(os.path.join(workdir, "metrics.jsonl")):
        m = json.loads(line)
        out[m["step"]] = m
    return out


def saved_steps(workdir):
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def start_and_signal(command, workdir, sig, after_step):
    """Start `command`; once this run itself has logged `after_step` (a resumed run's workdir
    already holds the killed run's lines) and a checkpoint was completed, send `sig`.
    Returns (exit code, which must be 0 or -SIGKILL; the last step this run logged)."""
    path = os.path.join(workdir, "metrics.jsonl")
    old_lines = len(read_lines(path))
    proc = start(command)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        new = [json.loads(line)["step"] for line in read_lines(path)[old_lines:]]
        if new and max(new) >= after_step and saved_steps(workdir):
            proc.send_signal(sig)
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode in (0, -signal.SIGKILL), err[-3000:]
    new = [json.loads(line)["step"] for line in read_lines(path)[old_lines:]]
    return proc.returncode, max(new, default=None)


def run_to_end(command):
    done = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def start(command, env=None):
    """`command` started in the background (stderr kept), so that a test runs an independent
    reference run beside the runs it kills and resumes: a compile leaves a core idle on 2 cores."""
    return subprocess.Popen(command, cwd=ROOT, env=env or ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def finish(proc, code=0, timeout=600):
    """Waits for a `start`ed process; asserts its exit code. Returns its stderr."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == code, err[-3000:]
    return err
