#!/usr/bin/env python3
"""Benchmark: compress.py on a fine-tuned model, its report kept as bench results (JSON + markdown).

    python bench/compress.py -c bench/configs/bccd-yolov3-tiny.json --model runs/bccd-yolov3-tiny/best.h5 \
        --target-speedup 3 --run-dir runs/compress-bccd --out bench/results/compress-bccd

The JSON is the run's report.json (top-level keys: target, speedup_vs_unpruned_int8,
size_ratio_vs_float_weights, map50_float_unpruned, map50_final_int8, latency_ms_final_int8,
latency_ms_unpruned_int8, predicted_latency_ms_final_int8, seconds, max_loss,
map50_loss_validation, levers, delivered) plus the command, the machine and the sensitivity
analysis's own time. Run it on a quiet machine: the latency model
and the final timing are measurements.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import machine, write_results
from yolo3.errors import run_cli


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--target-speedup", help="X, or max")
    parser.add_argument("--target-latency", type=float)
    parser.add_argument("--target-size", help="MB, or min")
    parser.add_argument("--target-macs", type=float)
    parser.add_argument("--preset")
    parser.add_argument("--max-loss", type=float, default=1.0, help="the accuracy floor, mAP@0.5 points on validation")
    parser.add_argument("--time-budget", type=float, help="minutes the run may take (default: compress.time_budget)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override, as yolo3's --set")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--measurements-from", help="reuse the measuring stages of another run folder (same model and config)")
    parser.add_argument("--no-xnnpack", action="store_true", help="time with LiteRT's built-in kernels (compress.xnnpack false)")
    parser.add_argument("--force", action="store_true", help="redo the stages whose inputs changed (as yolo3 compress --force)")
    parser.add_argument("--out", required=True, help="output path without suffix (.json and .md are written)")
    args = parser.parse_args(argv)

    from compression.budget.compress import CompressOptions, parse_targets, run_compress
    from compression.budget.report import format_markdown
    from yolo3.config import load_config, parse_overrides

    config = load_config(args.config, parse_overrides(args.set))
    targets = parse_targets(args.target_speedup, args.target_latency, args.target_size, args.target_macs)
    report = run_compress(config, args.model, CompressOptions(target=targets[0] if targets else None, also=tuple(targets[1:]), preset=args.preset, run_dir=Path(args.run_dir), progress=False,
                                                               measurements_from=args.measurements_from, max_loss=args.max_loss,
                                                               time_budget=args.time_budget, no_xnnpack=args.no_xnnpack, force=args.force))
    stages = json.loads((Path(args.run_dir) / "stages" / "sensitivity.json").read_text()) if (Path(args.run_dir) / "stages" / "sensitivity.json").exists() else None
    data = {"command": "python bench/compress.py " + " ".join(argv or sys.argv[1:]), "machine": machine(), **report,
            "sensitivity_seconds": stages["seconds"] if stages else None}  # fmt: skip
    md = [f"`compress.py` on `{Path(args.config).name}` ({args.model}); {data['machine']}", "", format_markdown(report)]
    if stages:
        md.append(f"\nSensitivity analysis alone: {stages['seconds'] / 60:.1f} min.")
    write_results(Path(args.out), data, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
