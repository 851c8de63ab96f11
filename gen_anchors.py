#!/usr/bin/env python3
"""Anchors by IoU k-means on a config's training boxes (same as ``python -m yolo3 anchors``).

    python gen_anchors.py -c config.json [-k 9] [--json]
"""

import argparse
import sys

from yolo3.cli import cmd_anchors
from yolo3.errors import run_cli


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("-k", type=int, help="number of anchors (default: the architecture's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    return cmd_anchors(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(run_cli(main))
