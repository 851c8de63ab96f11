#!/usr/bin/env python3
"""Evaluate a YOLOv3 on the validation set of a config: VOC mAP@0.5, COCO AP, size, speed.

    python evaluate.py -c config.json -p 1 [--model PATH(.weights|.h5|.tflite)] [--threads 2] [--json OUT.json]

-p selects the compression applied before evaluating: 1 = none, 2 = magnitude pruning (TFMOT),
3 = similarity filter pruning, 4 = network slimming, 5 = residual-layer pruning. With 2..5 the
model is evaluated before and after, saved (--out), and optionally fine-tuned (--finetune-epochs).
"""

from __future__ import annotations

import argparse
import sys

from yolo3.errors import UserError, run_cli

MODES = {1: "no pruning", 2: "magnitude pruning", 3: "similarity pruning", 4: "network slimming", 5: "layer pruning"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True, help="config.json")
    parser.add_argument("-p", "--pruning", type=int, default=1, help="1 none (default), 2 magnitude, 3 similarity, 4 slimming, 5 layers")
    parser.add_argument("--out", help="-p 2..5: where to write the pruned .h5 (default: pruning.output or NAME-pN.h5)")
    parser.add_argument("--finetune-epochs", type=int, help="-p 2..5: fine-tuning epochs after pruning (default: the config's)")
    parser.add_argument("--force", action="store_true", help="-p 2..5: overwrite the output if it exists")
    parser.add_argument("--model", help="model file (.weights or .h5) instead of the config's model.weights")
    parser.add_argument("--cfg", help="architecture (built-in name or .cfg) for a .weights model, instead of the config's")
    parser.add_argument("--split", choices=("test", "valid"), default="test",
                        help="-p 1: the split to evaluate on: test (default; the valid section when the config has no separate test split) or valid")
    parser.add_argument("--json", help="also write the report as JSON to this file")
    parser.add_argument("--threads", type=int, default=2, help="LiteRT threads for a .tflite model (default 2)")
    parser.add_argument("--latency-runs", type=int, default=20, help="forward passes timed for the median latency (0 = skip)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.pruning not in MODES:
        raise UserError(f"-p {args.pruning}: unknown mode (available: {', '.join(f'{k} = {v}' for k, v in MODES.items())})")

    from yolo3.config import load_config
    from yolo3.evaluation import evaluate_config, format_report
    from yolo3.reporting import write_json

    config = load_config(args.config)
    if args.pruning != 1:
        from compression.prune_run import format_report as format_pruning
        from compression.prune_run import run_pruning

        report = run_pruning(config, args.pruning, args.model, args.out, args.finetune_epochs, args.force, not args.quiet)
        print(format_pruning(report))
        if args.json:
            write_json(args.json, report)
            print(f"wrote {args.json}")
        return 0
    report = evaluate_config(config, args.model, args.cfg, not args.quiet, args.threads, args.latency_runs, args.split)
    report["mode"] = MODES[args.pruning]
    print(format_report(report))
    if args.json:
        write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
