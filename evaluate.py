#!/usr/bin/env python3
"""`python evaluate.py ...` is `yolo3 evaluate ...` with the same flags (`python evaluate.py --help`)."""

import sys

from yolo3_cli.main import script, verb_main

main = verb_main("evaluate", "evaluate.py")

if __name__ == "__main__":
    sys.exit(script("evaluate"))
