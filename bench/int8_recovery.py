#!/usr/bin/env python3
"""Benchmark: what int8 costs a model and what each way of winning it back costs in latency and size, in one run.

    python bench/int8_recovery.py -c runs/compress-raccoon/plan-config.json --model runs/compress-raccoon/clustered-finetuned.h5 \
        --out bench/results/int8-recovery-raccoon

Rows (every one converted from --model, evaluated on the config's test split by the same code,
timed together, interleaved): Keras float, int8 after calibration, int8 with the 1 / 2 / 4 layers
of largest int8 error kept float (--float-layers auto:N, from QuantizationDebugger), int16x8,
int8 with decode + NMS in the graph (--nms), and int8 after repair steps (``int8+repair:cle``, ``int8+repair:ranges+qat``:
convert --repair cle, which keeps the equalised model only if it scores better on the validation
split; the JSON holds both scores). Latency: the model alone, and with decode + NMS
(numpy, or in the graph), batch 1, on the split's first image.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import machine, write_results
from yolo3.errors import UserError, run_cli

VARIANTS = ("keras", "int8", "int8+auto:1", "int8+auto:2", "int8+auto:4", "int16x8", "int8-nms")


def variant(label: str):
    """``int8+auto:2`` -> int8 with --float-layers auto:2; ``int8+repair:cle`` -> int8 with --repair cle; ``int8-nms`` -> int8 with --nms;
    plain format names as they are."""
    from compression.benchmark import Variant, parse_formats

    if "+" in label:
        fmt, option = label.split("+", 1)
        if option.startswith("repair:"):  # int8+repair:ranges+qat -> --repair ranges,qat
            return Variant(label, fmt, {"repair": option.removeprefix("repair:").replace("+", ",")})
        return Variant(label, fmt, {"float_layers": option})
    return parse_formats(label)[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--model", required=True, help="the .h5 to convert (e.g. a clustered model)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--samples", type=int, default=200, help="int8 calibration images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--work-dir", help="where the .tflite files go (default: beside --out)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override for every row, as yolo3's --set")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from compression.benchmark import run_benchmark
    from yolo3.config import load_config, parse_overrides

    if not Path(args.model).is_file():
        raise UserError("model file does not exist", args.model)
    variants = [variant(v.strip()) for v in args.variants.split(",") if v.strip()]
    config = load_config(args.config, parse_overrides(args.set))
    work = Path(args.work_dir) if args.work_dir else Path(args.out).with_name(Path(args.out).name + "-files")
    report = run_benchmark(config, args.model, variants, work, args.samples, args.threads, args.rounds, args.runs, "test", progress=False)
    report.update(command="python bench/int8_recovery.py " + " ".join(argv or sys.argv[1:]), machine=machine())
    rows = report["rows"]
    int8 = next((r for r in rows if r["format"] == "int8"), None)
    md = [
        f"`{args.model}` on {report['images']} test images at {report['input_size']}; latency = median of {args.rounds} x {args.runs} "
        f"interleaved runs at batch 1 ({args.threads} LiteRT threads); {report['machine']}",
        "",
        "| variant | mAP@0.5 | vs int8 | COCO AP | gzip | latency (model) | vs int8 | with decode + NMS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gain = f"{(r['mAP50'] - int8['mAP50']) * 100:+.2f} pt" if int8 else "-"
        slower = f"{r['latency_ms'] / int8['latency_ms']:.2f}x" if int8 else "-"
        md.append(f"| {r['format']} | {r['mAP50']:.4f} | {gain} | {r['coco_AP']:.4f} | {r['gzip_bytes'] / 1e6:.3f} MB | "
                  f"{r['latency_ms']:.2f} ms | {slower} | {r['latency_with_postprocess_ms']:.2f} ms |")  # fmt: skip
    write_results(Path(args.out), report, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
