#!/usr/bin/env python3
"""Benchmark: which model to start from? Several detectors on one dataset's test split, as int8, timed in one interleaved run.

    python bench/model_choice.py --entry "YOLOv3-tiny=bench/configs/bccd-yolov3-tiny.json:runs/bccd-yolov3-tiny/best.h5" \\
        --entry "YOLOv3-tiny compressed=bench/configs/bccd-yolov3-tiny.json:runs/compress-bccd/final-int8.tflite" \\
        --entry "Yolo-Fastest 1.0=bench/configs/bccd-yolo-fastest.json:runs/bccd-yolo-fastest/best.h5" \\
        --out bench/results/model-choice-bccd

Each entry is LABEL=CONFIG:MODEL. A Keras model (.h5 / .weights) is evaluated as float, then converted
to int8 (calibrated on its config's training images) and evaluated again; a .tflite (e.g. the
final-int8.tflite of `yolo3 compress`) is evaluated as it is. ``--repair auto`` converts each Keras
entry through the int8 repair ladder (as ``convert --repair auto``: each step scored on the entry's
validation split, the best kept) and the table says which step was kept. Every entry is scored on its config's
test split (give configs with the same test split). Then every int8 file is timed in one interleaved
run (median, batch 1, on the test split's first image): the model alone and with decode + NMS.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import machine, write_results
from yolo3.errors import UserError, run_cli


def parse_entry(text: str) -> tuple[str, Path, Path]:
    label, sep, rest = text.partition("=")
    config, sep2, model = rest.rpartition(":")
    if not sep or not sep2 or not label or not config or not model:
        raise UserError(f"--entry {text!r}: expected LABEL=CONFIG:MODEL")
    return label, Path(config), Path(model)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entry", action="append", required=True, help="LABEL=CONFIG:MODEL (repeat)")
    parser.add_argument("--out", required=True, help="output path without suffix (.json and .md are written)")
    parser.add_argument("--samples", type=int, default=200, help="int8 calibration images (default 200)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repair", default="none", help="int8 repair for Keras entries: none (default), auto or STEP,STEP (as convert --repair)")
    args = parser.parse_args(argv)

    from compression.benchmark import detections_call
    from compression.quantize.convert import convert_config, parse_repair
    from yolo3.config import load_config
    from yolo3.datasets import read_dataset
    from yolo3.evaluation import evaluate, make_predictor
    from yolo3.fileio import file_sizes
    from yolo3.lite import interleaved_latency
    from yolo3.preprocess import letterbox, load_image

    parse_repair(args.repair)  # a bad step name ends here, before any model is loaded
    out = Path(args.out)
    folder = out.parent / (out.name + "-models")
    folder.mkdir(parents=True, exist_ok=True)
    rows, predictors, timing_sets = [], [], []
    for label, config_path, model in map(parse_entry, args.entry):
        config = load_config(config_path)
        dataset = read_dataset(config.dataset("test"), config.labels)
        v = config.valid
        row = {"model": label, "config": str(config_path), "file": str(model), "test_images": len(dataset.records)}
        if model.suffix.lower() != ".tflite":
            predictor, summary = make_predictor(config, str(model), threads=args.threads)
            scored = evaluate(predictor, dataset, config.labels, v.score_threshold, v.nms_iou, v.max_detections, v.batch_size, False)
            row.update({"float_mAP50": scored["mAP50"], "float_coco_AP": scored["coco"]["AP"],
                        **{f"float_{k}": n for k, n in file_sizes(model).items()}})  # fmt: skip
            int8 = folder / f"{label.replace(' ', '-').replace('/', '-')}-int8.tflite"
            converted = convert_config(config, str(model), "int8", samples=args.samples, out=str(int8), force=True, progress=False,
                                       repair=args.repair)  # fmt: skip
            if converted.get("repair"):
                row["int8_repair"] = converted["repair"]["kept"]
        else:
            int8 = model
        predictor, summary = make_predictor(config, str(int8), threads=args.threads)
        scored = evaluate(predictor, dataset, config.labels, v.score_threshold, v.nms_iou, v.max_detections, v.batch_size, False)
        row.update({"input_size": list(predictor.input_hw), "int8_mAP50": scored["mAP50"], "int8_coco_AP": scored["coco"]["AP"],
                    "int8_file": str(int8), **{f"int8_{k}": n for k, n in file_sizes(int8).items()}, **summary})  # fmt: skip
        rows.append(row)
        predictors.append(predictor)
        timing_sets.append((dataset.records[0].image, v))

    prepared = [letterbox(load_image(image), p.input_hw) for p, (image, _) in zip(predictors, timing_sets)]
    tensors = [t[None] for t, _ in prepared]
    calls = [p.invoke for p in predictors] + [detections_call(p, box, v) for p, (_, box), (_, v) in zip(predictors, prepared, timing_sets)]
    timed = interleaved_latency(calls, tensors + tensors, args.rounds, args.runs)
    n = len(rows)
    for row, model_t, full_t in zip(rows, timed[:n], timed[n:]):
        row["int8_latency_ms"] = model_t["median_ms"]
        row["int8_latency_with_postprocess_ms"] = full_t["median_ms"]
    report = {"rows": rows, "machine": machine(), "threads": args.threads, "repair": args.repair, "timing": {"rounds": args.rounds, "runs": args.runs},
              "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])])}  # fmt: skip
    md = [
        f"{rows[0]['test_images']} test images; int8 latency: median of {args.rounds} x {args.runs} runs at batch 1, models interleaved, "
        f"{args.threads} LiteRT threads; {report['machine']}",
        "",
        "| model | input | params | MACs | float mAP@0.5 | float COCO AP | int8 mAP@0.5 | int8 COCO AP | int8 size | int8 gzip "
        "| int8 latency | + decode, NMS |" + (" int8 repair kept |" if args.repair != "none" else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if args.repair != "none" else ""),
    ]
    for r in rows:
        fl = f"{r['float_mAP50']:.4f} | {r['float_coco_AP']:.4f}" if "float_mAP50" in r else "- | -"
        params = f"{r['params'] / 1e6:.2f} M" if "params" in r else "-"
        macs = f"{r['macs'] / 1e9:.3f} G" if "macs" in r else "-"
        md.append(f"| {r['model']} | {r['input_size'][0]} | {params} | {macs} | {fl} | {r['int8_mAP50']:.4f} | {r['int8_coco_AP']:.4f} | "
                  f"{r['int8_bytes'] / 1e6:.3f} MB | {r['int8_gzip_bytes'] / 1e6:.3f} MB | {r['int8_latency_ms']:.2f} ms | {r['int8_latency_with_postprocess_ms']:.2f} ms |"
                  + (f" {r.get('int8_repair', '-')} |" if args.repair != "none" else ""))  # fmt: skip
    write_results(out, report, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
