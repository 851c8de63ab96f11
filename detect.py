#!/usr/bin/env python3
"""`python detect.py ...` is `yolo3 detect ...` with the same flags (`python detect.py --help`)."""

import sys

from yolo3_cli.main import script, verb_main

main = verb_main("detect", "detect.py")

if __name__ == "__main__":
    sys.exit(script("detect"))
