#!/usr/bin/env python3
"""`python finetune.py ...` is `yolo3 finetune ...` with the same flags (`python finetune.py --help`)."""

import sys

from yolo3_cli.main import script, verb_main

main = verb_main("finetune", "finetune.py")

if __name__ == "__main__":
    sys.exit(script("finetune"))
