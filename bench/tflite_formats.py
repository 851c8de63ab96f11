#!/usr/bin/env python3
"""Benchmark: one model as float Keras and as float32 / float16 / dynamic-range / int8 TFLite:
mAP@0.5, COCO AP, size and latency (batch 1, median), all in one run.

    python bench/tflite_formats.py -c bench/configs/coco128-yolov3-tiny.json --samples 128 --out bench/results/tflite-formats-coco128

int8 is calibrated on --samples training images of the config (fixed seed); latency is timed
with --threads LiteRT threads (Keras uses TensorFlow's default thread pools).
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
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--model", help="model instead of the config's model.weights")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50, help="timed forward passes per model")
    parser.add_argument("--formats", default="float32,float16,dynamic,int8")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from compression.quantize.convert import convert_config
    from yolo3.config import load_config
    from yolo3.evaluation import evaluate_config

    config = load_config(args.config)
    rows = []
    keras = evaluate_config(config, args.model, progress=False, threads=args.threads, latency_runs=args.runs)
    rows.append({"format": "Keras float32", "mAP50": keras["mAP50"], "coco": keras["coco"], "latency_ms": keras["latency"]["median_ms"],
                 "bytes": keras.get("bytes"), "gzip_bytes": keras.get("gzip_bytes")})  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in args.formats.split(","):
            out = Path(tmp) / f"model-{fmt}.tflite"
            conv = convert_config(config, args.model, fmt, samples=args.samples, out=str(out), force=True)
            r = evaluate_config(config, str(out), progress=False, threads=args.threads, latency_runs=args.runs)
            rows.append({"format": f"TFLite {fmt}", "mAP50": r["mAP50"], "coco": r["coco"], "latency_ms": r["latency"]["median_ms"],
                         "bytes": conv["bytes"], "gzip_bytes": conv["gzip_bytes"], "operators": conv["operators"]})  # fmt: skip
            print(rows[-1], flush=True)
    data = {"command": "python bench/tflite_formats.py " + " ".join(argv or sys.argv[1:]), "machine": machine(),
            "images": keras["images"], "input_size": keras["input_size"], "threads": args.threads, "rows": rows}  # fmt: skip
    base = rows[0]
    md = [
        f"`{Path(args.config).name}`: {keras['images']} validation images at {keras['input_size'][0]}; latency = median of "
        f"{args.runs} forward passes at batch 1 ({args.threads} LiteRT threads); {data['machine']}",
        "",
        "| model | mAP@0.5 | COCO AP | AP50 | size | gzip | latency | speed-up vs Keras |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        size = f"{r['bytes'] / 1e6:.1f} MB" if r["bytes"] else "-"
        gz = f"{r['gzip_bytes'] / 1e6:.1f} MB" if r["gzip_bytes"] else "-"
        md.append(
            f"| {r['format']} | {r['mAP50']:.4f} | {r['coco']['AP']:.4f} | {r['coco']['AP50']:.4f} | {size} | {gz} | "
            f"{r['latency_ms']:.1f} ms | {base['latency_ms'] / r['latency_ms']:.2f}x |"
        )
    write_results(Path(args.out), data, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
