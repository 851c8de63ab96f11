#!/usr/bin/env python3
"""Benchmark: post-training int8 against quantization-aware training (--qat) for one or more models:
mAP@0.5 of the float model, of each int8 file, what the int8 kernels keep (zeros, distinct values
per channel), size and latency (LiteRT, batch 1, median), all in one run.

    python bench/qat.py -c bench/configs/raccoon-yolov3-tiny.json \
        --models runs/raccoon-yolov3-tiny/best.h5,runs/clustered32.h5 --qat-epochs 2 --out bench/results/qat-raccoon
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import machine, write_results
from yolo3.errors import run_cli


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--models", required=True, help="comma-separated .h5 files")
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30, help="timed forward passes per model")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from compression.quantize.convert import QatOptions, convert_config
    from yolo3.config import load_config
    from yolo3.evaluation import evaluate_config

    config = load_config(args.config)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            base = evaluate_config(config, model, progress=False, latency_runs=0)
            row = {"model": model, "float_mAP50": base["mAP50"]}
            for label, qat in (("ptq", False), ("qat", True)):
                out = Path(tmp) / f"{Path(model).stem}-{label}.tflite"
                t0 = time.perf_counter()
                conv = convert_config(config, model, "int8", samples=args.samples, out=str(out), force=True,
                                      qat=QatOptions(args.qat_epochs) if qat else None, progress=False)
                seconds = time.perf_counter() - t0
                r = evaluate_config(config, str(out), progress=False, threads=args.threads, latency_runs=args.runs)
                row[label] = {"mAP50": r["mAP50"], "latency_ms": r["latency"]["median_ms"], "gzip_bytes": conv["gzip_bytes"],
                              "kernels": conv["kernels"], "seconds": seconds, "scheme": conv.get("qat", {}).get("scheme"),
                              "simulated_mAP50": conv.get("qat", {}).get("mAP50")}  # fmt: skip
            rows.append(row)
            print(row, flush=True)
    data = {"command": "python bench/qat.py " + " ".join(argv or sys.argv[1:]), "machine": machine(), "qat_epochs": args.qat_epochs,
            "qat_learning_rate": config.quantization.qat_learning_rate, "rows": rows}  # fmt: skip
    md = [
        f"`{Path(args.config).name}`: int8 after calibration (PTQ) against {args.qat_epochs} epochs of quantization-aware training "
        f"(QAT, lr {config.quantization.qat_learning_rate:g}) then int8; latency median of {args.runs} at batch 1, "
        f"{args.threads} LiteRT threads; {data['machine']}",
        "",
        "| model | float mAP@0.5 | int8 | mAP@0.5 | Δ vs float | zeros in kernels | max values / channel | gzip | latency | convert time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for label in ("ptq", "qat"):
            r = row[label]
            name = "PTQ" if label == "ptq" else f"QAT ({r['scheme']})"
            md.append(
                f"| {Path(row['model']).name} | {row['float_mAP50']:.4f} | {name} | {r['mAP50']:.4f} | {100 * (r['mAP50'] - row['float_mAP50']):+.2f} | "
                f"{r['kernels']['zero_fraction']:.1%} | {r['kernels']['max_distinct_per_channel']} | {r['gzip_bytes'] / 1e6:.2f} MB | "
                f"{r['latency_ms']:.1f} ms | {r['seconds']:.0f} s |"
            )
    write_results(Path(args.out), data, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
