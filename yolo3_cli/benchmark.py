"""One model in every format — Keras, float32, float16, dynamic range, int8 TFLite — in one table.

    yolo3 benchmark -c config.json --model M(.h5|.weights) [--formats keras,float32,float16,dynamic,int8] [--min-map 0.5]
    yolo3 benchmark -c config.json --model M.h5 --formats int8,int8-nms   # NMS in numpy against NMS in the model

Every format is converted from the model, evaluated on the test split by the same code
(mAP@0.5, COCO AP), and all are timed together in one interleaved run (median latency,
speed-up against the first format; and the latency with decode and NMS, which a
NAME-nms format runs inside the model). The table is printed and written as JSON in --out-dir
with the converted files. --min-map X exits with status 1 when a format scores below X (a
check for your CI).
"""

from __future__ import annotations

from .common import add_config, load, positive, write_report

HELP = "every format (Keras, float32, float16, dynamic, int8) converted, evaluated and timed in one table"


def configure(parser) -> None:
    add_config(parser)
    parser.add_argument("--model", help="the .h5 or .weights to benchmark (default: model.weights)")
    parser.add_argument("--formats", default="keras,float32,float16,dynamic,int8", help="comma-separated, the first is the reference; add -nms to a TFLite format for in-model NMS (int8-nms)")
    parser.add_argument("--out-dir", default="runs/benchmark", help="folder for the converted files and benchmark.json (default runs/benchmark)")
    parser.add_argument("--split", choices=("test", "valid"), default="test", help="the split to evaluate on (default test)")
    parser.add_argument("--samples", type=int, default=200, help="int8 calibration images (default 200)")
    parser.add_argument("--threads", type=int, default=2, help="LiteRT threads (default 2)")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of interleaved timing (default 10)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of every format per round (default 5)")
    parser.add_argument("--min-map", type=float, help="exit with status 1 when a format's mAP@0.5 is below this (in [0, 1])")
    parser.add_argument("--json", help="also write the report to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    import sys

    from compression.benchmark import below_floor, format_table, parse_formats, run_benchmark
    from yolo3.errors import UserError
    from yolo3.fileio import check_output_folder

    formats = parse_formats(args.formats)
    if args.min_map is not None and not 0 <= args.min_map <= 1:
        raise UserError(f"--min-map is an mAP@0.5 in [0, 1], got {args.min_map}")
    for flag in ("samples", "threads", "rounds", "runs"):
        positive(f"--{flag}", getattr(args, flag))
    out = check_output_folder(args.out_dir, "--out-dir")
    config = load(args)
    report = run_benchmark(config, args.model, formats, out, args.samples, args.threads, args.rounds, args.runs, args.split, not args.quiet)
    print(format_table(report))
    write_report(str(out / "benchmark.json"), report)
    write_report(args.json, report)
    failed = below_floor(report, args.min_map)
    if failed:
        print(f"below --min-map {args.min_map}: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
