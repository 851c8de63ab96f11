"""A long-lived worker process that runs worker modules' ``main(argv)`` one job at a time.

    python -m compression.worker_server        (started by :mod:`compression.subprocesses`)

Conversions run outside the command's process because TensorFlow's converter
leaks memory with every call; starting a fresh Python for each one costs more
than the conversion of a small model (importing TensorFlow and Keras). This
process imports them once and serves many jobs, and retires itself when it has
grown past :data:`RETIRE_BYTES` or served :data:`RETIRE_JOBS` jobs, so the leak
stays bounded.

Protocol: one JSON request per line on stdin, ``{"module": ..., "args": [...]}``;
one JSON reply per line on the channel the parent reads,
``{"returncode": int, "stdout": str, "stderr": str, "retire": bool}``. What the
job prints from Python is captured into the reply; what native code writes to the
process's stdout or stderr goes to the parent's log of this process (so a native
message cannot corrupt the channel).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import sys

RETIRE_BYTES = int(float(os.environ.get("YOLO3_WORKER_RETIRE_GB", "4")) * 2**30)
RETIRE_JOBS = 200


def resident_bytes() -> int:
    """This process's resident memory now (not its peak), from /proc; 0 where there is no /proc."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def run_job(request: dict) -> dict:
    """Run ``request["module"].main(request["args"])`` with its Python output captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            returncode = importlib.import_module(request["module"]).main(list(request["args"]))
        except SystemExit as stop:
            returncode = 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 1
        except Exception as failure:  # a worker module's own errors end in one line; this is anything else
            print(f"{type(failure).__name__}: {failure}", file=sys.stderr)
            returncode = 1
    return {"returncode": int(returncode or 0), "stdout": out.getvalue(), "stderr": err.getvalue()}


def _forget_models() -> None:
    """Drop the Keras graph state a job left (layer-name counters included), so the next job starts as in a fresh process."""
    if "tf_keras" in sys.modules:
        sys.modules["tf_keras"].backend.clear_session()


def serve(requests, channel) -> None:
    jobs = 0
    for line in requests:
        if not line.strip():
            continue
        reply = run_job(json.loads(line))
        _forget_models()
        jobs += 1
        reply["retire"] = jobs >= RETIRE_JOBS or resident_bytes() > RETIRE_BYTES
        channel.write(json.dumps(reply) + "\n")
        channel.flush()
        if reply["retire"]:
            return


def main() -> int:
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")  # replies go here; fd 1 itself now leads to the log
    os.dup2(2, 1)
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), encoding="utf-8", line_buffering=True)
    serve(sys.stdin, channel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
