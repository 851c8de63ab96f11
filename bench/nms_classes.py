#!/usr/bin/env python3
"""Benchmark: in-model NMS against the numpy path, by the classes each kept box reports, in one run.

    python bench/nms_classes.py -c bench/configs/coco128-yolov3-tiny.json --out bench/results/nms-classes-coco128

Rows (converted from the config's model, evaluated on its test split by the same code, timed together,
interleaved): int8 with decode and class-aware NMS in numpy (the reference), then int8 with decode and
NMS in the graph (`convert --nms`) whose operator reports K classes per kept box
(`quantization.nms_classes_per_box`), for every K of --classes-per-box. The operator's NMS ranks boxes
by their best class and suppresses across classes; K > 1 gives back the boxes' other classes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import machine, write_results
from yolo3.errors import UserError, run_cli


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--model", help="the .h5 or .weights to convert (default: the config's model.weights)")
    parser.add_argument("--classes-per-box", default="1,3,5,10", help="comma-separated K of the in-model rows")
    parser.add_argument("--samples", type=int, default=200, help="int8 calibration images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--work-dir", default="runs/nms-classes", help="where the .tflite files go (default: runs/nms-classes)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from compression.benchmark import Variant, run_benchmark
    from yolo3.config import load_config

    try:
        ks = [int(k) for k in args.classes_per_box.split(",") if k.strip()]
    except ValueError:
        raise UserError(f"--classes-per-box: whole numbers separated by commas, got {args.classes_per_box!r}") from None
    variants = [Variant("int8", "int8")]
    variants += [Variant(f"int8-nms-k{k}", "int8", {"nms": True}, {"quantization.nms_classes_per_box": k}) for k in ks]
    config = load_config(args.config)
    work = Path(args.work_dir)
    report = run_benchmark(config, args.model, variants, work, args.samples, args.threads, args.rounds, args.runs, "test", progress=False)
    report.update(command="python bench/nms_classes.py " + " ".join(argv or sys.argv[1:]), machine=machine(),
                  classes=len(config.labels))  # fmt: skip
    rows = report["rows"]
    ref = rows[0]
    md = [
        f"`{report['model']}` on {report['images']} test images ({len(config.labels)} classes) at {report['input_size']}; "
        f"latency = median of {args.rounds} x {args.runs} interleaved runs at batch 1 ({args.threads} LiteRT threads); {report['machine']}",
        "",
        "| post-processing | mAP@0.5 | vs numpy | COCO AP | latency with decode + NMS | vs numpy |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = "numpy decode + class-aware NMS" if r is ref else f"in the model, {r['format'].rsplit('-k', 1)[1]} classes per box"
        md.append(f"| {name} | {r['mAP50']:.4f} | {(r['mAP50'] - ref['mAP50']) * 100:+.2f} pt | {r['coco_AP']:.4f} | "
                  f"{r['latency_with_postprocess_ms']:.2f} ms | {r['latency_with_postprocess_ms'] / ref['latency_with_postprocess_ms']:.2f}x |")  # fmt: skip
    write_results(Path(args.out), report, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
