"""Detect objects with a Keras or TFLite model and draw labelled boxes.

    yolo3 detect -c config.json --model MODEL(.h5|.weights|.tflite) -i IMAGE|FOLDER|VIDEO [-o OUT_DIR] [--score 0.25]
"""

from __future__ import annotations

from .common import add_config, load, positive

HELP = "draw detections on an image, a folder or a video"


def configure(parser) -> None:
    add_config(parser)
    parser.add_argument("--model", help="model file instead of the config's model.weights")
    parser.add_argument("-i", "--input", required=True, help="an image, a folder of images, or a video")
    parser.add_argument("-o", "--output", default="runs/detect", help="folder for the drawn images / video (default runs/detect)")
    parser.add_argument("--score", type=float, default=0.25, help="score threshold (default 0.25)")
    parser.add_argument("--nms", type=float, default=0.45, help="NMS IoU threshold (default 0.45)")
    parser.add_argument("--threads", type=int, default=2, help="LiteRT threads for a .tflite model")


def run(args) -> int:
    from yolo3.detection import run_detect
    from yolo3.errors import UserError
    from yolo3.evaluation import make_predictor
    from yolo3.fileio import check_output_folder

    if not 0 <= args.score < 1 or not 0 < args.nms <= 1:
        raise UserError("--score must be in [0, 1) and --nms in (0, 1]")
    positive("--threads", args.threads)
    check_output_folder(args.output, "-o output folder")
    config = load(args)
    predictor, _ = make_predictor(config, args.model, threads=args.threads)
    results = run_detect(predictor, args.input, args.output, config.labels, args.score, args.nms)
    for r in results:
        where = r.get("image", f"frame {r.get('frame')}")
        found = ", ".join(f"{d.get('class', d['class_id'])} {d['score']:.2f}" for d in r["detections"]) or "nothing"
        print(f"{where}: {found}")
    print(f"wrote {len(results)} result(s) to {args.output}")
    return 0
