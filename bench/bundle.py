#!/usr/bin/env python3
"""Benchmark: the device bundle in a fresh virtual environment (no TensorFlow) against the runner in the project's environment.

    python bench/bundle.py --model runs/compress-bccd/final-int8.tflite --image ../shared/darknet/images/dog.jpg \
        --out bench/results/bundle

Measures the bundle's size on disk, the fresh environment's size and install time, the cold
start (process start to the first detection printed, median of interleaved runs) and the steady
model latency (median over repeated images in one process), in both environments, one run.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

import numpy as np

from common import ROOT, machine, write_results
from yolo3.errors import UserError, run_cli


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def cold_start(cmd: list[str], cwd: Path) -> float:
    """Seconds from process start to its first line of output (the first detection)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - t0
    proc.communicate()
    if proc.returncode != 0 or not line:
        raise UserError(f"the runner failed: {' '.join(cmd)}")
    return elapsed


def steady_ms(cmd: list[str], cwd: Path) -> float:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    m = re.search(r"model latency median ([0-9.]+) ms", r.stderr)
    if r.returncode != 0 or not m:
        raise UserError(f"the runner failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}")
    return float(m.group(1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a .tflite written by convert.py or compress.py")
    parser.add_argument("--image", required=True)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved cold starts per environment")
    parser.add_argument("--repeat", type=int, default=30, help="images per process for the steady latency")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from yolo3.bundle import write_bundle

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = write_bundle(args.model, tmp / "device")
        env_dir = tmp / "env"
        t0 = time.perf_counter()
        venv.EnvBuilder(with_pip=True).create(env_dir)
        python = env_dir / "bin" / "python"
        r = subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(tmp / "device" / "requirements.txt")], capture_output=True, text=True)
        if r.returncode != 0:
            raise UserError(f"pip install failed: {r.stderr.strip().splitlines()[-1]}")
        install_s = time.perf_counter() - t0
        frozen = subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True, text=True).stdout.split()
        image = str(Path(args.image).resolve())
        model = str(Path(args.model).resolve())
        runners = {
            "bundle, fresh env": ([str(python), "-m", "yolo3.lite", "model.tflite"], tmp / "device"),
            "project env": ([sys.executable, "-m", "yolo3.lite", model], ROOT),
        }
        colds: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(args.rounds):
            for name, (cmd, cwd) in runners.items():
                colds[name].append(cold_start([*cmd, image, "--threads", str(args.threads)], cwd))
        steady = {name: steady_ms([*cmd, *([image] * args.repeat), "--threads", str(args.threads)], cwd) for name, (cmd, cwd) in runners.items()}
        data = {
            "command": "python bench/bundle.py " + " ".join(argv or sys.argv[1:]), "machine": machine(), "model": args.model,
            "bundle_bytes": bundle["bytes"], "bundle_files": bundle["files"], "env_bytes": folder_bytes(env_dir), "install_seconds": install_s,
            "env_packages": frozen,
            "cold_start_s": {k: float(np.median(v)) for k, v in colds.items()}, "cold_start_runs": colds, "steady_model_ms": steady,
        }  # fmt: skip
    md = [
        f"Device bundle of `{Path(args.model).name}`; {data['machine']}; {args.threads} LiteRT threads",
        "",
        f"Bundle {data['bundle_bytes'] / 1e6:.2f} MB on disk ({len(data['bundle_files'])} files); fresh environment "
        f"{data['env_bytes'] / 1e6:.0f} MB ({', '.join(data['env_packages'])}), installed in {install_s:.0f} s.",
        "",
        "| runner | cold start (process start to first detection, median of " + str(args.rounds) + ") | steady model latency (median of "
        + str(args.repeat) + ") |",
        "|---|---|---|",
    ]
    for name in runners:
        md.append(f"| {name} | {data['cold_start_s'][name]:.2f} s | {steady[name]:.1f} ms |")
    write_results(Path(args.out), data, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
