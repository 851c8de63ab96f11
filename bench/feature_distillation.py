#!/usr/bin/env python3
"""Benchmark: fine-grained feature imitation beside output distillation, on students compress makes.

    python bench/feature_distillation.py -c bench/configs/bccd-yolov3-tiny.json --teacher runs/bccd-yolov3-tiny/best.h5 \
        --epochs 15 --out bench/results/feature-distillation-bccd

Two students of the fine-tuned teacher, as the compress stages make them
(compression.steps.prune_to_plan): the first three conv + max-pool pairs folded
into stride-2 convolutions (the neck keeps its widths: the features are compared
directly), and every unit at half its channels (the neck is narrower: a 1x1
adapter maps it to the teacher's width). Each is fine-tuned the same number of
epochs from the same start with output distillation alone (weight 1) and with
output distillation + feature imitation (weight ``--feature-weight``); the best
epoch is chosen on the validation split and reported on the test split. Run
folders live under ``--work`` and resume.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import machine, write_results
from yolo3.errors import run_cli


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--teacher", required=True, help="the fine-tuned model the students are made from (.h5)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--feature-weight", type=float, default=1.0)
    parser.add_argument("--students", default="levers,half", help="levers (3 pool->stride pairs), half (every unit at half its channels)")
    parser.add_argument("--work", default="runs/feature-distillation")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from compression.budget.levers import Levers, pool_stride_pairs
    from compression.budget.planner import ChannelMap
    from compression.steps import finetune, prune_to_plan
    from yolo3.config import load_config, with_overrides
    from yolo3.evaluation import evaluate_config
    from yolo3.models import load_model

    config = load_config(args.config)
    teacher = Path(args.teacher)
    spec = load_model(teacher).spec
    size = config.model.input_size
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cmap = ChannelMap(spec)
    rt = config.pruning.round_to
    makers = {
        "levers": ("first 3 pool->stride pairs", {}, Levers(tuple(pool_stride_pairs(spec)[:3]))),
        "half": ("every unit at half its channels", {u: max(rt, c // 2 // rt * rt) for u, c in cmap.units.items()}, None),
    }
    tuned_config = with_overrides(config, {"train.eval_every": 3})
    data = {"command": "python bench/feature_distillation.py " + " ".join(argv or sys.argv[1:]), "machine": machine(), "config": args.config,
            "teacher": str(teacher), "epochs": args.epochs, "feature_weight": args.feature_weight, "students": {}}  # fmt: skip
    teacher_report = evaluate_config(config, teacher, progress=False, split="test")
    data["teacher_test_mAP50"] = teacher_report["mAP50"]
    rows = []
    for key in args.students.split(","):
        title, kept, levers = makers[key]
        start = work / f"{key}.h5"
        if not start.exists():
            prune_to_plan(teacher, kept, size, start, config.pruning, levers)
        student = {"title": title, "runs": {}}
        for mode, feature_weight in (("output", 0.0), ("output + features", args.feature_weight)):
            folder = work / f"{key}-{'features' if feature_weight else 'output'}"
            began = time.perf_counter()
            result = finetune(tuned_config, start, folder, args.epochs, progress=False, learning_rate=config.pruning.finetune_learning_rate,
                              keep_record=False, teacher=teacher, distill_weight=1.0, feature_weight=feature_weight,
                              freeze_backbone_epochs=0)  # fmt: skip
            seconds = time.perf_counter() - began
            report = evaluate_config(config, result["best_model"], progress=False, split="test")
            student["runs"][mode] = {"valid_mAP50": result["best_mAP50"], "test_mAP50": report["mAP50"], "seconds": seconds,
                                     "per_class": {k: v["ap"] for k, v in report["per_class"].items()},
                                     "history": [h.get("mAP50") for h in result["history"]]}  # fmt: skip
            rows.append(f"| {title} | {mode} | {result['best_mAP50']:.4f} | {report['mAP50']:.4f} | {seconds / 60:.1f} |")
            print(rows[-1], file=sys.stderr, flush=True)
        data["students"][key] = student
    gains = []
    for s in data["students"].values():
        o, f = s["runs"]["output"], s["runs"]["output + features"]
        gains.append(f"{s['title']}: {100 * (f['test_mAP50'] - o['test_mAP50']):+.2f} points on test ({100 * (f['valid_mAP50'] - o['valid_mAP50']):+.2f} on validation)")
    md = [f"Feature imitation beside output distillation: `{Path(args.config).name}`, teacher test mAP@0.5 {teacher_report['mAP50']:.4f}; "
          f"{args.epochs} epochs per run, feature weight {args.feature_weight:g}, on {data['machine']}", "",
          "| student | distillation | validation mAP@0.5 (best epoch) | test mAP@0.5 | minutes |", "|---|---|---|---|---|", *rows, "",
          "Gain of feature imitation: " + "; ".join(gains) + ".", "", f"Command: `{data['command']}`"]  # fmt: skip
    write_results(Path(args.out), data, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
