"""Fine-tune a model this tool wrote, keeping its architecture (a pruned model stays pruned).

    yolo3 finetune -c config.json --model IN.h5 [--epochs N] [--run-dir DIR] [--sparsity-l1 S] [--learning-rate LR]

With --sparsity-l1 (network slimming's sparse training) an L1 penalty S * sum|gamma| pushes BN
scales of prunable channels to zero, and RUN_DIR/bn_scales/epoch_NNN.png plots their distribution.
With --teacher the model also learns the teacher's raw outputs in every cell (knowledge
distillation, see compression/distillation.py), which helps a pruned model recover.
With --qat the fine-tuning is quantization-aware (TFMOT; the scheme keeps zeros and clusters),
--epochs defaults to quantization.qat_epochs and --learning-rate to quantization.qat_learning_rate,
and the QAT model is converted to RUN_DIR/qat-int8.tflite.
"""

from __future__ import annotations

from .common import add_config, load, positive

HELP = "fine-tune a model this tool wrote, keeping what compression did; distillation, sparse training, QAT"


def configure(parser) -> None:
    add_config(parser)
    parser.add_argument("--model", required=True, help="the .h5 to fine-tune (its embedded cfg is kept)")
    parser.add_argument("--epochs", type=int, help="override train.nb_epochs")
    parser.add_argument("--run-dir", help="override train.run_dir")
    parser.add_argument("--sparsity-l1", type=float, help="sparse training for network slimming: L1 strength on BN scales (default: pruning.sparsity_l1)")
    parser.add_argument("--learning-rate", type=float, help="override train.learning_rate")
    parser.add_argument("--teacher", help="knowledge distillation: a model with the same heads (e.g. the model before pruning)")
    parser.add_argument("--distill-weight", type=float, default=1.0, help="weight of the distillation loss (default 1)")
    parser.add_argument("--feature-weight", type=float, default=0.0,
                        help="with --teacher: weight of fine-grained feature imitation (the neck features near the objects; default 0 = off)")
    parser.add_argument("--qat", action="store_true", help="quantization-aware fine-tuning, then an int8 .tflite in the run folder")
    parser.add_argument("--samples", type=int, default=200, help="--qat: calibration images for the int8 conversion")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from pathlib import Path

    from yolo3.errors import UserError

    positive("--epochs", args.epochs)
    positive("--samples", args.samples)
    if args.learning_rate is not None and not args.learning_rate > 0:
        raise UserError(f"--learning-rate must be positive, got {args.learning_rate}")
    if args.distill_weight < 0 or args.feature_weight < 0 or (args.sparsity_l1 is not None and args.sparsity_l1 < 0):
        raise UserError("--distill-weight, --feature-weight and --sparsity-l1 must not be negative")
    config = load(args)
    if args.qat:
        from compression.quantize.convert import QatOptions, convert_config, format_report

        if args.sparsity_l1:
            raise UserError("--qat and --sparsity-l1 do not go together: sparse-train first, prune, then fine-tune with --qat")
        run_dir = Path(args.run_dir or config.train.run_dir)
        report = convert_config(config, args.model, "int8", samples=args.samples, out=str(run_dir / "qat-int8.tflite"), force=True,
                                qat=QatOptions(args.epochs, run_dir, args.learning_rate), progress=not args.quiet)
        print(format_report(report))
        return 0

    from compression.steps import finetune_options
    from yolo3.training import train

    options = finetune_options(config, args.model, epochs=args.epochs, run_dir=args.run_dir, progress=not args.quiet,
                               learning_rate=args.learning_rate, teacher=args.teacher, distill_weight=args.distill_weight,
                               feature_weight=args.feature_weight,
                               sparsity_l1=config.pruning.sparsity_l1 if args.sparsity_l1 is None else args.sparsity_l1)  # fmt: skip
    result = train(config, options)
    print(f"best validation mAP@0.5 {result['best_mAP50']:.4f}: {result['best_model']}  ({result['seconds']:.0f} s)")
    return 0
