"""Anchors by IoU k-means on the training boxes of a config, at its input size.

    yolo3 anchors -c config.json [-k 9] [--json]
"""

from __future__ import annotations

import json

from yolo3.errors import UserError

from .common import add_config, load, positive

HELP = "anchors by IoU k-means on the training boxes of a config"


def configure(parser) -> None:
    add_config(parser)
    parser.add_argument("-k", type=int, help="number of anchors (default: the architecture's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")


def run(args) -> int:
    from yolo3.anchors import box_sizes, kmeans_anchors
    from yolo3.datasets import read_dataset
    from yolo3.zoo import resolve_spec

    positive("-k", args.k)
    config = load(args)
    dataset = read_dataset(config.dataset("train"), config.labels)
    spec = resolve_spec(config.model.architecture)
    k = args.k or len(spec.layers[spec.yolo_indices()[0]].get_floats("anchors")) // 2
    wh = box_sizes(dataset.records, config.model.input_size)
    try:
        anchors, mean_iou = kmeans_anchors(wh, k, seed=args.seed)
    except ValueError as err:
        raise UserError(str(err), args.config) from None
    flat = [int(round(v)) for v in anchors.reshape(-1)]
    if args.json:
        print(json.dumps({"anchors": flat, "mean_iou": mean_iou, "boxes": len(wh)}))
    else:
        print(f"{k} anchors from {len(wh)} training boxes at input {config.model.input_size} (mean best IoU {mean_iou:.3f}):")
        print(f'  "anchors": {json.dumps(flat)}')
        print("put this line into the model section of the config")
    return 0
