#!/usr/bin/env python3
"""Benchmark: int16 activations on the few layers of worst int8 error, int8 elsewhere — does LiteRT run such a model near int8 speed?

    python -m venv /tmp/aeq && /tmp/aeq/bin/pip install ai-edge-quantizer==0.10.0
    python bench/int16_mix.py -c bench/configs/coco128-yolo-fastest.json \\
        --model ../shared/weights/yolo-fastest-1.0-coco/yolo-fastest.weights --aeq-python /tmp/aeq/bin/python \\
        --worst 4,8 --out bench/results/int16-mix-coco128-yolo-fastest --work-dir runs/int16-mix

The TFLite converter quantizes a whole model to int8 or to int16x8, never layer
by layer. LiteRT's own quantizer (ai-edge-quantizer) takes a recipe per op, so
a mixed model is made with it: int8 activations everywhere (a8w8), then int16
(a16w8) on the N layers that ``convert --debug`` ranks worst, for each N of
``--worst``, and everywhere. It runs in an environment of its own
(``--aeq-python``, :file:`bench/aeq_quantize.py`). Each of its files gets this
project's metadata, so the same evaluation scores it; beside them the
converter's int8 and int16x8. Rows: mAP@0.5 on the config's test split, the
operators left in float, latency (model alone, interleaved, batch 1).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import Counter
from pathlib import Path

from common import ROOT, machine, write_results
from yolo3.errors import UserError, run_cli


def float_operators(path: Path) -> dict:
    """Operators whose output is float32 (what the file leaves unquantized), by name, and the whole count."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    tensors = interpreter.get_tensor_details()
    ops = interpreter._get_ops_details()
    kinds = Counter(op["op_name"] for op in ops if any(np.dtype(tensors[o]["dtype"]) == np.float32 for o in op["outputs"]))
    int16 = sum(any(np.dtype(tensors[o]["dtype"]) == np.int16 for o in op["outputs"]) for op in ops)
    return {"float_ops": dict(sorted(kinds.items())), "int16_ops": int(int16), "ops": len(ops)}


