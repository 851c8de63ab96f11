"""The pool of long-lived worker processes (compression.subprocesses): reuse, failures in one line, native output kept apart."""

from __future__ import annotations

import os
import threading
import time

from compression.subprocesses import _idle, close_workers, failure_reason, run_module

JOBS = "tests.worker_jobs"


def test_a_server_serves_many_jobs_and_native_output_stays_off_the_channel():
    close_workers()  # a server left idle by an earlier test may be near its retirement; start from a fresh one
    first = run_module(JOBS, "pid")
    second = run_module(JOBS, "pid")
    assert first.returncode == second.returncode == 0
    assert first.stdout.strip() == second.stdout.strip()  # the same process: no second start of Python and TensorFlow
    assert int(first.stdout) != os.getpid()


def test_a_failed_job_says_why_and_its_server_is_not_reused():
    close_workers()
    before = run_module(JOBS, "pid").stdout
    failed = run_module(JOBS, "fail")
    assert failed.returncode == 1
    assert failure_reason(failed) == "ValueError: the last line says why"
    raised = run_module(JOBS, "raise")
    assert raised.returncode == 1 and failure_reason(raised) == "RuntimeError: unexpected"
    assert run_module(JOBS, "pid").stdout != before  # the server that failed was ended, another took the job


def test_a_killed_worker_is_reported_by_its_signal_and_replaced():
    killed = run_module(JOBS, "die")
    assert killed.returncode < 0
    assert "killed by SIGKILL" in failure_reason(killed)
    after = run_module(JOBS, "pid")
    assert after.returncode == 0 and all(s.proc.poll() is None for s in _idle)


def test_a_server_started_for_a_short_lived_thread_outlives_the_thread():
    close_workers()  # so that the job below starts a server
    served: list[str] = []
    thread = threading.Thread(target=lambda: served.append(run_module(JOBS, "pid").stdout))
    thread.start()
    thread.join()
    time.sleep(0.5)  # a child tied to the ended thread (PR_SET_PDEATHSIG) would be killed by now
    assert run_module(JOBS, "pid").stdout == served[0]
