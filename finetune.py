#!/usr/bin/env python3
"""Fine-tune a model this tool wrote, keeping its architecture (a pruned model stays pruned).

    python finetune.py -c config.json --model IN.h5 [--epochs N] [--run-dir DIR]
"""

from __future__ import annotations

import argparse
import sys

from yolo3.errors import run_cli


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True, help="config.json")
    parser.add_argument("--model", required=True, help="the .h5 to fine-tune (its embedded cfg is kept)")
    parser.add_argument("--epochs", type=int, help="override train.nb_epochs")
    parser.add_argument("--run-dir", help="override train.run_dir")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from compression.constraints import constraint_factory_for
    from yolo3.config import load_config
    from yolo3.training import RunOptions, train

    config = load_config(args.config)
    factory = constraint_factory_for(args.model)  # a clustered model stays clustered, a pruned one sparse
    result = train(config, RunOptions(args.model, True, args.epochs, args.run_dir, not args.quiet, constraint_factory=factory))
    print(f"best validation mAP@0.5 {result['best_mAP50']:.4f}: {result['best_model']}  ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
