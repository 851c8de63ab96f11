"""The synthetic shapes dataset (VOC xml + JPEG): coloured shapes on textured backgrounds.

    yolo3 synth OUT_FOLDER [--count N] [--seed S] [--labels a,b,c]
"""

from __future__ import annotations

from pathlib import Path

from .common import positive

HELP = "generate the synthetic shapes dataset (VOC xml + JPEG)"


def configure(parser) -> None:
    parser.add_argument("out", help="output folder (gets images/ and annotations/)")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--labels", default="circle,square,triangle")


def run(args) -> int:
    from yolo3.synthetic import ensure_folders

    out = Path(args.out)
    from yolo3.errors import UserError
    from yolo3.fileio import check_output_folder

    names = [n.strip() for n in args.labels.split(",") if n.strip()]
    if not names:
        raise UserError(f"--labels: give class names separated by commas, got {args.labels!r}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"--labels names {', '.join(map(repr, twice))} more than once")
    positive("--count", args.count)
    check_output_folder(args.out, "output folder")
    made = ensure_folders(out / "images", out / "annotations", args.count, names, args.seed)
    print(("wrote" if made else "up to date:") + f" {args.count} images in {out}/images, VOC xml in {out}/annotations")
    return 0
