#!/usr/bin/env python3
"""Benchmark: int8 latency of the latency levers on whole networks (random weights, LiteRT, interleaved).

    python bench/levers.py --architecture yolov3-tiny --sizes 416,288 --out bench/results/levers-tiny

For each input size: the unpruned network, the first 1, 2, ... conv + max-pool pairs
folded into stride-2 convolutions, all of them with ReLU, ReLU alone, and every unit at
half its channels — timed in the same interleaved rounds, so the ratios hold on a noisy
machine. The same timing call the compress levers stage uses
(compression.budget.latency_model.measure_networks).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import machine, write_results
from yolo3.errors import run_cli


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", default="yolov3-tiny", help="a built-in name or a .cfg")
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--sizes", default="416,288")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from compression.budget.latency_model import measure_networks
    from compression.budget.levers import Levers, pool_stride_pairs
    from compression.budget.planner import ChannelMap
    from yolo3.spec import with_classes
    from yolo3.zoo import resolve_spec

    spec = with_classes(resolve_spec(args.architecture), args.classes)
    pairs = pool_stride_pairs(spec)
    variants = [("unpruned", Levers())] + [(f"{k} pair(s) -> stride 2", Levers(tuple(pairs[:k]))) for k in range(1, len(pairs) + 1)]
    variants += [("ReLU alone", Levers(relu=True))]
    if pairs:
        variants += [("all pairs + ReLU", Levers(tuple(pairs), relu=True))]
    cmap = ChannelMap(spec)
    half = cmap.spec_with({u: max(8, c // 2) for u, c in cmap.units.items()})
    sizes = [int(s) for s in args.sizes.split(",")]
    rows, data = [], {"command": "python bench/levers.py " + " ".join(argv or sys.argv[1:]), "machine": machine(), "threads": args.threads,
                      "architecture": args.architecture, "pairs": pairs, "sizes": {}}  # fmt: skip
    for size in sizes:
        specs = [(v.apply_spec(spec), size) for _, v in variants] + [(half, size)]
        ms = measure_networks(specs, args.threads, progress=False, rounds=args.rounds, runs=5)
        names = [n for n, _ in variants] + ["every unit at half its channels"]
        data["sizes"][str(size)] = {n: {"ms": t, "speedup": ms[0] / t} for n, t in zip(names, ms)}
        rows += [f"| {size} | {n} | {t:.2f} ms | {ms[0] / t:.2f}x |" for n, t in zip(names, ms)]
    md = [f"Latency levers on `{args.architecture}`, int8 LiteRT, {args.threads} threads, random weights, {args.rounds} interleaved rounds "
          f"(median); {data['machine']}", "", "| input | network | int8 latency | speed-up |", "|---|---|---|---|", *rows]  # fmt: skip
    write_results(Path(args.out), data, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
