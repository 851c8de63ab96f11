#!/usr/bin/env python3
"""`python gen_anchors.py ...` is `yolo3 anchors ...` with the same flags (`python gen_anchors.py --help`)."""

import sys

from yolo3_cli.main import script, verb_main

main = verb_main("anchors", "gen_anchors.py")

if __name__ == "__main__":
    sys.exit(script("anchors"))
