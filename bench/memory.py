#!/usr/bin/env python3
"""Benchmark: flash and RAM of int8 models — file bytes, peak activation memory by liveness, LiteRT's arena span.

    python bench/memory.py --out bench/results/memory \
        --model ../shared/weights/yolov3-tiny-coco/yolov3-tiny.cfg:../shared/weights/yolov3-tiny-coco/yolov3-tiny.weights:416,288 \
        --model ../shared/weights/yolo-fastest-1.0-coco/yolo-fastest.cfg:../shared/weights/yolo-fastest-1.0-coco/yolo-fastest.weights:320 \
        [--tflite runs/compress-bccd/final-int8.tflite ...]

Each ``--model CFG:WEIGHTS:SIZES`` is converted to full-integer int8 at every size
(calibrated on the Darknet sample images, ``--images``); each ``--tflite`` is read as
it is (a compressed model). The figures come from yolo3.tflite_memory (the same as
``yolo3 info FILE.tflite``): they depend on the graph, not on the machine's load.
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
    parser.add_argument("--model", action="append", default=[], help="CFG:WEIGHTS:SIZE[,SIZE...] (Darknet files)")
    parser.add_argument("--tflite", action="append", default=[], help="a .tflite to read as it is")
    parser.add_argument("--images", default="../shared/darknet/images", help="calibration images")
    parser.add_argument("--levers", action="store_true", help="also each model with ReLU, with its first 3 pool->stride pairs, and with both")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from compression.budget.levers import Levers, pool_stride_pairs
    from compression.quantize.tflite_export import export_tflite
    from yolo3.keras_model import build_model, get_darknet_weights, set_darknet_weights
    from yolo3.models import load_model, save_model
    from yolo3.tflite_memory import memory_report

    images = sorted(str(p) for p in Path(args.images).glob("*.jpg"))
    rows, data = [], {"command": "python bench/memory.py " + " ".join(argv or sys.argv[1:]), "machine": machine(), "models": []}
    with tempfile.TemporaryDirectory(prefix="yolo3-memory-") as tmp:
        files = []
        for item in args.model:
            cfg, weights, sizes = item.rsplit(":", 2)
            for size in (int(s) for s in sizes.split(",")):
                loaded = load_model(weights, architecture=cfg, size=size)
                pairs = tuple(pool_stride_pairs(loaded.spec)[:3])
                variants = [("", Levers())]
                if args.levers:
                    variants += [(", ReLU", Levers(relu=True))] + ([(f", {len(pairs)} pool->stride", Levers(pairs)),
                                                                    (f", {len(pairs)} pool->stride + ReLU", Levers(pairs, relu=True))] if pairs else [])  # fmt: skip
                for k, (label, levers) in enumerate(variants):
                    spec, model = loaded.spec, loaded.model
                    if not levers.empty:
                        spec, w = levers.apply(loaded.spec, get_darknet_weights(loaded.model, loaded.spec))
                        model = build_model(spec, size=size)
                        set_darknet_weights(model, spec, w)
                    h5 = Path(tmp) / f"{Path(cfg).stem}-{size}-{k}.h5"
                    save_model(model, spec, h5)
                    out = h5.with_suffix(".tflite")
                    names = [f"class{c}" for c in range(spec.num_classes)]
                    export_tflite(h5, out, "int8", images, names, size, spec)
                    files.append((f"{Path(cfg).stem} int8 at {size}{label}", out))
        files += [(str(p), Path(p)) for p in args.tflite]
        for title, path in files:
            r = memory_report(path)
            data["models"].append({"model": title, **r})
            rows.append(f"| {title} | {r['flash_bytes'] / 1024:,.0f} | {r['peak_activation_bytes'] / 1024:,.0f} | {r['peak_at']} | "
                        f"{r['arena_span_bytes'] / 1024:,.0f} | {r['arena_span_bytes'] / max(r['peak_activation_bytes'], 1):.2f} | {r['operators']} |")  # fmt: skip
    md = [f"Flash and RAM of int8 `.tflite` models (yolo3.tflite_memory; {data['machine']})", "",
          "| model | flash (KiB) | peak activation memory (KiB) | at | LiteRT arena span (KiB) | arena / peak | operators |",
          "|---|---|---|---|---|---|---|", *rows, "",
          "Peak: the largest sum of activation tensors alive at one operator (graph input and outputs kept throughout, weights in "
          "flash). Arena span: the address range LiteRT's planner (built-in kernels) gave the same tensors; kernel scratch comes on top.",
          "", f"Command: `{data['command']}`"]  # fmt: skip
    write_results(Path(args.out), data, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
