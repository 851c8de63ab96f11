#!/usr/bin/env python3
"""Check: every requirement of the device bundle has an aarch64 (and x86-64) Linux wheel for the Python versions it promises.

    python bench/arm64_check.py --out bench/results/arm64-wheels

For each requirements file the bundle writes (``requirements.txt`` with ai-edge-litert,
``requirements-tflite-runtime.txt``), each platform and each Python version the bundle's
README names, pip resolves the file as it would on that board — binary wheels only, for
that platform and Python, nothing installed (``pip install --dry-run --only-binary=:all:
--platform ... --python-version ... --report``) — and the table lists the wheel each
requirement resolves to, or the line pip failed with. It needs the package index (PyPI),
not the board.

Running the bundle itself on an emulated arm64 board is bench/arm64_board.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import machine, write_results
from yolo3.errors import run_cli

# pip matches platform tags exactly: a board with glibc 2.36 (Debian 12, Raspberry Pi OS bookworm) takes every manylinux_2_N up to it
GLIBC_MINOR = 36
PLATFORMS = {arch: [f"manylinux2014_{arch}", *(f"manylinux_2_{minor}_{arch}" for minor in range(17, GLIBC_MINOR + 1))] for arch in ("aarch64", "x86_64")}
# the Python versions the bundle README promises for each runtime (yolo3/bundle.py)
PROMISED = {"requirements.txt": ["3.9", "3.10", "3.11", "3.12"], "requirements-tflite-runtime.txt": ["3.9", "3.10", "3.11"]}


def resolve(requirements: Path, platform: str, python: str, work: Path) -> dict:
    """What pip would install from ``requirements`` on ``platform`` under ``python``: {package: wheel}, or the failure."""
    report = work / f"report-{platform}-{python}.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--target", str(work / "target"),
           "--only-binary=:all:", "--python-version", python, *[f"--platform={p}" for p in PLATFORMS[platform]],
           "-r", str(requirements), "--report", str(report)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
        return {"ok": False, "error": (lines[0] if lines else proc.stderr.strip().splitlines()[-1])[:300]}
    data = json.loads(report.read_text())
    wheels = {i["metadata"]["name"].lower(): i["download_info"]["url"].rsplit("/", 1)[-1] for i in data["install"]}
    return {"ok": True, "wheels": wheels}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--platforms", default="aarch64,x86_64")
    parser.add_argument("--out", required=True, help="output path without suffix (.json and .md are written)")
    args = parser.parse_args(argv)

    from yolo3.bundle import REQUIREMENTS, REQUIREMENTS_TFLITE_RUNTIME

    texts = {"requirements.txt": REQUIREMENTS, "requirements-tflite-runtime.txt": REQUIREMENTS_TFLITE_RUNTIME}
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="arm64-check-") as tmp:
        work = Path(tmp)
        for name, text in texts.items():
            path = work / name
            path.write_text(text)
            for platform in args.platforms.split(","):
                for python in PROMISED[name]:
                    print(f"{name}, {platform}, Python {python} ...", file=sys.stderr, flush=True)
                    results.setdefault(name, {}).setdefault(platform, {})[python] = resolve(path, platform, python, work)
    runtime = {"requirements.txt": "ai-edge-litert", "requirements-tflite-runtime.txt": "tflite-runtime"}
    md = [f"The bundle's requirements resolved per platform and Python version, binary wheels only (pip --dry-run), for a board with glibc 2.{GLIBC_MINOR} (manylinux2014, manylinux_2_17 to 2_{GLIBC_MINOR}); {machine()}", "",
          "| requirements | platform | Python | runtime wheel | numpy | Pillow |", "|---|---|---|---|---|---|"]  # fmt: skip
    failures = 0
    for name, platforms in results.items():
        for platform, versions in platforms.items():
            for python, r in versions.items():
                if r["ok"]:
                    w = r["wheels"]
                    md.append(f"| {name} | {platform} | {python} | {w.get(runtime[name], '-')} | {w.get('numpy', '-')} | {w.get('pillow', '-')} |")
                else:
                    failures += 1
                    md.append(f"| {name} | {platform} | {python} | **no wheel**: {r['error']} | | |")
    md.append("")
    md.append("Every promised combination resolves to wheels." if not failures else f"**{failures} promised combination(s) do not resolve.**")
    write_results(Path(args.out), {"command": "python bench/arm64_check.py " + " ".join(argv or sys.argv[1:]), "machine": machine(),
                                   "results": results, "failures": failures}, "\n".join(md))  # fmt: skip
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
