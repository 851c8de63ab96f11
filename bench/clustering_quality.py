#!/usr/bin/env python3
"""Benchmark: mAP@0.5 and size of a fine-tuned model clustered into k values per kernel, per layer and
per channel, before and after cluster-preserving fine-tuning, in one run.

    python bench/clustering_quality.py -c bench/configs/raccoon-yolov3-tiny.json --model runs/raccoon-yolov3-tiny/best.h5 \
        --epochs 10 --out bench/results/clustering-raccoon
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
    parser.add_argument("--model", required=True)
    parser.add_argument("--clusters", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, help="peak learning rate of the fine-tuning (default: clustering.finetune_learning_rate)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from compression.cluster.methods import run_clustering
    from yolo3.config import load_config, with_overrides

    config = load_config(args.config)
    overrides = {"finetune_epochs": args.epochs}
    if args.lr:
        overrides["finetune_learning_rate"] = args.lr
    config = with_overrides(config, {f"clustering.{k}": v for k, v in overrides.items()})
    folder = Path(config.train.run_dir).parent
    rows = []
    for per_channel in (False, True):
        out = folder / f"clustered{args.clusters}{'-per-channel' if per_channel else ''}.h5"
        r = run_clustering(config, args.model, str(out), args.clusters, per_channel, None, True, progress=False)
        tuned = r.get("finetuned", {})
        rows.append({"per_channel": per_channel, "mAP50_before": r["before"]["mAP50"], "mAP50_after": r["after"]["mAP50"],
                     "mAP50_finetuned": tuned.get("mAP50"), "size_before": r["before"]["size"], "size_after": r["size_after"],
                     "codebook_bytes": r["details"]["clustering"]["codebook_bytes"], "seconds": r["details"]["clustering"]["seconds"],
                     "max_distinct": max(r["details"]["distinct_values"].values()),
                     "kept": ("fine-tuned" if tuned.get("kept") else "clustered, not fine-tuned") if tuned else None})  # fmt: skip
        print(rows[-1], flush=True)
    data = {"command": "python bench/clustering_quality.py " + " ".join(argv or sys.argv[1:]), "machine": machine(), "rows": rows}
    md = [
        f"Clustering `{Path(args.model).name}` ({Path(args.config).name}) into {args.clusters} values per kernel; "
        f"fine-tuning {args.epochs} epochs keeping the clusters (peak lr {config.clustering.finetune_learning_rate:g}); {data['machine']}",
        "",
        "| clustering | mAP@0.5 before | after clustering | after fine-tuning | model kept | .h5 gzip before | .h5 gzip after | codebook size |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {'per channel' if r['per_channel'] else 'per layer'} | {r['mAP50_before']:.4f} | {r['mAP50_after']:.4f} | "
            f"{r['mAP50_finetuned']:.4f} | {r['kept']} | {r['size_before']['gzip_bytes'] / 1e6:.1f} MB | {r['size_after']['gzip_bytes'] / 1e6:.1f} MB | "
            f"{r['codebook_bytes'] / 1e6:.1f} MB |"
        )
    write_results(Path(args.out), data, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
