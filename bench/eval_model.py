#!/usr/bin/env python3
"""Benchmark: evaluate a config's model on its validation set; JSON + markdown table.

    python bench/eval_model.py -c bench/configs/coco128-yolov3-tiny.json --out bench/results/coco128-yolov3-tiny
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import machine, write_results
from yolo3.errors import run_cli


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--model", help="model file instead of the config's")
    parser.add_argument("--out", required=True, help="output path without suffix (.json and .md are written)")
    args = parser.parse_args(argv)

    from yolo3.config import load_config
    from yolo3.evaluation import evaluate_config

    config = load_config(args.config)
    report = evaluate_config(config, args.model, progress=False)
    report["machine"] = machine()
    report["command"] = "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])])
    coco = report["coco"]
    md = [
        f"Model `{Path(report['model']).name}` on `{Path(args.config).name}` "
        f"({report['images']} images, input {report['input_size'][0]}), {report['machine']}",
        "",
        "| mAP@0.5 (VOC) | COCO AP | AP50 | AP75 | params | MACs | images/s | model ms/img |",
        "|---|---|---|---|---|---|---|---|",
        f"| {report['mAP50']:.4f} | {coco['AP']:.4f} | {coco['AP50']:.4f} | {coco['AP75']:.4f} | {report['params']:,} | "
        f"{report['macs'] / 1e9:.2f} G | {report['images_per_second']:.1f} | {report['model_seconds_per_image'] * 1000:.1f} |",
    ]
    write_results(Path(args.out), report, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
