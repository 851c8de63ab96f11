#!/usr/bin/env python3
"""Benchmark: which ground-truth boxes does each model find, and how surely? For every box of the
validation set, the best score among a model's detections of the box's class at IoU >= 0.5 (0 =
missed), and the best IoU of any of its detections. On a small test set one box can be worth more
mAP than a target allows; this shows which boxes make the difference between two models.

    python bench/missed_boxes.py -c bench/configs/raccoon-yolov3-tiny.json \
        --models runs/raccoon-yolov3-tiny/best.h5,runs/prune-bench/raccoon-yolov3-tiny-setting-10.h5 \
        --out bench/results/missed-boxes-raccoon
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from common import machine, write_results
from yolo3.errors import UserError, run_cli


def box_scores(records, detections, iou: float = 0.5) -> list[dict]:
    """Per ground-truth box (difficult ones left out): the best same-class detection score at IoU >= ``iou``, and the best IoU."""
    from yolo3.metrics import iou_matrix

    rows = []
    for record, det in zip(records, detections):
        for k, gt in enumerate(np.asarray(record.boxes, np.float64)):
            if record.difficult[k]:
                continue
            same = np.asarray(det.classes) == record.classes[k]
            overlaps = iou_matrix(gt[None], np.asarray(det.boxes, np.float64).reshape(-1, 4))[0] if len(det) else np.zeros(0)
            hit = same & (overlaps >= iou) if len(det) else np.zeros(0, bool)
            rows.append({"image": Path(record.image).name, "box": k, "score": float(np.max(np.asarray(det.scores)[hit])) if hit.any() else 0.0,
                         "best_iou": float(overlaps.max()) if len(overlaps) else 0.0})  # fmt: skip
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--models", required=True, help="comma-separated model files (.h5, .weights via the config, .tflite)")
    parser.add_argument("--show", type=int, default=8, help="boxes listed: those the least surely found by any model")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    if not models:
        raise UserError("--models: give at least one model file")

    from yolo3.config import load_config
    from yolo3.datasets import read_dataset
    from yolo3.evaluation import make_predictor, run_detection

    config = load_config(args.config)
    valid = read_dataset(config.dataset("valid"), config.labels)
    v = config.valid
    per_model = {}
    for m in models:
        predictor, _ = make_predictor(config, m)
        run = run_detection(predictor, valid.records, v.score_threshold, v.nms_iou, v.max_detections, v.batch_size, False)
        per_model[m] = box_scores(run.records, run.detections)
    boxes = len(next(iter(per_model.values())))
    order = sorted(range(boxes), key=lambda i: min(per_model[m][i]["score"] for m in models))[: args.show]
    data = {"command": "python bench/missed_boxes.py " + " ".join(argv or sys.argv[1:]), "machine": machine(), "boxes": boxes, "models": per_model}
    names = [Path(m).name for m in models]
    md = [
        f"Ground-truth boxes of `{Path(args.config).name}`'s validation set ({boxes} boxes) that some model finds least surely: "
        "best score of a same-class detection at IoU ≥ 0.5 (0 = missed) / best IoU of any detection",
        "",
        "| image | box | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(models),
    ]
    for i in order:
        first = per_model[models[0]][i]
        md.append(f"| {first['image']} | {first['box']} | " + " | ".join(f"{per_model[m][i]['score']:.3f} / {per_model[m][i]['best_iou']:.2f}" for m in models) + " |")
    md.append("")
    md.append("Missed boxes (no detection at IoU ≥ 0.5): " + ", ".join(f"{n} {sum(r['score'] == 0 for r in per_model[m])}" for n, m in zip(names, models)))
    write_results(Path(args.out), data, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
