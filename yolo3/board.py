"""Timing on the device itself, with numpy and LiteRT only: ``benchmark`` one or more models, ``profile`` a folder of probes.

A plan made on the host is only as good as the host's timing is like the
board's: the same model costs differently with XNNPACK, with LiteRT's built-in
kernels, on another CPU or with another delegate. These two commands run where
the model will run (they are part of the device bundle, beside the runner)::

    python -m yolo3.lite benchmark model.tflite [other.tflite ...] [--threads 4] [--no-xnnpack] [--delegate LIB] [--json]
    python -m yolo3.lite profile PROBES_DIR --out table.json [--threads 4] [--no-xnnpack] [--delegate LIB]

Both time the models interleaved (a warm-up call, then round after round of a
few runs of each model, medians), so the board's drifting load falls on every
model alike. ``profile`` times every ``.tflite`` in the folder in chunks and
rewrites ``table.json`` after each chunk: an interrupted profile resumes where
it stopped, as long as the device settings are the same. The table records the
device (machine, CPU, runtime and version, threads, delegate) and, when the
folder holds a ``manifest.json``, that manifest, so the planner can tell what
each probe stands for.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from .errors import UserError

CHUNK = 20  # probes timed interleaved together before the table is written again


def runtime_version() -> str:
    """The LiteRT package the runner uses and its version (``ai-edge-litert 2.3.0``, ``tflite-runtime 2.14.0``)."""
    from importlib.metadata import PackageNotFoundError, version

    for package in ("ai-edge-litert", "tflite-runtime"):
        try:
            return f"{package} {version(package)}"
        except PackageNotFoundError:
            continue
    return "unknown"


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (``model name``, or ``Hardware`` / ``Model`` on ARM boards), else the platform's."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in text.splitlines():
            if line.split(":")[0].strip() == key and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_description(threads: int, xnnpack: bool, delegate: str | None) -> dict:
    """What the timings were measured on: enough to tell two tables apart and to refuse resuming with other settings."""
    return {
        "machine": platform.machine(), "cpu": cpu_name(), "cores": os.cpu_count(), "system": platform.platform(),
        "python": platform.python_version(), "runtime": runtime_version(), "threads": threads,
        "delegate": delegate or ("xnnpack" if xnnpack else "none (built-in kernels)"),
    }  # fmt: skip


def same_device(a: dict, b: dict) -> bool:
    """Two device descriptions name the same device and runtime settings (the OS build string may differ)."""
    return {k: v for k, v in a.items() if k != "system"} == {k: v for k, v in b.items() if k != "system"}


def ready_interpreter(path: Path, threads: int, xnnpack: bool = True, delegate: str | None = None):
    """An allocated interpreter with zero inputs set: ready to be invoked and timed."""
    from .lite import load_interpreter

    it = load_interpreter(path, threads=threads, xnnpack=xnnpack, delegate=delegate)
    for d in it.get_input_details():
        it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    return it


def time_files(paths: list[Path], threads: int, xnnpack: bool = True, delegate: str | None = None, rounds: int = 10, runs: int = 5) -> list[dict]:
    """Median (and min, max) milliseconds of one invoke of every model, timed interleaved."""
    from .lite import interleaved_latency

    interpreters = [ready_interpreter(p, threads, xnnpack, delegate) for p in paths]
    return interleaved_latency([lambda _, it=it: it.invoke() for it in interpreters], [None] * len(paths), rounds, runs)


def file_sha1(path: Path) -> str:
    """The SHA-1 of a file, read in chunks (what a timed model was, recorded beside its timing)."""
    import hashlib

    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, data: dict) -> None:
    """Whole or not at all: a temporary file beside ``path``, then a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def profile(folder: Path, out: Path, threads: int, xnnpack: bool = True, delegate: str | None = None, rounds: int = 5, runs: int = 5,
            chunk: int = CHUNK, log=print) -> dict:  # fmt: skip
    """Time every ``.tflite`` in ``folder`` into ``out`` (resuming a table made with the same device settings); the table."""
    if not folder.is_dir():
        raise UserError("the probes folder does not exist or is not a folder", folder)
    probes = sorted(p for p in folder.iterdir() if p.suffix == ".tflite")
    if not probes:
        raise UserError("holds no .tflite probes (write them with: yolo3 compress ... --export-probes DIR)", folder)
    device = device_description(threads, xnnpack, delegate)
    table = {"device": device, "timing": {"rounds": rounds, "runs": runs, "statistic": "median, interleaved in chunks"}, "probes": {}}
    if (folder / "manifest.json").is_file():
        try:
            table["manifest"] = json.loads((folder / "manifest.json").read_text())
        except ValueError:
            raise UserError("manifest.json is not valid JSON", folder / "manifest.json") from None
    if out.exists():
        try:
            before = json.loads(out.read_text())
        except ValueError:
            raise UserError("exists and is not a table this command wrote; give another --out or delete it", out) from None
        if not same_device(before.get("device", {}), device):
            raise UserError("was profiled with other device settings (threads, delegate, runtime or CPU); give another --out", out)
        table["probes"] = {k: v for k, v in before.get("probes", {}).items() if (folder / k).is_file()}
    todo = [p for p in probes if p.name not in table["probes"]]
    log(f"{len(probes)} probes, {len(probes) - len(todo)} timed before, {len(todo)} to time ({device['runtime']}, {threads} threads, "
        f"{device['delegate']})")  # fmt: skip
    start = time.perf_counter()
    for k in range(0, len(todo), chunk):
        part = todo[k : k + chunk]
        for p, t in zip(part, time_files(part, threads, xnnpack, delegate, rounds, runs)):
            table["probes"][p.name] = t
        _write_json(out, table)
        done = k + len(part)
        left = (time.perf_counter() - start) / done * (len(todo) - done)
        log(f"timed {done}/{len(todo)}" + (f", about {left / 60:.1f} min left" if done < len(todo) else ""))
    if not todo:
        _write_json(out, table)
    return table


