"""One job per run directory (progress_jax/run_lock.py): a second job refuses in one line naming the
owner; a lock left by a killed job is named and taken over; several processes hold one lock."""
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from progress_jax import run_lock
from tests.killable import ENV, ROOT, write_records
from tests.test_multihost import free_port
from tests.test_sft_resume import command as sft_command

HOLD = "import sys, time; from progress_jax import run_lock; run_lock.acquire(sys.argv[1]); print('held', flush=True); time.sleep(120)"


def _holder(directory):
    """A process holding `directory`'s lock, once it says so."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def test_a_second_holder_is_refused_naming_the_first_and_the_lock_goes_with_the_job(tmp_path):
    lock = run_lock.acquire(str(tmp_path / "run"))
    with pytest.raises(run_lock.DirectoryInUse, match=f"in use by another job \\(pid {os.getpid()} on host "
                                                      f"{socket.gethostname()}"):
        run_lock.acquire(str(tmp_path / "run"))
    lock.release()
    assert os.listdir(tmp_path) == []  # the lock file, and the directory it created and the job left empty
    with run_lock.hold(str(tmp_path / "run" / "a")):
        assert json.loads((tmp_path / "run" / "a" / run_lock.LOCK_FILE).read_text())["pid"] == os.getpid()
        (tmp_path / "run" / "notes").write_text("")
    assert os.listdir(tmp_path / "run") == ["notes"]


def test_a_killed_owner_leaves_a_stale_lock_that_is_named_and_taken_over(tmp_path, caplog):
    proc = _holder(tmp_path)
    with pytest.raises(run_lock.DirectoryInUse, match=f"pid {proc.pid} "):
        run_lock.acquire(str(tmp_path))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lock = run_lock.acquire(str(tmp_path))
    assert f"stale lock of a job that ended without releasing it (pid {proc.pid} " in caplog.text
    assert json.loads((tmp_path / run_lock.LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_lock_from_another_host_is_refused_with_the_way_out(tmp_path):
    path = tmp_path / run_lock.LOCK_FILE
    path.write_text(json.dumps({"host": "node-7", "pid": 123, "started": "2026-01-01T00:00:00", "command": "x"}))
    with pytest.raises(run_lock.DirectoryInUse, match=f"on another host \\(pid 123 on host node-7.*delete {path}"):
        run_lock.acquire(str(tmp_path))
    assert path.exists()


def test_a_workdir_that_is_a_file_or_empty_is_one_line(tmp_path):
    (tmp_path / "f").write_text("notes")
    with pytest.raises(run_lock.UserError, match="is a file, not a directory"):
        run_lock.acquire(str(tmp_path / "f"))
    with pytest.raises(run_lock.UserError, match="config key workdir is empty"):
        run_lock.acquire("")


@pytest.mark.parametrize("job", ["sft", "eval"])
def test_a_job_on_a_held_directory_refuses_in_one_line_and_writes_nothing(tmp_path, job):
    write_records(tmp_path)
    run = tmp_path / "run"
    if job == "sft":
        cmd = sft_command(tmp_path, run)
    else:
        cmd = [sys.executable, "-m", "progress_jax.main", "--config", os.path.join(ROOT, "configs/eval.py"),
               f"--config.eval.out_dir={run}", f"--config.eval.bench_files=('{tmp_path / 'sft.jsonl'}',)",
               f"--config.data.image_root={tmp_path / 'images'}"]
    holder = _holder(run)
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {run} is in use by another job (pid {holder.pid} ")
    assert os.listdir(run) == [run_lock.LOCK_FILE]  # nothing written beside the owner's lock


SCRIPT = """
import json, os, sys
from progress_jax import distributed, run_lock
distributed.maybe_initialize_distributed()
import jax
from jax.experimental.multihost_utils import sync_global_devices
with run_lock.hold(sys.argv[1]):
    owner = json.load(open(os.path.join(sys.argv[1], run_lock.LOCK_FILE)))
    sync_global_devices("read")  # process 0 releases only after both have read
    print(json.dumps({"process": jax.process_index(), "pid": os.getpid(), "owner": owner["pid"]}), flush=True)
"""


def _processes(directory):
    env = {**ENV, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{free_port()}", "JAX_NUM_PROCESSES": "2"}
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(directory)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**env, "JAX_PROCESS_ID": str(i)})
             for i in range(2)]
    return [(p.returncode, out, err) for p in procs for out, err in [p.communicate(timeout=120)]]


def test_several_processes_hold_one_lock_and_all_stop_when_it_is_taken(tmp_path):
    done = _processes(tmp_path / "run")
    assert [rc for rc, _, _ in done] == [0, 0], [err[-2000:] for _, _, err in done]
    seen = [json.loads(out.strip().splitlines()[-1]) for _, out, _ in done]
    assert seen[0]["owner"] == seen[1]["owner"] == seen[0]["pid"]  # process 0's lock, for both
    assert not (tmp_path / "run").exists()

    holder = _holder(tmp_path / "run")
    try:
        done = _processes(tmp_path / "run")
    finally:
        holder.kill()
        holder.wait()
    assert [rc for rc, _, _ in done] == [1, 1]
    assert f"in use by another job (pid {holder.pid} " in done[0][2]
    assert "process 0 could not take the run directory" in done[1][2]
