#!/usr/bin/env python3
"""`python convert.py ...` is `yolo3 convert ...` with the same flags (`python convert.py --help`)."""

import sys

from yolo3_cli.main import script, verb_main

main = verb_main("convert", "convert.py")

if __name__ == "__main__":
    sys.exit(script("convert"))
