"""kill -9 of every command that writes a model: no process of the tool is left, the output holds the old file or nothing,
nothing half-written is ever beside the output (the writer stages in the system temp folder and links an unnamed
file into place), and the next run removes the killed writer's staging folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, toy_config

pytestmark = pytest.mark.slow


def _session_processes(sid: int) -> list[int]:
    """Processes still alive in the session the command was started in (workers included)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # fields: state, ppid, pgrp, session, ...
            pids.append(int(stat.parent.name))
    return pids


def _kill_after(cmd: list[str], seconds: float) -> None:
    """Start ``cmd`` in a session of its own, SIGKILL only its main process after ``seconds``; its workers must die with it."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(seconds)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and _session_processes(proc.pid):
        time.sleep(0.2)
    left = _session_processes(proc.pid)
    for pid in left:  # do not leave them running for the next test
        os.kill(pid, signal.SIGKILL)
    assert not left, f"{cmd[1]}: processes left after kill -9 of the command: {left}"


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def toy(tmp_path_factory, synthetic_valid):
    folder = tmp_path_factory.mktemp("kill")
    return folder, toy_config(folder, synthetic_valid)


@pytest.mark.parametrize(
    "name, args, out",
    [
        ("convert", ["convert.py", "--format", "int8", "--samples", "4", "--force"], "model.tflite"),
        ("cluster", ["clustering.py", "--clusters", "8", "--finetune-epochs", "0", "--force"], "model.h5"),
        ("prune", ["evaluate.py", "-p", "3", "--finetune-epochs", "0", "--force"], "model.h5"),
        ("export", ["-m", "yolo3", "export", "--force"], "model.weights"),
    ],
)
def test_kill_leaves_old_file_or_nothing_and_no_process(toy, tmp_path, name, args, out):
    folder, config = toy
    target = tmp_path / out
    old = b"the user's previous file"
    if args[0] == "-m":
        cmd = [sys.executable, *args, "--cfg", str(folder / "toy.cfg"), "--weights", str(folder / "toy.h5"), "--out", str(target)]
    else:
        cmd = [sys.executable, args[0], "-c", str(config), *args[1:], "--out", str(target)]
    for delay in (4.0, 8.0):
        target.write_bytes(old)
        _kill_after(cmd, delay)
        assert not target.exists() or target.read_bytes() == old or target.stat().st_size > len(old), f"{name}: half-written output"
        assert _temporaries(tmp_path) == [], f"{name}: temporaries beside the output after kill -9: {_temporaries(tmp_path)}"
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        assert target.stat().st_size > len(old)
        assert _temporaries(tmp_path) == [], f"{name}: temporaries left after the next run: {_temporaries(tmp_path)}"
        assert _dead_staging() == [], f"{name}: staging folders of killed writers left after the next run: {_dead_staging()}"


def _dead_staging() -> list[str]:
    """Staging folders (``PID.XXXX``) of the tool's writers whose process is gone."""
    from yolo3.fileio import _alive, _staging_root

    return sorted(f.name for f in _staging_root().iterdir() if not _alive(int(f.name.split(".", 1)[0])))
