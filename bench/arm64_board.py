#!/usr/bin/env python3
"""Run the device bundle on an emulated arm64 board, as its README says, and compare its detections with x86-64.

    python bench/arm64_board.py --root /tmp/arm64root --model best-int8.tflite --images DIR --out bench/results/arm64-board

What it needs (checked first, one line each when missing): root privileges (``chroot``), qemu-user
with binfmt_misc registered for aarch64 (Debian: ``apt-get install qemu-user-static``; in a
container without systemd, mount binfmt_misc and write qemu-aarch64's line from
/usr/share/binfmts/qemu-aarch64 into its ``register``), and an arm64 Debian root with python3
and python3-venv (``debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,
python3-pip,ca-certificates bookworm ROOT http://deb.debian.org/debian``). The package index
(PyPI) must be reachable from the root.

The bundle (``yolo3.bundle.write_bundle``) is written into the root; inside it, under qemu with
``QEMU_CPU`` (default cortex-a76: qemu 7.2's default ``max`` CPU is known to give wrong XNNPACK
outputs, and its host /proc/cpuinfo made LiteRT crash in allocate_tensors), the README's own
commands run — ``python3 -m venv .venv && .venv/bin/pip install -r requirements.txt`` (and the
tflite-runtime file in a second venv), then ``.venv/bin/python -m yolo3.lite model.tflite
images/ --json``. The same bundle runs on this machine the same way. Reported: every install
and run's outcome and time, the runtime versions each side got, and per image whether the
detections are equal (same boxes to the pixel, classes, scores to 1e-4).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, write_results
from yolo3.errors import UserError, run_cli

REQUIREMENT_FILES = {"ai-edge-litert": "requirements.txt", "tflite-runtime": "requirements-tflite-runtime.txt"}
VERSIONS = (
    "import importlib.metadata as m, platform, json; "
    "print(json.dumps({'python': platform.python_version(), 'machine': platform.machine(), "
    "**{p: m.version(p) for p in ('numpy', 'pillow', 'ai-edge-litert', 'tflite-runtime') if any(d.metadata['Name'].lower() == p for d in m.distributions())}}))"
)


def check_board(root: Path) -> None:
    """One line for each thing the emulated board needs and this machine lacks."""
    if os.geteuid() != 0:
        raise UserError("running the bundle in the arm64 root needs chroot, so root privileges")
    if platform.machine() == "aarch64":
        raise UserError("this machine is arm64 already: run the bundle's README commands directly")
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        raise UserError("binfmt_misc has no qemu-aarch64 entry: install qemu-user-static and register it (see this script's help)")
    if not (root / "usr" / "bin" / "python3").exists():
        raise UserError("not an arm64 root with python3 (see this script's help for debootstrap)", root)


def run_side(cmd: list[str], env: dict | None = None, timeout: int = 3600) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    return {"ok": proc.returncode == 0, "seconds": time.perf_counter() - start, "stdout": proc.stdout,
            "error": None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["(no message)"])[-1][:400]}  # fmt: skip


def bundle_steps(folder: str, requirements: str, venv: str, images: str) -> list[tuple[str, str]]:
    """The README's commands for one requirements file, as shell lines run in the bundle folder."""
    return [
        ("install", f"cd {folder} && python3 -m venv {venv} && {venv}/bin/pip install --quiet --disable-pip-version-check -r {requirements}"),
        ("versions", f"cd {folder} && {venv}/bin/python -c \"{VERSIONS}\""),
        ("detect", f"cd {folder} && {venv}/bin/python -m yolo3.lite model.tflite {images} --json --threads 1"),
        ("detect-builtin", f"cd {folder} && {venv}/bin/python -m yolo3.lite model.tflite {images} --json --threads 1 --no-xnnpack"),
    ]


def detections(stdout: str) -> dict[str, list]:
    """The runner's JSON lines by image name."""
    out = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            out[Path(record["image"]).name] = record["detections"]
    return out


