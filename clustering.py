#!/usr/bin/env python3
"""`python clustering.py ...` is `yolo3 cluster ...` with the same flags (`python clustering.py --help`)."""

import sys

from yolo3_cli.main import script, verb_main

main = verb_main("cluster", "clustering.py")

if __name__ == "__main__":
    sys.exit(script("cluster"))