def with_metadata(path: Path, metadata_from: Path) -> None:
    """Give an ai-edge-quantizer file the metadata the project's evaluation and runner read (copied from the float file)."""
    import numpy as np
    from tensorflow.lite.tools import flatbuffer_utils

    from compression.quantize.tflite_worker import add_metadata
    from yolo3.lite import METADATA_NAME, read_metadata

    raw = path.read_bytes()
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(raw))
    for buffer in model.buffers:  # ai-edge-quantizer stores constants after the flatbuffer, by offset: inline them first
        if buffer.offset and buffer.offset > 1:
            buffer.data = np.frombuffer(raw[buffer.offset : buffer.offset + buffer.size], np.uint8)
            buffer.offset = buffer.size = 0
    inlined = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    path.write_bytes(add_metadata(inlined, METADATA_NAME, read_metadata(metadata_from.read_bytes())))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--model", help="the .h5 or .weights to convert (default: the config's model.weights)")
    parser.add_argument("--aeq-python", required=True, help="a Python with ai-edge-quantizer installed")
    parser.add_argument("--worst", default="4,8", help="numbers of worst layers to give int16 activations")
    parser.add_argument("--samples", type=int, default=64, help="calibration images (both quantizers)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import numpy as np

    from compression.budget.latency_model import time_models
    from compression.quantize.convert import convert_config
    from compression.quantize.tflite_export import calibration_images
    from yolo3.config import load_config
    from yolo3.datasets import read_dataset
    from yolo3.evaluation import evaluate, make_predictor
    from yolo3.preprocess import letterboxed_images

    if not Path(args.aeq_python).is_file():
        raise UserError("no such Python (create one with: python -m venv DIR && DIR/bin/pip install ai-edge-quantizer==0.10.0)", args.aeq_python)
    try:
        worst = [int(n) for n in args.worst.split(",") if n.strip()]
    except ValueError:
        raise UserError(f"--worst takes numbers of layers, e.g. 4,8; got {args.worst!r}") from None
    if not worst or min(worst) < 1:
        raise UserError(f"--worst takes numbers of layers of at least 1, e.g. 4,8; got {args.worst!r}")
    config = load_config(args.config)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    size = config.model.input_size

    files: dict[str, Path] = {}
    for fmt in ("float32", "int16x8"):
        files[f"converter {fmt}"] = work / f"{fmt}.tflite"
        convert_config(config, args.model, fmt, samples=args.samples, out=str(files[f"converter {fmt}"]), force=True, progress=False)
    files["converter int8"] = work / "int8.tflite"
    ranked = convert_config(config, args.model, "int8", samples=args.samples, out=str(files["converter int8"]), force=True, progress=False, debug=True)
    layers = [name.split("_")[1] for name in ranked["debug"]["layers"] if name.startswith("conv_")]

    calibration = work / "calibration.npy"
    images = calibration_images(read_dataset(config.dataset("train"), config.labels).records, args.samples)
    np.save(calibration, letterboxed_images(images, size))
    recipes = {"ai-edge-quantizer a8w8": "", **{f"ai-edge-quantizer a16w8 on the {n} worst": ",".join(layers[:n]) for n in worst},
               "ai-edge-quantizer a16w8 everywhere": "all"}  # fmt: skip
    for k, (label, recipe) in enumerate(recipes.items()):
        files[label] = work / f"aeq-{k}.tflite"
        done = subprocess.run([args.aeq_python, str(ROOT / "bench" / "aeq_quantize.py"), str(files["converter float32"]), str(calibration),
                               str(files[label]), *([recipe] if recipe else [])], capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            raise UserError(f"ai-edge-quantizer failed on {label}: {(done.stderr.strip().splitlines() or ['no message'])[-1]}")
        with_metadata(files[label], files["converter float32"])

    dataset = read_dataset(config.dataset("test"), config.labels)
    v = config.valid
    rows = []
    for label, path in files.items():
        predictor, _ = make_predictor(config, str(path), threads=args.threads)
        scored = evaluate(predictor, dataset, config.labels, v.score_threshold, v.nms_iou, v.max_detections, v.batch_size, False)
        rows.append({"model": label, "file": str(path), "mAP50": scored["mAP50"], "bytes": path.stat().st_size, **float_operators(path),
                     "int16_layers": [f"conv_{i}" for i in recipes.get(label, "").split(",") if i and i != "all"]})  # fmt: skip
    for row, ms in zip(rows, time_models(list(files.values()), args.threads, args.rounds, args.runs, progress=False)):
        row["latency_ms"] = ms
    int8 = next(r for r in rows if r["model"] == "converter int8")
    report = {"model": args.model or str(config.model.weights), "images": len(dataset.records), "input_size": size, "calibration_images": len(images),
              "worst_layers": [f"conv_{i}" for i in layers[: max(worst, default=0)]], "rows": rows,
              "command": "python bench/int16_mix.py " + " ".join(argv or sys.argv[1:]), "machine": machine()}  # fmt: skip
    md = [f"`{report['model']}` on {report['images']} test images at {size}; {len(images)} calibration images; latency = median of "
          f"{args.rounds} x {args.runs} interleaved runs at batch 1 ({args.threads} LiteRT threads); {report['machine']}",
          "", "| model | mAP@0.5 | vs converter int8 | operators left float | int16 operators | latency | vs converter int8 |",
          "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        floats = ", ".join(f"{k} x{n}" for k, n in r["float_ops"].items()) or "none"
        md.append(f"| {r['model']} | {r['mAP50']:.4f} | {100 * (r['mAP50'] - int8['mAP50']):+.2f} pt | {floats} | {r['int16_ops']} | "
                  f"{r['latency_ms']:.2f} ms | {r['latency_ms'] / int8['latency_ms']:.2f}x |")  # fmt: skip
    write_results(Path(args.out), report, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
