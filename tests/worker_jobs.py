"""Jobs for the worker-pool tests (run as ``tests.worker_jobs`` inside compression.worker_server)."""

from __future__ import annotations

import os
import signal
import sys


def main(argv: list[str]) -> int:
    what = argv[0]
    if what == "pid":  # which process served the job; native output on fd 1 must not reach the reply channel
        os.write(1, b"native text on stdout\n")
        print(os.getpid())
        return 0
    if what == "fail":
        print("some detail", file=sys.stderr)
        print("ValueError: the last line says why", file=sys.stderr)
        return 1
    if what == "raise":
        raise RuntimeError("unexpected")
    if what == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    return 2