def benchmark_main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m yolo3.lite benchmark", description="Time .tflite models on this device (interleaved, medians).")
    parser.add_argument("models", nargs="+", help=".tflite files (timed in alternation)")
    _runtime_arguments(parser, rounds=10)
    parser.add_argument("--json", action="store_true", help="print one JSON object (the device and every model's timing)")
    args = parser.parse_args(argv)
    _check(args)
    paths = [Path(m) for m in args.models]
    for p in paths:
        if not p.is_file():
            raise UserError("model file does not exist", p)
    timed = time_files(paths, args.threads, not args.no_xnnpack, args.delegate, args.rounds, args.runs)
    device = device_description(args.threads, not args.no_xnnpack, args.delegate)
    if args.json:
        # each file's SHA-1, so that compress --board-measured can tell the timed files are its run's
        print(json.dumps({"device": device, "models": {str(p): {**t, "sha1": file_sha1(p)} for p, t in zip(paths, timed)}}, indent=2))
    else:
        print(f"{device['cpu']} ({device['machine']}), {device['runtime']}, {args.threads} thread(s), {device['delegate']}; "
              f"median of {args.rounds} x {args.runs} runs, interleaved")  # fmt: skip
        for p, t in zip(paths, timed):
            print(f"{p}: {t['median_ms']:.2f} ms (min {t['min_ms']:.2f}, max {t['max_ms']:.2f})"
                  + (f", {timed[0]['median_ms'] / t['median_ms']:.2f}x the first" if len(paths) > 1 else ""))  # fmt: skip
    return 0


def profile_main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m yolo3.lite profile", description="Time every probe .tflite of a folder into a latency table.")
    parser.add_argument("folder", help="the probes folder (yolo3 compress ... --export-probes DIR), copied to the device")
    parser.add_argument("--out", required=True, help="the table (JSON); an interrupted profile resumes into it")
    _runtime_arguments(parser, rounds=5)
    args = parser.parse_args(argv)
    _check(args)
    table = profile(Path(args.folder), Path(args.out), args.threads, not args.no_xnnpack, args.delegate, args.rounds, args.runs,
                    log=lambda m: print(m, file=sys.stderr, flush=True))  # fmt: skip
    print(f"wrote {args.out}: {len(table['probes'])} probes timed on {table['device']['cpu']}")
    return 0


def _runtime_arguments(parser, rounds: int) -> None:
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-xnnpack", action="store_true", help="LiteRT's built-in kernels only (no XNNPACK delegate)")
    parser.add_argument("--delegate", help="an external delegate library to load (e.g. libedgetpu.so.1)")
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each model per round")


def _check(args) -> None:
    for name in ("threads", "rounds", "runs"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.delegate and args.no_xnnpack:
        raise UserError("--delegate and --no-xnnpack: give one runtime")