def same_detections(a: list, b: list) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(sorted(a, key=lambda d: -d["score"]), sorted(b, key=lambda d: -d["score"])):
        if x["class_id"] != y["class_id"] or abs(x["score"] - y["score"]) > 1e-4 or any(abs(p - q) > 1.0 for p, q in zip(x["box"], y["box"])):
            return False
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="an arm64 Debian root with python3 and python3-venv")
    parser.add_argument("--model", required=True, help="an int8 .tflite written by yolo3 convert")
    parser.add_argument("--images", required=True, help="a folder of a few images")
    parser.add_argument("--runtimes", default="ai-edge-litert,tflite-runtime")
    parser.add_argument("--cpu", default="cortex-a76", help="QEMU_CPU for the emulated board")
    parser.add_argument("--out", required=True, help="output path without suffix (.json and .md are written)")
    args = parser.parse_args(argv)

    from yolo3.bundle import write_bundle

    root = Path(args.root).resolve()
    check_board(root)
    chroot = shutil.which("chroot")
    if chroot is None:
        raise UserError("no chroot command on this machine (coreutils)")
    images = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not images:
        raise UserError("no .jpg or .png images in this folder", args.images)
    rows, results = [], {}
    with tempfile.TemporaryDirectory(prefix="bundle-", dir=root / "tmp") as guest_tmp, tempfile.TemporaryDirectory(prefix="bundle-") as host_tmp:
        for tmp in (Path(guest_tmp), Path(host_tmp)):
            write_bundle(args.model, tmp / "bundle")
            shutil.copytree(args.images, tmp / "bundle" / "images", ignore=lambda d, names: [n for n in names if not n.lower().endswith((".jpg", ".jpeg", ".png"))])
        guest_folder = "/" + str((Path(guest_tmp) / "bundle").relative_to(root))
        env = {**os.environ, "QEMU_CPU": args.cpu, "PATH": "/usr/local/bin:/usr/bin:/bin"}
        for runtime in args.runtimes.split(","):
            requirements, venv = REQUIREMENT_FILES[runtime], f".venv-{runtime}"
            for side, folder, wrap in (("arm64 (qemu)", guest_folder, lambda line: [chroot, str(root), "/bin/sh", "-c", line]),
                                       ("x86-64", str(Path(host_tmp) / "bundle"), lambda line: ["/bin/sh", "-c", line])):  # fmt: skip
                record = {"runtime": runtime, "side": side}
                for step, line in bundle_steps(folder, requirements, venv, "images"):
                    print(f"{runtime}, {side}: {step} ...", file=sys.stderr, flush=True)
                    done = run_side(wrap(line), env if side.startswith("arm64") else None)
                    record[step] = {k: v for k, v in done.items() if k != "stdout"}
                    if not done["ok"]:
                        break
                    if step == "versions":
                        record["versions"] = json.loads(done["stdout"].strip().splitlines()[-1])
                    if step.startswith("detect"):
                        record[step.replace("detect", "detections")] = detections(done["stdout"])
                results[(runtime, side)] = record
            arm, x86 = results[(runtime, "arm64 (qemu)")], results[(runtime, "x86-64")]
            equal = {}
            for key in ("detections", "detections-builtin"):  # XNNPACK, then LiteRT's built-in kernels
                if key in arm and key in x86:
                    equal[key] = {name: same_detections(arm[key][name], x86[key].get(name, [])) for name in arm[key]}
            rows.append({"runtime": runtime, "arm64": arm, "x86_64": x86, "images_equal": equal})
    data = {"command": "python bench/arm64_board.py " + " ".join(argv or sys.argv[1:]), "machine": machine(), "qemu_cpu": args.cpu,
            "model": str(args.model), "images": len(images), "rows": rows}  # fmt: skip
    md = [f"The device bundle of `{Path(args.model).name}` run as its README says on an emulated arm64 board (Debian root, qemu-user, "
          f"QEMU_CPU={args.cpu}) and on this machine; {len(images)} images, 1 thread; {data['machine']}", "",
          "| runtime | side | install | versions | detect (XNNPACK / built-in kernels) | detections equal to x86-64: XNNPACK | built-in kernels |",
          "|---|---|---|---|---|---|---|"]  # fmt: skip

    def cell(record: dict, step: str) -> str:
        if step not in record:
            return "not run"
        return f"ok ({record[step]['seconds']:.0f} s)" if record[step]["ok"] else f"failed: {record[step]['error']}"

    for r in rows:
        for side, record in (("arm64 (qemu)", r["arm64"]), ("x86-64", r["x86_64"])):
            versions = ", ".join(f"{k} {v}" for k, v in record.get("versions", {}).items())
            equal = [("" if side == "x86-64" or key not in r["images_equal"] else
                      f"{sum(r['images_equal'][key].values())} of {len(r['images_equal'][key])} images") for key in ("detections", "detections-builtin")]  # fmt: skip
            md.append(f"| {r['runtime']} | {side} | {cell(record, 'install')} | {versions} | {cell(record, 'detect')} / {cell(record, 'detect-builtin')} "
                      f"| {equal[0]} | {equal[1]} |")  # fmt: skip
    write_results(Path(args.out), data, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
