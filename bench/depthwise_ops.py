#!/usr/bin/env python3
"""Benchmark: how Yolo-Fastest's depthwise convolutions convert to int8 and how fast they run.

    python bench/depthwise_ops.py --out bench/results/depthwise-ops

The built-in ``yolo-fastest`` (random weights; the speed does not depend on the values) is built
two ways: as this tool builds it (``DepthwiseConv2D`` for ``groups = channels``) and with every
depthwise layer as a grouped ``Conv2D(groups=C)``, which is what Keras would build from the
cfg's ``groups=`` alone. Both go through the int8 converter; the table lists the TFLite operators
each holds and their int8 latency with LiteRT's XNNPACK delegate and with its built-in kernels
only, all timed in one interleaved run, beside YOLOv4-tiny (its [route] channel groups) and
YOLOv3-tiny at the same size.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from common import machine, write_results
from yolo3.errors import run_cli


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output path without suffix (.json and .md are written)")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import numpy as np

    import yolo3.keras_model as km
    from compression.budget.latency_worker import convert_int8, randomize
    from yolo3.lite import _interpreter_class, interleaved_latency
    from yolo3.zoo import build_spec

    variants = {}
    for name, arch, depthwise in (("yolo-fastest, DepthwiseConv2D", "yolo-fastest", True),
                                  ("yolo-fastest, grouped Conv2D", "yolo-fastest", False),
                                  ("yolov4-tiny", "yolov4-tiny", True),
                                  ("yolov3-tiny", "yolov3-tiny", True)):  # fmt: skip
        original = km.is_depthwise
        if not depthwise:
            km.is_depthwise = lambda groups, cin: False  # what Conv2D(groups=...) alone would build
        try:
            model = km.build_model(build_spec(arch, 80, args.size))
        finally:
            km.is_depthwise = original
        randomize(model, 0)
        variants[name] = convert_int8(model)
    from ai_edge_litert.interpreter import OpResolverType

    def invoke_of(interpreter):
        index = interpreter.get_input_details()[0]["index"]

        def run(tensor):
            interpreter.set_tensor(index, tensor)
            interpreter.invoke()

        return run

    # Each model twice: with LiteRT's default XNNPACK delegate, and with the built-in kernels only
    # (what a runtime without XNNPACK, or a delegate that refuses an operator, falls back to).
    rows, calls, tensors, slots = [], [], [], []
    for name, blob in variants.items():
        row = {"model": name, "bytes": len(blob)}
        for key, resolver in (("xnnpack", OpResolverType.AUTO), ("builtin", OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)):
            interpreter = _interpreter_class()(model_content=blob, num_threads=args.threads, experimental_op_resolver_type=resolver)
            try:
                interpreter.allocate_tensors()
                inp = interpreter.get_input_details()[0]
                tensor = np.zeros(inp["shape"], inp["dtype"])
                invoke_of(interpreter)(tensor)
            except (RuntimeError, ValueError) as err:
                row[f"{key}_error"] = str(err).splitlines()[0][:200]
                continue
            if key == "builtin":
                row["ops"] = dict(sorted(Counter(op["op_name"] for op in interpreter._get_ops_details()).items()))
            calls.append(invoke_of(interpreter))
            tensors.append(tensor)
            slots.append((row, key))
        rows.append(row)
    timed = interleaved_latency(calls, tensors, args.rounds, args.runs)
    for (row, key), t in zip(slots, timed):
        row[f"{key}_ms"] = t["median_ms"]
    report = {"rows": rows, "size": args.size, "machine": machine(), "threads": args.threads,
              "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])])}  # fmt: skip
    md = [f"int8 (random weights) at {args.size}, median of {args.rounds} x {args.runs} runs, all interleaved, {args.threads} LiteRT "
          f"threads, with the XNNPACK delegate and with LiteRT's built-in kernels only; {report['machine']}", "",
          "| model | int8, XNNPACK | int8, built-in kernels | size | operators |", "|---|---|---|---|---|"]  # fmt: skip

    def cell(row, key):
        return f"{row[key + '_ms']:.2f} ms" if key + "_ms" in row else "fails: " + row.get(key + "_error", "?")

    for r in rows:
        ops = ", ".join(f"{k} x{v}" for k, v in r.get("ops", {}).items())
        md.append(f"| {r['model']} | {cell(r, 'xnnpack')} | {cell(r, 'builtin')} | {r['bytes'] / 1e6:.2f} MB | {ops} |")
    write_results(Path(args.out), report, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
