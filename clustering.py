#!/usr/bin/env python3
"""Cluster every convolution kernel into k shared values (default 32), optionally fine-tune keeping the clusters.

    python clustering.py -c config.json [--model IN] [--clusters 32] [--per-channel] [--finetune-epochs N] [--out OUT.h5] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import sys

from yolo3.errors import run_cli


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--model", help="model file instead of the config's model.weights")
    parser.add_argument("--clusters", type=int, help="centroids per kernel (default: clustering.clusters, 32)")
    parser.add_argument("--per-channel", action="store_true", default=None, help="cluster each output channel separately")
    parser.add_argument("--finetune-epochs", type=int, help="cluster-preserving fine-tuning epochs (default: the config's)")
    parser.add_argument("--out", help="output .h5 (default: beside the model, NAME-clusteredK.h5)")
    parser.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    parser.add_argument("--json", help="also write the report as JSON")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    from compression.cluster_run import format_report, run_clustering
    from yolo3.config import load_config
    from yolo3.errors import UserError
    from yolo3.reporting import write_json

    if args.clusters is not None and args.clusters < 2:
        raise UserError("--clusters must be at least 2")
    config = load_config(args.config)
    report = run_clustering(config, args.model, args.out, args.clusters, args.per_channel, args.finetune_epochs, args.force, not args.quiet)
    print(format_report(report))
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
