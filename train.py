#!/usr/bin/env python3
"""`python train.py ...` is `yolo3 train ...` with the same flags (`python train.py --help`)."""

import sys

from yolo3_cli.main import script, verb_main

main = verb_main("train", "train.py")

if __name__ == "__main__":
    sys.exit(script("train"))
