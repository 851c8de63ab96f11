"""Worker processes that die with their parent and say how they ended.

The TFLite converter leaks memory with every call, so conversions run in
child processes. A child must not outlive the command that started it (a
``kill -9`` of the command would otherwise leave a converter running and
writing), and when it fails the user should read why: its last line of
error output, or the signal that killed it.

Starting a fresh Python for every conversion costs more than converting a
small model (a few seconds of importing TensorFlow), so the children are
long-lived servers (:mod:`compression.worker_server`) kept in a pool: a job
takes an idle one whose environment matches, or starts one; a server retires
itself when it has grown too large, and one that failed a job is not reused.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_IDLE = 2  # servers kept between jobs (each holds TensorFlow, some hundred MB)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the kernel kills the child when the parent dies
    except (OSError, AttributeError):  # not Linux: the child may outlive a killed parent
        pass


def worker_env() -> dict:
    quiet = os.environ.get("YOLO3_VERBOSE") != "1"
    return dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3" if quiet else "0")


class _Server:
    """One ``python -m compression.worker_server`` process; native output goes to an unnamed temporary file."""

    def __init__(self, env: dict):
        self.env = env
        self.closed = False
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "compression.worker_server"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
            text=True, encoding="utf-8", env=env, cwd=ROOT, preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )  # fmt: skip

    def run(self, module: str, args: list[str]) -> tuple[subprocess.CompletedProcess, bool]:
        """The job's outcome, and whether this server can take another."""
        command = [sys.executable, "-m", module, *args]
        try:
            self.proc.stdin.write(json.dumps({"module": module, "args": args}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:  # it died: by a signal (its return code says which) or in native code (its log's last line)
            returncode = self.proc.wait()
            self.log.seek(0)
            tail = self.log.read().decode("utf-8", "replace")
            self.close()
            return subprocess.CompletedProcess(command, returncode if returncode != 0 else 1, "", tail), False
        reply = json.loads(line)
        done = subprocess.CompletedProcess(command, reply["returncode"], reply["stdout"], reply["stderr"])
        return done, reply["returncode"] == 0 and not reply["retire"]

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


_idle: list[_Server] = []
_lock = threading.Lock()
# Servers are started from this one thread: PR_SET_PDEATHSIG fires when the *thread* that started a child ends, and a
# job may run on a short-lived thread (a ThreadPoolExecutor's) while the server outlives it in the pool.
_starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="worker-starter")


def _forget_parents_servers() -> None:
    """In a forked child: the parent's servers and starter thread are the parent's; start afresh."""
    global _lock, _starter
    _idle.clear()
    _lock = threading.Lock()
    _starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="worker-starter")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parents_servers)


def _take(env: dict) -> _Server:
    with _lock:
        for k, server in enumerate(_idle):
            if server.env == env and server.proc.poll() is None:
                return _idle.pop(k)
    return _starter.submit(_Server, env).result()


def _give_back(server: _Server) -> None:
    with _lock:
        if len(_idle) < MAX_IDLE:
            _idle.append(server)
            return
    server.close()


@atexit.register
def close_workers() -> None:
    """End the idle servers (they would also end when this process does)."""
    with _lock:
        servers, _idle[:] = list(_idle), []
    for server in servers:
        server.close()


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``module.main(args)`` in a worker process, as ``python -m module args`` would; its stdout and stderr are captured."""
    server = _take(worker_env())
    done, reusable = server.run(module, list(args))
    if reusable:
        _give_back(server)
    else:
        server.close()
    return done


def failure_reason(proc: subprocess.CompletedProcess) -> str:
    """Why a worker failed, in one line: the signal that killed it, or its last line of error output."""
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        return f"the worker process was killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    lines = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit status {proc.returncode}, no message"
