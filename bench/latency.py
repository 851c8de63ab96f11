#!/usr/bin/env python3
"""Benchmark: TFLite latency of several models in one run, interleaved, against the first.

This machine is noisy (a neighbour's load moves a median by 30 % from one minute to the next),
so the models are timed in alternation — round after round, every model a few runs per round —
and each model's median is taken over all its runs. Ratios against the first model come from
the same minutes. ``.h5`` models are converted to float32 TFLite first (as bench/pruning.py
times them); ``.tflite`` files are timed as they are.

    python bench/latency.py -c bench/configs/raccoon-yolov3-tiny.json \
        --models runs/raccoon-yolov3-tiny/best.h5,runs/prune-bench/raccoon-yolov3-tiny-setting-10.h5 \
        --out bench/results/latency-raccoon
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from common import machine, write_results
from yolo3.errors import UserError, run_cli


def as_tflite(config, model: Path, folder: Path, index: int) -> Path:
    """``model`` itself if it is a .tflite, else its float32 conversion in ``folder`` (``index`` keeps equal names apart)."""
    from compression.quantize.convert import convert_config

    if model.suffix == ".tflite":
        return model
    out = folder / f"{index}-{model.stem}-float32.tflite"
    convert_config(config, str(model), "float32", out=str(out), force=True, progress=False)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True, help="the config the models belong to (input size, labels)")
    parser.add_argument("--models", required=True, help="comma-separated .h5 / .tflite files; the first is the reference")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of alternation")
    parser.add_argument("--runs", type=int, default=10, help="timed runs of every model per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    models = [Path(m) for m in args.models.split(",") if m]
    if not models:
        raise UserError("--models: give at least one .h5 or .tflite file")
    for m in models:
        if m.suffix not in (".h5", ".tflite"):
            raise UserError("not a .h5 or .tflite model", m)
        if not m.is_file():
            raise UserError("no such model file", m)
    if args.rounds < 1 or args.runs < 1:
        raise UserError("--rounds and --runs must be at least 1")

    from yolo3.config import load_config
    from yolo3.lite import TFLitePredictor, measure_latency
    from yolo3.spec import analyse, totals

    config = load_config(args.config)
    times: dict[int, list[float]] = {i: [] for i in range(len(models))}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = [as_tflite(config, m, Path(tmp), i) for i, m in enumerate(models)]
        predictors = [TFLitePredictor(f, threads=args.threads) for f in files]
        tensors = [np.full((1, *p.input_hw, 3), 0.5, np.float32) for p in predictors]
        for _ in range(args.rounds):
            for i, p in enumerate(predictors):
                result = measure_latency(p.invoke, tensors[i], runs=args.runs, warmup=1)
                times[i].append(result["median_ms"])
        for i, (m, f) in enumerate(zip(models, files)):
            macs = None
            if m.suffix == ".h5":
                from yolo3.evaluation import load_for_config

                macs = totals(analyse(load_for_config(config, str(m)).spec)).macs
            rows.append({"model": str(m), "tflite_bytes": f.stat().st_size, "macs": macs,
                         "median_ms": float(np.median(times[i])), "round_medians_ms": times[i]})  # fmt: skip
    ref = rows[0]["median_ms"]
    for r in rows:
        r["speed_up"] = ref / r["median_ms"]
    data = {"command": "python bench/latency.py " + " ".join(argv or sys.argv[1:]), "machine": machine(), "threads": args.threads,
            "rounds": args.rounds, "runs_per_round": args.runs, "models": rows}  # fmt: skip
    md = [
        f"TFLite latency on `{Path(args.config).name}`, {args.threads} threads, {args.rounds} interleaved rounds of {args.runs} runs "
        f"(median of the round medians); {data['machine']}",
        "",
        "| model | MACs | median | fastest round | slowest round | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        macs = "-" if r["macs"] is None else f"{r['macs'] / 1e9:.2f} G"
        md.append(f"| {Path(r['model']).name} | {macs} | {r['median_ms']:.1f} ms | {min(r['round_medians_ms']):.1f} ms | "
                  f"{max(r['round_medians_ms']):.1f} ms | {r['speed_up']:.2f}x |")  # fmt: skip
    write_results(Path(args.out), data, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
