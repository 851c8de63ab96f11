#!/usr/bin/env python3
"""Train a YOLOv3 from a config: from scratch, from Darknet .weights (transfer learning), or resume.

    python train.py -c config.json [--model IN(.weights|.h5)] [--epochs N] [--run-dir DIR]

The same command after an interruption resumes from the last checkpoint in the run folder.
"""

from __future__ import annotations

import argparse
import sys

from yolo3.errors import run_cli


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True, help="config.json")
    parser.add_argument("--model", help="start from this model instead of the config's model.weights")
    parser.add_argument("--epochs", type=int, help="override train.nb_epochs")
    parser.add_argument("--run-dir", help="override train.run_dir")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from yolo3.config import load_config
    from yolo3.training import RunOptions, train

    config = load_config(args.config)
    result = train(config, RunOptions(args.model, False, args.epochs, args.run_dir, not args.quiet))
    print(f"best validation mAP@0.5 {result['best_mAP50']:.4f}: {result['best_model']}  ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
