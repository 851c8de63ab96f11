"""Worker processes that die with their parent and say how they ended.

The TFLite converter leaks memory with every call, so conversions run in
child processes. A child must not outlive the command that started it (a
``kill -9`` of the command would otherwise leave a converter running and
writing), and when it fails the user should read why: its last line of
error output, or the signal that killed it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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


def run_module(module: str, *args: str, stdout=None) -> subprocess.CompletedProcess | subprocess.Popen:
    """Run ``python -m module args`` to completion; stdout captured unless ``stdout`` is given."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=stdout is None, stdout=stdout, stderr=subprocess.PIPE if stdout is not None else None,
        text=True, env=worker_env(), cwd=ROOT, preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )  # fmt: skip


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
