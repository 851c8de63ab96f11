#!/usr/bin/env python3
"""`python compress.py ...` is `yolo3 compress ...` with the same flags (`python compress.py --help`)."""

import sys

from yolo3_cli.main import script, verb_main

main = verb_main("compress", "compress.py")

if __name__ == "__main__":
    sys.exit(script("compress"))
