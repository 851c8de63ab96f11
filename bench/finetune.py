#!/usr/bin/env python3
"""Benchmark: fine-tune a model from a config (the recipe), then evaluate the best model on the test split.

The best epoch is chosen on the validation split; the figures come from the test split (the same
images when the config has no separate test split, which the table then says).

    python bench/finetune.py -c bench/configs/raccoon-yolov3-tiny.json --out bench/results/finetune-raccoon [--fresh]

The config is the recipe: starting weights, split files, hyper-parameters, seed and run folder.
The fine-tuned model is left in the config's run folder (best.h5) for the pruning and
clustering benchmarks; ``--fresh`` deletes that folder first (otherwise a finished run is reused
and an interrupted one resumed).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from common import machine, write_results
from yolo3.errors import run_cli


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--out", required=True, help="output path without suffix (.json and .md are written)")
    parser.add_argument("--fresh", action="store_true", help="delete the run folder first")
    args = parser.parse_args(argv)

    from yolo3.config import load_config
    from yolo3.evaluation import evaluate_config
    from yolo3.training import RunOptions, train

    config = load_config(args.config)
    run_dir = Path(config.train.run_dir)
    if args.fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    start = time.perf_counter()
    result = train(config, RunOptions(progress=False))
    seconds = time.perf_counter() - start
    report = evaluate_config(config, result["best_model"], progress=False, split="test")
    data = {
        "config": args.config,
        "command": "python bench/finetune.py " + " ".join(argv or sys.argv[1:]),
        "machine": machine(),
        "train_seconds": seconds,
        "train_images": None,
        "history": result["history"],
        "best_model": result["best_model"],
        "evaluation": report,
    }
    rows = [
        f"Fine-tuning `{Path(args.config).name}`: {result['epochs']} epochs in {seconds / 60:.1f} min on {data['machine']}; "
        f"best epoch chosen on the validation split, evaluated on {report['images']} test images at {report['input_size'][0]}"
        + (" (the validation images: this config has no separate test split)" if not config.has_test_split else ""),
        "",
        "| class | AP@0.5 | ground truth |",
        "|---|---|---|",
    ]
    rows += [
        f"| {name} | {v['ap']:.4f} | {v['ground_truth']} |" for name, v in report["per_class"].items() if v["ap"] is not None
    ]
    rows += [
        f"| **mAP@0.5** | **{report['mAP50']:.4f}** | |",
        "",
        f"COCO AP {report['coco']['AP']:.4f}, AP50 {report['coco']['AP50']:.4f}, AP75 {report['coco']['AP75']:.4f}; "
        f"validation mAP@0.5 per evaluated epoch: "
        + ", ".join(f"{h['epoch']}: {h['mAP50']:.3f}" for h in result["history"] if "mAP50" in h),
    ]
    write_results(Path(args.out), data, "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
