#!/usr/bin/env python3
"""Benchmark: int8 latency, operators, flash and RAM of the light built-ins at several input sizes, in one interleaved run.

    python bench/backbones.py --models yolov3-tiny,yolo-fastest,yolov3-tiny-mobilenetv3-small --sizes 320,416 \
        --out bench/results/backbones

Each model is built with random weights and 80 classes, converted to full-integer int8 by the
same worker the compress latency model uses, and timed with LiteRT in interleaved rounds (the
same timing call as compress), once per runtime given (``--runtimes xnnpack:2,builtin:1``: XNNPACK
with 2 threads, LiteRT's built-in kernels with 1). The weights do not change int8 latency; they
change nothing here but the calibration ranges.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import machine, write_results
from yolo3.errors import run_cli


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="yolov3-tiny,yolo-fastest,yolov3-tiny-mobilenetv3-small")
    parser.add_argument("--sizes", default="320,416")
    parser.add_argument("--runtimes", default="xnnpack:2,builtin:1", help="RUNTIME:THREADS,... (xnnpack or builtin)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from compression.budget.latency_model import Item, convert_items, time_models
    from yolo3.spec import analyse, totals
    from yolo3.tflite_memory import memory_report
    from yolo3.zoo import build_spec

    names = args.models.split(",")
    sizes = [int(s) for s in args.sizes.split(",")]
    runtimes = [(r.split(":")[0], int(r.split(":")[1])) for r in args.runtimes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-backbones-") as tmp:
        paths = []
        for name in names:
            for size in sizes:
                spec = build_spec(name, 80, size)
                folder = Path(tmp) / f"{name}-{size}"
                folder.mkdir()
                (path,) = convert_items(spec, [Item("network", size, filters={})], folder, progress=False)
                t = totals(analyse(spec))
                mem = memory_report(path)
                rows.append({"model": name, "size": size, "params": t.trainable_params, "macs": t.macs, "flash_bytes": mem["flash_bytes"],
                             "peak_activation_bytes": mem["peak_activation_bytes"], "operators": mem["operator_counts"], "ms": {}})  # fmt: skip
                paths.append(path)
        for runtime, threads in runtimes:
            print(f"timing {len(paths)} models: {runtime}, {threads} thread(s)", file=sys.stderr, flush=True)
            for row, ms in zip(rows, time_models(paths, threads, rounds=args.rounds, runs=5, progress=False, xnnpack=runtime == "xnnpack")):
                row["ms"][f"{runtime}:{threads}"] = ms
    keys = [f"{r}:{t}" for r, t in runtimes]
    md = [f"int8 latency (median ms, interleaved, random weights, 80 classes), flash and RAM of the built-ins; {machine()}", "",
          "| model | size | trainable params | MACs | " + " | ".join(f"{k.replace('builtin', 'built-in kernels').replace('xnnpack', 'XNNPACK')} thr." for k in keys)
          + " | flash KiB | peak activations KiB |",
          "|---|---|---|---|" + "---|" * len(keys) + "---|---|"]  # fmt: skip
    for r in rows:
        md.append(f"| {r['model']} | {r['size']} | {r['params']:,} | {r['macs'] / 1e9:.3f} G | " + " | ".join(f"{r['ms'][k]:.2f}" for k in keys)
                  + f" | {r['flash_bytes'] / 1024:,.0f} | {r['peak_activation_bytes'] / 1024:,.0f} |")  # fmt: skip
    md.append("")
    for name in names:
        ops = next(r["operators"] for r in rows if r["model"] == name)
        md.append(f"- {name}: " + ", ".join(f"{k} x{v}" for k, v in ops.items()))
    write_results(Path(args.out), {"command": "python bench/backbones.py " + " ".join(argv or sys.argv[1:]), "machine": machine(), "rows": rows},
                  "\n".join(md))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
