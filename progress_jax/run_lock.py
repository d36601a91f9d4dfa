"""One job per run directory: a job holds `<directory>/job.lock` (its host, pid, start time and
command) while it runs; a second job on the directory refuses, naming the owner. The lock is an
flock on the file, so the kernel releases it when the owner dies however it dies; the file left
behind is then a stale lock, named when the next job takes the directory over. Several processes:
process 0 holds the lock for the job, and every process stops when it cannot be taken."""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import socket
import sys

import jax

from progress_jax.errors import UserError

log = logging.getLogger(__name__)

LOCK_FILE = "job.lock"


class DirectoryInUse(UserError):
    """Another job holds the run directory (or may: a lock left by another host)."""


def _describe(owner: dict) -> str:
    return (f"pid {owner.get('pid')} on host {owner.get('host')}, started {owner.get('started')}: "
            f"{owner.get('command')}")


def _read(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 1 << 16).decode(errors="replace")
    try:
        owner = json.loads(text)
    except ValueError:
        return {"host": "?", "pid": "?", "started": "?", "command": text.strip()[:200]} if text.strip() else {}
    return owner if isinstance(owner, dict) else {}


def _make_directory(directory: str) -> list[str]:
    """Create `directory`; returns the directories created, deepest first."""
    if not directory:
        raise UserError("config key workdir is empty: name the directory the job writes in")
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise UserError(f"run directory {directory} is a file, not a directory")
    created, d = [], os.path.abspath(directory)
    while not os.path.exists(d):
        created.append(d)
        d = os.path.dirname(d)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the run directory {directory}: {e.strerror}") from e
    return created


class Lock:
    def __init__(self, directory: str, fd: int, created: list[str]):
        self.directory, self.fd, self.created = directory, fd, created

    def release(self) -> None:
        """Remove the lock file, then drop the flock (a job waiting on the old file retries on the
        new one); directories the lock created and the job left empty go too."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.directory, LOCK_FILE))
        os.close(self.fd)
        for d in self.created:
            try:
                os.rmdir(d)
            except OSError:
                break


def acquire(directory: str) -> Lock:
    """Take `directory`'s lock (creating the directory), held until `Lock.release()`."""
    created = _make_directory(directory)
    path = os.path.join(directory, LOCK_FILE)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot write in the run directory {directory}: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read(fd)
            os.close(fd)
            raise DirectoryInUse(f"{directory} is in use by another job ({_describe(owner)}); wait for it to end or "
                                 "use another directory") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the owner released (removed) the file between our open and lock: take the new one
    owner = _read(fd)
    host = socket.gethostname()
    if owner and owner.get("host") != host:
        os.close(fd)  # its owner's flock may not reach this host (a network file system): not ours to judge
        raise DirectoryInUse(f"{directory} is locked by a job on another host ({_describe(owner)}); if that job is "
                             f"no longer running, delete {path}")
    if owner:
        log.warning("%s: stale lock of a job that ended without releasing it (%s); taking the directory over",
                    directory, _describe(owner))
    me = {"host": host, "pid": os.getpid(), "started": datetime.datetime.now().isoformat(timespec="seconds"),
          "command": " ".join(sys.argv)}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(me).encode() + b"\n")
    os.fsync(fd)
    return Lock(directory, fd, created)


@contextlib.contextmanager
def hold(directory: str):
    """Hold `directory` for the job: process 0 takes the lock, every process learns whether it did."""
    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = acquire(directory)
        except UserError as e:
            error = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        taken = multihost_utils.broadcast_one_to_all(error is None)
        if not taken and error is None:
            error = DirectoryInUse(f"process 0 could not take the run directory {directory} (its error says why)")
    if error is not None:
        raise error
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def job_directory(config) -> str:
    """The directory a job writes in: eval's output directory, else the workdir."""
    if config.job == "eval":
        from progress_jax.eval import runner

        return runner.output_dir(config)
    return config.workdir
