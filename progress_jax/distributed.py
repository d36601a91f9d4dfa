"""The processes and devices of a job: jax.distributed start-up across processes, the mesh."""

from __future__ import annotations

import atexit
import logging
import os
import selectors
import socket
import sys
import threading
import time

import jax
from jax._src import distributed as jax_distributed

from progress_jax import sharding
from progress_jax.errors import BadInput

log = logging.getLogger(__name__)

# Seconds every process may take to join the coordinator before the start-up is given up with one line
# (JAX's own wait is 300 s, then an abort that blames "another task").
START_TIMEOUT = "PROGRESS_JAX_START_TIMEOUT"
LOCAL_START_TIMEOUT, REMOTE_START_TIMEOUT = 30, 300


def start_timeout(env, address: str | None) -> int:
    """PROGRESS_JAX_START_TIMEOUT, else 30 s for a coordinator on this host, 300 s elsewhere."""
    if env.get(START_TIMEOUT):
        try:
            value = int(env[START_TIMEOUT])
        except ValueError:
            value = 0
        if value <= 0:
            raise BadInput(f"{START_TIMEOUT} must be a positive number of seconds, got {env[START_TIMEOUT]!r}")
        return value
    host = (address or "").rsplit(":", 1)[0].strip("[]")
    local = host in ("localhost", "::1", socket.gethostname()) or host.startswith("127.")
    return LOCAL_START_TIMEOUT if local else REMOTE_START_TIMEOUT


