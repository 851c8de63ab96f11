"""Cluster every convolution kernel into k shared values (default 32), optionally fine-tune keeping the clusters.

    yolo3 cluster -c config.json [--model IN] [--clusters 32] [--per-channel] [--finetune-epochs N] [--out OUT.h5] [--json OUT.json]
"""

from __future__ import annotations

from .common import add_config, in_key_range, load, positive, write_report

HELP = "cluster every kernel into 32 values (k-means), keep the clusters while fine-tuning"


def configure(parser) -> None:
    add_config(parser)
    parser.add_argument("--model", help="model file instead of the config's model.weights")
    parser.add_argument("--clusters", type=int, help="centroids per kernel (default: clustering.clusters, 32)")
    parser.add_argument("--per-channel", action="store_true", default=None, help="cluster each output channel separately")
    parser.add_argument("--finetune-epochs", type=int, help="cluster-preserving fine-tuning epochs (default: the config's)")
    parser.add_argument("--out", help="output .h5 (default: beside the model, NAME-clusteredK.h5)")
    parser.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    parser.add_argument("--json", help="also write the report as JSON")
    parser.add_argument("--quiet", action="store_true")


def run(args) -> int:
    from compression.cluster.methods import run_clustering
    from compression.job import format_report

    positive("--finetune-epochs", args.finetune_epochs, 0)
    in_key_range("--clusters", args.clusters, "clustering.clusters")
    config = load(args)
    report = run_clustering(config, args.model, args.out, args.clusters, args.per_channel, args.finetune_epochs, args.force, not args.quiet)
    print(format_report(report))
    write_report(args.json, report)
    return 0
