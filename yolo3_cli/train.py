"""Train a YOLOv3 from a config: from scratch, from Darknet .weights (transfer learning), or resume.

    yolo3 train -c config.json [--model IN(.weights|.h5)] [--epochs N] [--run-dir DIR] [--set KEY=VALUE]

The same command after an interruption resumes from the last checkpoint in the run folder.
"""

from __future__ import annotations

from .common import add_config, load, positive

HELP = "train from scratch or from Darknet weights; resumes when interrupted"


def configure(parser) -> None:
    add_config(parser)
    parser.add_argument("--model", help="start from this model instead of the config's model.weights")
    parser.add_argument("--epochs", type=int, help="override train.nb_epochs")
    parser.add_argument("--run-dir", help="override train.run_dir")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    positive("--epochs", args.epochs)
    config = load(args)  # before TensorFlow is imported: a bad config is reported at once
    from yolo3.training import RunOptions, train

    result = train(config, RunOptions(args.model, False, args.epochs, args.run_dir, not args.quiet))
    print(f"best validation mAP@0.5 {result['best_mAP50']:.4f}: {result['best_model']}  ({result['seconds']:.0f} s)")
    return 0
