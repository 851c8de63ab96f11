#!/usr/bin/env python3
"""Benchmark: which filters to remove? mAP@0.5 right after removing the same fraction of every layer's
filters (1x1 and 3x3 layers, no fine-tuning) by four criteria: similarity (d = 0.5 euclid + 0.5 cosine,
with compensation), similarity by the Euclidean term only, |BN scale|, and the norm of the BN-scaled filter.

    python bench/pruning_criteria.py -c bench/configs/raccoon-yolov3-tiny.json --model runs/raccoon-yolov3-tiny/best.h5 \
        --ratios 0.11,0.3 --out bench/results/pruning-criteria-raccoon
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from common import machine, write_results
from yolo3.errors import run_cli


def ranked_masks(spec, weights, ratio: float, score) -> dict:
    """Remove the ``ratio`` lowest-scored filters of every single (non-shortcut) prunable layer."""
    from compression.prune.surgery import channel_groups

    masks = {}
    for g in channel_groups(spec):
        if not g.prunable or len(g.members) != 1:
            continue
        s = score(g.members[0])
        keep = np.ones(g.channels, bool)
        keep[np.argsort(s, kind="stable")[: int(math.floor(ratio * g.channels))]] = False
        masks[g.id] = keep
    return masks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--ratios", default="0.11,0.3")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from compression.prune.pruning import filters_after_bn, similarity_masks
    from compression.prune.surgery import prune_channels
    from yolo3.config import load_config
    from yolo3.datasets import read_dataset
    from yolo3.evaluation import KerasPredictor, evaluate, load_for_config
    from yolo3.keras_model import build_model, get_darknet_weights, set_darknet_weights
    from yolo3.models import LoadedModel
    from yolo3.spec import analyse, totals

    config = load_config(args.config)
    loaded = load_for_config(config, args.model)
    valid = read_dataset(config.dataset("valid"), config.labels)
    spec, weights = loaded.spec, get_darknet_weights(loaded.model, loaded.spec)
    v = config.valid

    def score(result) -> dict:
        model = build_model(result.spec)
        set_darknet_weights(model, result.spec, result.weights)
        m = evaluate(KerasPredictor(LoadedModel(model, result.spec, "pruned")), valid, config.labels, v.score_threshold,
                     v.nms_iou, v.max_detections, v.batch_size, False)["mAP50"]  # fmt: skip
        return {"mAP50": m, "macs_removed": 1 - totals(analyse(result.spec)).macs / totals(analyse(spec)).macs}

    criteria = {
        "similarity (w1 = w2 = 0.5)": lambda r: prune_channels(spec, weights, *_plan(similarity_masks(spec, weights, 0.5, 0.5, r, None, (1, 3), 1))),
        "similarity, Euclidean term only": lambda r: prune_channels(spec, weights, *_plan(similarity_masks(spec, weights, 1.0, 0.0, r, None, (1, 3), 1))),
        "absolute BN scale": lambda r: prune_channels(spec, weights, ranked_masks(spec, weights, r, lambda i: np.abs(weights.convs[i].bn[0]))),
        "norm of the BN-scaled filter": lambda r: prune_channels(
            spec, weights, ranked_masks(spec, weights, r, lambda i: np.linalg.norm(filters_after_bn(weights, i)[:, :-1], axis=1))
        ),
    }
    ratios = [float(x) for x in args.ratios.split(",")]
    base = evaluate(KerasPredictor(loaded), valid, config.labels, v.score_threshold, v.nms_iou, v.max_detections, v.batch_size, False)["mAP50"]
    rows = []
    for name, prune in criteria.items():
        row = {"criterion": name, "results": {str(r): score(prune(r)) for r in ratios}}
        rows.append(row)
        print(row, flush=True)
    data = {"command": "python bench/pruning_criteria.py " + " ".join(argv or sys.argv[1:]), "machine": machine(), "unpruned_mAP50": base, "rows": rows}
    md = [
        f"`{Path(args.config).name}` ({Path(args.model).name}, mAP@0.5 {base:.4f}): mAP@0.5 right after removing a fraction of every "
        f"1x1 and 3x3 layer's filters, no fine-tuning; {data['machine']}",
        "",
        "| criterion | " + " | ".join(f"{r:.0%} removed" for r in ratios) + " |",
        "|---|" + "---|" * len(ratios),
    ]
    for row in rows:
        md.append(f"| {row['criterion']} | " + " | ".join(f"{row['results'][str(r)]['mAP50']:.4f}" for r in ratios) + " |")
    write_results(Path(args.out), data, "\n".join(md))
    return 0


def _plan(plan) -> tuple:
    return plan.masks, plan.merges


if __name__ == "__main__":
    sys.exit(run_cli(main))