def _unreachable(address: str) -> str | None:
    """Why nothing answers at host:port (None when a connection opens)."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=3).close()
        return None
    except (OSError, ValueError) as e:
        return getattr(e, "strerror", None) or str(e)


def _start_failed(address: str | None, n: int | None, i: int | None, seconds: int, answered: bool) -> str:
    """The one line for a start-up that did not complete in time: the address nothing answers
    at (and never did: `answered` says whether it did during the wait), or the processes that did
    not join."""
    who = f"process {i} of {n}" if i is not None else "this process"
    if address and i != 0 and not answered:
        why = _unreachable(address)
        if why is not None:
            return (f"{who}: nothing answers at the coordinator address {address} ({why}) after {seconds} s: "
                    "start process 0 with the same JAX_COORDINATOR_ADDRESS, or correct its host and port")
    missing = (f"processes 0..{n - 1} other than {i}" if i is not None and n else "the other processes")
    return (f"{who}: not all {n or 'expected'} processes joined the coordinator at {address or '(from the cluster)'} "
            f"within {seconds} s: one of {missing} is missing, or the processes disagree on JAX_NUM_PROCESSES "
            f"(this one says {n}); start every process with the same JAX_NUM_PROCESSES and coordinator, or raise "
            f"{START_TIMEOUT}")


def _initialize(seconds: int, address: str | None, n: int | None, i: int | None, **kwargs) -> None:
    """jax.distributed.initialize, given up after `seconds` with one line on stderr and exit status 1.
    JAX aborts the process from C++ at its own timeout, so a watchdog thread ends it first."""
    started = threading.Event()

    def watchdog():
        # A coordinator that answered once and then went (its own start-up given up) is not a wrong
        # address: the other processes are missing or disagree on JAX_NUM_PROCESSES.
        answered, deadline = False, time.monotonic() + seconds
        while not started.wait(max(0.0, min(1.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                break
            answered = answered or (address is not None and i != 0 and _unreachable(address) is None)
        if started.is_set():
            return
        print(f"error: {_start_failed(address, n, i, seconds, answered)}", file=sys.stderr, flush=True)
        os._exit(1)

    threading.Thread(target=watchdog, name="distributed-start-watchdog", daemon=True).start()
    try:
        jax.distributed.initialize(**kwargs, initialization_timeout=seconds + 60)
    finally:
        started.set()


def _cluster_processes(env) -> int:
    """Processes a cluster manager whose variables jax.distributed.initialize() reads itself
    says there are (SLURM, Open MPI, a multi-host TPU slice); 1 when none does."""
    if "SLURM_JOB_ID" in env:
        return int(env.get("SLURM_NTASKS", "1"))
    if "OMPI_MCA_orte_hnp_uri" in env:
        return int(env.get("OMPI_COMM_WORLD_SIZE", "1"))
    if env.get("TPU_WORKER_HOSTNAMES"):
        return len(env["TPU_WORKER_HOSTNAMES"].split(","))
    return 1


def maybe_initialize_distributed() -> None:
    """Several processes (docs/multihost.md): jax.distributed.initialize() with
    JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID passed explicitly (JAX reads only
    the first itself), or with no arguments under SLURM, Open MPI or a TPU pod, which JAX
    detects. One process (none of these set): nothing to do. On CPU the collectives go over gloo.
    A start-up that does not complete within start_timeout() seconds ends the process with one
    line naming the address nothing answers at, or the processes that did not join."""
    if jax.distributed.is_initialized():
        return
    env = os.environ
    explicit = "JAX_COORDINATOR_ADDRESS" in env or "JAX_NUM_PROCESSES" in env or "JAX_PROCESS_ID" in env
    if not explicit and _cluster_processes(env) <= 1:
        return
    if explicit:
        missing = [k for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if k not in env]
        if missing:
            raise BadInput(f"multi-process start: set all of JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and "
                             f"JAX_PROCESS_ID (missing: {', '.join(missing)})")
        try:
            n, i = int(env["JAX_NUM_PROCESSES"]), int(env["JAX_PROCESS_ID"])
        except ValueError:
            raise BadInput("JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers, got "
                             f"{env['JAX_NUM_PROCESSES']!r} and {env['JAX_PROCESS_ID']!r}") from None
        if not 0 <= i < n:
            raise BadInput(f"JAX_PROCESS_ID {i} is outside 0..{n - 1} (JAX_NUM_PROCESSES {n})")
    # Cross-process collectives between CPU devices need a backend (only the CPU client reads this);
    # it must be set before the backends start.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        address = env["JAX_COORDINATOR_ADDRESS"]
        _initialize(start_timeout(env, address), address, n, i, coordinator_address=address, num_processes=n,
                    process_id=i)
        _check_counts(n, i)
    else:  # SLURM / Open MPI / TPU: JAX reads the cluster's variables
        _initialize(start_timeout(env, None), None, _cluster_processes(env), None)
    _watch_peers()
    log.info("jax.distributed: process %d of %d, %d local of %d devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())


def _check_counts(n: int, i: int) -> None:
    """Every process's JAX_NUM_PROCESSES against the count the coordinator (process 0) started with:
    a process that says more joins a smaller run without a word from JAX."""
    client, count = jax_distributed.global_state.client, jax.process_count()
    client.key_value_set(f"progress_jax/num_processes/{i}", str(n))
    said = {j: int(client.blocking_key_value_get(f"progress_jax/num_processes/{j}", 60_000)) for j in range(count)}
    if any(v != count for v in said.values()):
        raise BadInput(f"process {i}: the processes disagree on JAX_NUM_PROCESSES ("
                       + ", ".join(f"process {j} says {v}" for j, v in said.items())
                       + f"; the coordinator at {os.environ['JAX_COORDINATOR_ADDRESS']} started {count}): start "
                       "every process with the same JAX_NUM_PROCESSES")


# Seconds an uncaught exception waits for the peer watch to report a lost process.
PEER_GRACE_S = 5

# Where the running job writes its checkpoints (train/loop.py), named when a peer process is lost.
_checkpoint_dir: str | None = None


def watch_checkpoints(directory: str) -> None:
    """Names the newest checkpoint in `directory` if a peer process stops during the job."""
    global _checkpoint_dir
    _checkpoint_dir = directory


def _last_checkpoint() -> str:
    d = _checkpoint_dir
    steps = sorted(int(s) for s in os.listdir(d) if s.isdigit()) if d and os.path.isdir(d) else []
    if not steps:
        return "no checkpoint was written yet"
    return f"the last checkpoint is {os.path.join(d, str(steps[-1]))}: rerun every process to resume from it"


def _peer_lost(me: str, j: int, how: str) -> None:
    print(f"error: {me}: process {j} {how}, so the collectives "
          f"cannot go on; {_last_checkpoint()}", file=sys.stderr, flush=True)
    os._exit(1)


def _watch_peers() -> None:
    """A killed peer leaves the others blocked in a collective until JAX's heartbeat check aborts
    them with a gloo error. So process 0 holds a socket to every other process (a closed socket is
    seen at once) and tells the rest when one goes. A process leaving through Python's exit says
    "bye" first (it finished, or printed its own one-line error); after an uncaught exception,
    "failed"."""
    client, me, count = jax_distributed.global_state.client, jax.process_index(), jax.process_count()
    if count == 1:
        return
    peers = {}
    try:  # a port the hosts cannot reach each other on leaves JAX's own (slow) check alone
        if me == 0:
            with socket.create_server(("", 0)) as server:
                client.key_value_set("progress_jax/peer_port", str(server.getsockname()[1]))
                server.settimeout(30)
                for _ in range(count - 1):
                    conn, _ = server.accept()
                    conn.settimeout(None)
                    peers[int(conn.recv(16).decode().split()[0])] = conn
        else:
            host = jax_distributed.global_state.coordinator_address.rsplit(":", 1)[0].strip("[]")
            port = int(client.blocking_key_value_get("progress_jax/peer_port", 60_000))
            conn = socket.create_connection((host, port), timeout=10)
            conn.settimeout(None)
            conn.sendall(f"{me}\n".encode())
            peers[0] = conn
    except (OSError, ValueError) as e:
        log.warning("process %d: not watching the other processes (%s): a killed one is seen only after JAX's "
                    "heartbeat timeout", me, e)

    def tell(word: bytes):
        for conn in peers.values():
            try:
                conn.sendall(word)
            except OSError:
                pass

    if not peers:
        return
    atexit.register(tell, b"bye\n")
    # Named now: asking JAX from the watch could block behind its shutdown at exit.
    threading.Thread(target=_watch, args=(f"process {me} of {count}", peers), name="distributed-peer-watch",
                     daemon=True).start()
    hook = sys.excepthook

    def excepthook(*exc):
        # A collective can fail before the watch sees the lost peer (gloo: "Connection reset by
        # peer"): wait a moment for the watch's line. Otherwise the error is this process's own:
        # its traceback, then "failed" to the others and exit 1 without JAX's shutdown barrier,
        # which would wait for them (or abort once they have gone). Meanwhile a peer that fails on
        # its own error (often the same one) does not cut this one's short (_watch).
        _failing.set()
        time.sleep(PEER_GRACE_S)
        hook(*exc)
        tell(b"failed\n")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)

    sys.excepthook = excepthook


_failing = threading.Event()  # this process is printing its own uncaught error


def _watch(me: str, peers: dict[int, socket.socket]) -> None:
    sel = selectors.DefaultSelector()
    for j, conn in peers.items():
        sel.register(conn, selectors.EVENT_READ, j)
    while sel.get_map():
        for key, _ in sel.select():
            j, conn = key.data, key.fileobj
            try:
                data = conn.recv(64).decode()
            except OSError:
                data = ""
            if data.startswith("bye") or (data.startswith("failed") and _failing.is_set()):
                sel.unregister(conn)
            elif data.startswith("failed"):
                _peer_lost(me, j, "stopped on an error (see its log)")
            elif data.startswith("lost "):  # process 0 saw another process go
                _peer_lost(me, int(data.split()[1]), "stopped (killed or crashed)")
            else:  # the connection closed without a word: killed or crashed
                for other in peers.values():
                    if other is not conn:
                        try:
                            other.sendall(f"lost {j}\n".encode())
                        except OSError:
                            pass
                _peer_lost(me, j, "stopped (killed or crashed)")


def make_mesh(cfg) -> jax.sharding.Mesh:
    """The job's mesh; sizes that do not fit the devices are one line naming the config keys."""
    m = cfg.mesh
    try:
        return sharding.make_mesh(m.data, m.fsdp, m.tensor)
    except ValueError as e:
        raise BadInput(f"config keys mesh.data={m.data}, mesh.fsdp={m.fsdp}, mesh.tensor={m.tensor} do not fit the "
                       f"{jax.device_count()} devices ({str(e).removeprefix('mesh: ')}): their product must be the "
                       "device count, or one of them -1 to take the devices left") from None
