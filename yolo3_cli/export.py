"""Darknet .weights to Keras .h5 and back.

    yolo3 export --cfg CFG --weights IN(.weights|.h5) --out OUT(.h5|.weights) [--force]
"""

from __future__ import annotations

from pathlib import Path

from yolo3.errors import UserError

HELP = "convert a model between Darknet .weights and Keras .h5 (byte-identical round trip)"


def configure(parser) -> None:
    parser.add_argument("--cfg", required=True, help="the network's .cfg (or a built-in name)")
    parser.add_argument("--weights", required=True, help="input .weights or .h5")
    parser.add_argument("--out", required=True, help="output .weights or .h5")
    parser.add_argument("--force", action="store_true", help="overwrite the output if it exists")


def run(args) -> int:
    from yolo3.fileio import check_output_path
    from yolo3.models import load_model, save_model

    out = Path(args.out)
    if out.suffix.lower() not in (".weights", ".h5"):
        raise UserError("the output must end in .weights or .h5", out)
    check_output_path(out)
    _check_out(out, args.force)
    loaded = load_model(args.weights, architecture=args.cfg)
    save_model(loaded.model, loaded.spec, out, header=loaded.header)
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
    return 0


def _check_out(path, force: bool) -> None:
    from yolo3.errors import UserError

    if path.exists() and not force:
        raise UserError("exists; pass --force to overwrite it", path)
