"""Evaluate a YOLOv3 (Keras or .tflite) on the test split of a config: VOC mAP@0.5, COCO AP, size, speed.

    yolo3 evaluate -c config.json [--model PATH(.weights|.h5|.tflite)] [--split test|valid] [--json OUT.json]
    python evaluate.py -c config.json -p 1|2|3|4|5 [...]

-p selects the compression applied before evaluating: 1 = none, 2 = magnitude pruning (TFMOT),
3 = similarity filter pruning, 4 = network slimming, 5 = residual-layer pruning (the same as
``yolo3 prune --method ...``). With 2..5 the model is evaluated before and after, saved (--out),
and optionally fine-tuned (--finetune-epochs).
"""

from __future__ import annotations

from .common import add_config, load, positive, write_report

HELP = "evaluate a Keras or .tflite model: per-class AP, mAP@0.5, COCO AP, parameters, MACs, size, latency"
MODES = {1: "no pruning", 2: "magnitude pruning", 3: "similarity pruning", 4: "network slimming", 5: "layer pruning"}


def configure(parser) -> None:
    add_config(parser)
    parser.add_argument("-p", "--pruning", type=int, default=1, help="1 none (default), 2 magnitude, 3 similarity, 4 slimming, 5 layers")
    add_pruning_flags(parser)
    parser.add_argument("--cfg", help="architecture (built-in name or .cfg) for a .weights model, instead of the config's")
    parser.add_argument("--split", choices=("test", "valid"), default="test",
                        help="-p 1: the split to evaluate on: test (default; the valid section when the config has no separate test split) or valid")
    parser.add_argument("--threads", type=int, default=2, help="LiteRT threads for a .tflite model (default 2)")
    parser.add_argument("--latency-runs", type=int, default=20, help="forward passes timed for the median latency (0 = skip)")
    parser.add_argument("--plots", metavar="DIR", help="-p 1: also write precision-recall curves and the confusion matrix as PNGs into DIR")


def add_pruning_flags(parser) -> None:
    parser.add_argument("--model", help="model file (.weights, .h5 or .tflite) instead of the config's model.weights")
    parser.add_argument("--out", help="pruning: where to write the pruned .h5 (default: pruning.output or NAME-pN.h5)")
    parser.add_argument("--finetune-epochs", type=int, help="pruning: fine-tuning epochs after pruning (default: pruning.finetune_epochs)")
    parser.add_argument("--force", action="store_true", help="pruning: overwrite the output if it exists")
    parser.add_argument("--json", help="also write the report as JSON to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def prune(args, mode: int) -> int:
    from compression.job import format_report
    from compression.prune.methods import run_pruning

    positive("--finetune-epochs", args.finetune_epochs, 0)
    config = load(args)
    report = run_pruning(config, mode, args.model, args.out, args.finetune_epochs, args.force, not args.quiet)
    print(format_report(report))
    write_report(args.json, report)
    return 0


def run(args) -> int:
    from yolo3.errors import UserError

    if args.pruning not in MODES:
        raise UserError(f"-p {args.pruning}: unknown mode (available: {', '.join(f'{k} = {v}' for k, v in MODES.items())})")
    if args.pruning != 1:
        return prune(args, args.pruning)
    from yolo3.evaluation import evaluate_config, format_report

    positive("--threads", args.threads)
    positive("--latency-runs", args.latency_runs, 0)
    if args.plots:
        from yolo3.fileio import check_output_folder

        check_output_folder(args.plots, "--plots folder")
    config = load(args)
    report = evaluate_config(config, args.model, args.cfg, not args.quiet, args.threads, args.latency_runs, args.split, curves=bool(args.plots))
    report["mode"] = MODES[args.pruning]
    print(format_report(report))
    if args.plots:
        from yolo3.plots import write_plots

        for path in write_plots(report, args.plots):
            print(f"wrote {path}")
    write_report(args.json, report)
    return 0
