"""``yolo3 VERB ...``: one parser per verb, a shared ``--verbose``, and the shims' entry (:func:`script`).

Every verb module has ``HELP``, ``configure(parser)`` and ``run(args)``;
they import TensorFlow only inside ``run``, so ``yolo3 --help`` is instant.
Errors a user can cause end in one line and exit status 2 (:func:`yolo3.errors.run_cli`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# verb -> module of this package, in the order ``yolo3 --help`` lists them
VERBS = ("train", "finetune", "evaluate", "prune", "cluster", "convert", "detect", "benchmark", "compress",
         "info", "export", "data", "anchors", "compare", "synth")  # fmt: skip


def _module(verb: str):
    return importlib.import_module(f"yolo3_cli.{verb}")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's own log lines (hidden by default)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="yolo3", description="Compress YOLOv3 detectors for edge devices: train, evaluate, prune, "
                                     "cluster, convert to int8 TFLite, meet a budget. `yolo3 VERB --help` for each.")  # fmt: skip
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in VERBS:
        module = _module(verb)
        p = sub.add_parser(verb, help=module.HELP, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        module.configure(p)
        _add_common(p)
        p.set_defaults(run=module.run)
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.verbose:
        os.environ["YOLO3_VERBOSE"] = "1"  # before TensorFlow is imported (verbs import it inside run)
    _check_outputs(args)
    return args.run(args)


def _check_outputs(args: argparse.Namespace) -> None:
    """Every output file named on the command line (--json PATH, --out PATH) can be written: said before any work."""
    from yolo3.fileio import check_output_path

    for flag in ("json", "out"):
        value = getattr(args, flag, None)
        if isinstance(value, str) and value:
            check_output_path(value, f"--{flag} file")


def main(argv: list[str] | None = None) -> int:
    """``yolo3 VERB ...`` without the exit: for tests and for calling from Python."""
    return _run(build_parser().parse_args(argv))


def verb_main(verb: str, prog: str | None = None):
    """The ``main(argv)`` of one verb, with the verb's flags at the top level (what the top-level scripts are)."""
    module = _module(verb)

    def main(argv: list[str] | None = None) -> int:
        parser = argparse.ArgumentParser(prog=prog, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        module.configure(parser)
        _add_common(parser)
        args = parser.parse_args(argv)
        args.run = module.run
        return _run(args)

    return main


def script(verb: str, argv: list[str] | None = None) -> int:
    """Run one verb as a script (``python evaluate.py ...``) with one-line errors; the exit status."""
    from yolo3.errors import run_cli

    return run_cli(verb_main(verb, os.path.basename(sys.argv[0])), argv)


def entry() -> None:
    """The ``yolo3`` console script."""
    from yolo3.errors import run_cli

    sys.exit(run_cli(main))
