#!/usr/bin/env python3
"""Benchmark: where does ai-edge-quantizer's int8 differ from the TFLite converter's, and which difference is worth the points?

    python -m venv /tmp/aeq && /tmp/aeq/bin/pip install ai-edge-quantizer==0.10.0
    python bench/quantizer_gap.py -c bench/configs/coco128-yolo-fastest.json \\
        --model ../shared/weights/yolo-fastest-1.0-coco/yolo-fastest.weights --aeq-python /tmp/aeq/bin/python \\
        --work-dir runs/quantizer-gap --out bench/results/quantizer-gap-coco128-yolo-fastest

On the official Yolo-Fastest, LiteRT's own quantizer (a8w8) scored 2.4 points
above the converter's int8 (``bench/int16_mix.py``) while leaving every
LEAKY_RELU in float. Two differences can explain it: its activation ranges
(calibrated otherwise than the converter's absolute min/max), or the
LeakyReLUs it does not quantize. This separates them on the same calibration
images: the converter's int8 as it is; the converter's int8 with the activation
ranges read from ai-edge-quantizer's file (matched by tensor name, written into
the calibrated model's min/max and quantized by the converter's own MLIR
quantizer, as ``compression.quantize.ranges`` does), alone and with the
LEAKY_RELUs left float; the converter's int8 with the repair ladder's "mean of
per-image extremes" refit (what ai-edge-quantizer's moving average of
per-sample min/max approximates); the converter's int8 with only its
LEAKY_RELU operators left float (TFLite's QuantizationDebugger); and
ai-edge-quantizer's file. Rows: mAP@0.5 on the config's test split and the gain
over the converter's int8 with a 90 % paired-bootstrap interval; then how
ai-edge-quantizer's ranges compare with the converter's, by the operator that
writes the tensor, and whether the two files' int8 weights differ. No timing:
it may run beside other jobs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from int16_mix import float_operators, with_metadata

from common import ROOT, machine, write_results
from yolo3.errors import UserError, run_cli


def quantized_ranges(path: Path) -> dict[str, tuple[float, float]]:
    """Each per-tensor quantized activation's real range (scale and zero point read back), by tensor name.

    A float tensor that a QUANTIZE operator quantizes (ai-edge-quantizer's
    float LEAKY_RELU outputs) gets that operator's output range under its own name.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(str(path))
    tensors = interpreter.get_tensor_details()
    out = {}
    for t in tensors:
        q = t["quantization_parameters"]
        if np.dtype(t["dtype"]) not in (np.int8, np.int16) or len(q["scales"]) != 1:
            continue
        info = np.iinfo(t["dtype"])
        scale, zero = float(q["scales"][0]), int(q["zero_points"][0])
        out[t["name"]] = (scale * (info.min - zero), scale * (info.max - zero))
    for op in interpreter._get_ops_details():
        source, target = tensors[op["inputs"][0]]["name"], tensors[op["outputs"][0]]["name"]
        if op["op_name"] == "QUANTIZE" and source not in out and target in out:
            out[source] = out[target]
    return out


def writers(path: Path) -> dict[str, str]:
    """The operator that writes each tensor, by tensor name."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(str(path))
    tensors = interpreter.get_tensor_details()
    return {tensors[o]["name"]: op["op_name"] for op in interpreter._get_ops_details() for o in op["outputs"]}


def converter_variants(keras_model, images: list[np.ndarray], aeq_file: Path, work: Path) -> tuple[dict[str, bytes], dict]:
    """The converter's int8 as it is, with ai-edge-quantizer's activation ranges, and with LEAKY_RELU float; and the transplant's counts."""
    from tensorflow.lite.python.convert import mlir_quantize
    from tensorflow.lite.tools import flatbuffer_utils

    from yolo3.kerasenv import tf

    def converter():
        c = tf.lite.TFLiteConverter.from_keras_model(keras_model)
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        c.representative_dataset = lambda: ([x[None]] for x in images)
        c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        c.inference_input_type = c.inference_output_type = tf.int8
        return c

    files = {"converter int8 (min/max)": converter().convert()}
    calibrating = converter()
    calibrating._experimental_calibrate_only = True
    calibrated = calibrating.convert()
    theirs = quantized_ranges(aeq_file)
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    graph = model.subgraphs[0]
    keep = set(graph.inputs) | set(graph.outputs)
    counts = {"recorded": 0, "transplanted": 0}
    for i, t in enumerate(graph.tensors):
        if i in keep or t.quantization is None or t.quantization.min is None or len(t.quantization.min) != 1:
            continue
        counts["recorded"] += 1
        name = t.name.decode() if isinstance(t.name, bytes) else t.name
        if name in theirs:
            t.quantization.min, t.quantization.max = [theirs[name][0]], [theirs[name][1]]
            counts["transplanted"] += 1
    edited = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    files["converter int8, ai-edge-quantizer's activation ranges"] = mlir_quantize(edited, fully_quantize=True, input_data_type=tf.int8,
                                                                                  output_data_type=tf.int8)  # fmt: skip
    files["converter int8, ai-edge-quantizer's activation ranges, LEAKY_RELU left float"] = mlir_quantize(
        edited, fully_quantize=True, input_data_type=tf.int8, output_data_type=tf.int8, denylisted_ops=["LEAKY_RELU"])
    from compression.quantize.ranges import refit_ranges

    mean, _ = refit_ranges(calibrated, lambda: ([x[None]] for x in images), method="mean")
    files["converter int8, mean of per-image extremes (the repair ladder's refit)"] = mlir_quantize(
        mean, fully_quantize=True, input_data_type=tf.int8, output_data_type=tf.int8)
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=["LEAKY_RELU"], fully_quantize=True)
    debugger = tf.lite.experimental.QuantizationDebugger(converter=converter(), debug_dataset=lambda: ([x[None]] for x in images),
                                                         debug_options=options)  # fmt: skip
    files["converter int8, LEAKY_RELU left float"] = debugger.get_nondebug_quantized_model()
    return files, counts


def weight_comparison(converter_file: Path, aeq_file: Path) -> dict:
    """How the two files' per-channel int8 weights compare, matched by shape in graph order: scales and values."""
    from ai_edge_litert.interpreter import Interpreter

    def weights(path):
        interpreter = Interpreter(str(path))
        out = []
        for t in interpreter.get_tensor_details():
            q = t["quantization_parameters"]
            if np.dtype(t["dtype"]) == np.int8 and len(q["scales"]) > 1:
                try:
                    out.append((tuple(t["shape"]), q["scales"].copy(), interpreter.get_tensor(t["index"]).copy()))
                except ValueError:
                    continue
        return out

    mine, theirs = weights(converter_file), weights(aeq_file)
    pool = {}
    for shape, scales, values in theirs:
        pool.setdefault(shape, []).append((scales, values))
    matched, scale_ratios, differing, total = 0, [], 0, 0
    for shape, scales, values in mine:
        candidates = pool.get(shape, [])
        if not candidates:
            continue
        k = min(range(len(candidates)), key=lambda j: float(np.abs(np.log(candidates[j][0] / scales)).mean()))  # the closest scales
        t_scales, t_values = candidates.pop(k)
        matched += 1
        scale_ratios.append(float(np.median(t_scales / scales)))
        differing += int((t_values != values).sum())
        total += values.size
    return {"tensors": len(mine), "matched": matched, "median_scale_ratio": float(np.median(scale_ratios)) if scale_ratios else None,
            "values_differing": differing, "values": total}  # fmt: skip


def range_comparison(converter_file: Path, aeq_file: Path) -> list[dict]:
    """ai-edge-quantizer's range width over the converter's, per tensor both quantize, grouped by the converter's writing operator."""
    mine, theirs, ops = quantized_ranges(converter_file), quantized_ranges(aeq_file), writers(converter_file)
    groups: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for name, (lo, hi) in mine.items():
        if name in theirs and name in ops:
            t_lo, t_hi = theirs[name]
            groups[ops[name]].append(((t_hi - t_lo) / max(hi - lo, 1e-12), t_lo / lo if lo < 0 else np.nan, t_hi / hi if hi > 0 else np.nan))
    rows = []
    for op, values in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        width, low, high = (np.array(v, float) for v in zip(*values))
        rows.append({"op": op, "tensors": len(values), "median_width_ratio": float(np.median(width)), "narrower": int((width < 0.99).sum()),
                     "wider": int((width > 1.01).sum()), "median_low_ratio": float(np.nanmedian(low)) if np.isfinite(low).any() else None,
                     "median_high_ratio": float(np.nanmedian(high)) if np.isfinite(high).any() else None})  # fmt: skip
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--model", help="the .h5 or .weights to convert (default: the config's model.weights)")
    parser.add_argument("--aeq-python", required=True, help="a Python with ai-edge-quantizer installed")
    parser.add_argument("--samples", type=int, default=64, help="calibration images (both quantizers)")
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from compression.quantize.convert import convert_config
    from compression.quantize.tflite_export import calibration_images
    from yolo3.config import load_config
    from yolo3.datasets import read_dataset
    from yolo3.evaluation import detect_split, load_for_config
    from yolo3.metrics import evaluate_detections, match_detections
    from yolo3.preprocess import letterboxed_images
    from yolo3.resampling import paired_map_loss

    if not Path(args.aeq_python).is_file():
        raise UserError("no such Python (create one with: python -m venv DIR && DIR/bin/pip install ai-edge-quantizer==0.10.0)", args.aeq_python)
    config = load_config(args.config)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    size = config.model.input_size
    float_file = work / "float32.tflite"
    convert_config(config, args.model, "float32", out=str(float_file), force=True, progress=False)
    paths = calibration_images(read_dataset(config.dataset("train"), config.labels).records, args.samples)
    images = list(letterboxed_images(paths, size))
    images[0][0, 0], images[0][0, 1] = 0.0, 1.0  # the input's range pinned to [0, 1], as the product's conversion does
    calibration = work / "calibration.npy"
    np.save(calibration, np.stack(images))
    aeq_file = work / "aeq-a8w8.tflite"
    done = subprocess.run([args.aeq_python, str(ROOT / "bench" / "aeq_quantize.py"), str(float_file), str(calibration), str(aeq_file)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise UserError(f"ai-edge-quantizer failed: {(done.stderr.strip().splitlines() or ['no message'])[-1]}")
    with_metadata(aeq_file, float_file)

    loaded = load_for_config(config, args.model)
    made, counts = converter_variants(loaded.model, images, aeq_file, work)
    files = {"converter float32": float_file}
    for k, (label, data) in enumerate(made.items()):
        files[label] = work / f"converter-{k}.tflite"
        files[label].write_bytes(data)
        with_metadata(files[label], float_file)
    files["ai-edge-quantizer a8w8"] = aeq_file

    rows, matched = [], {}
    for label, path in files.items():
        run = detect_split(config, str(path), "test")
        matched[label] = match_detections(run.records, run.detections, len(config.labels))
        scored = evaluate_detections(run.records, run.detections, config.labels, matches=matched[label])
        rows.append({"model": label, "file": str(path), "mAP50": scored["mAP50"], "images": len(run.records), **float_operators(path)})
    plain = next(r for r in rows if r["model"] == "converter int8 (min/max)")
    for r in rows:  # the gain over the converter's int8 with a 90 % paired-bootstrap interval over the test images
        if r is not plain:
            gains = -paired_map_loss(matched[plain["model"]], matched[r["model"]])
            r["gain_points"], r["gain_interval_90"] = 100 * (r["mAP50"] - plain["mAP50"]), [float(np.quantile(gains, q)) for q in (0.05, 0.95)]
    ranges = range_comparison(files["converter int8 (min/max)"], aeq_file)
    weights = weight_comparison(files["converter int8 (min/max)"], aeq_file)
    report = {"model": args.model or str(config.model.weights), "images": plain["images"], "input_size": size, "calibration_images": len(images),
              "rows": rows, "ranges": ranges, "weights": weights, "transplant": counts,
              "command": "python bench/quantizer_gap.py " + " ".join(argv or sys.argv[1:]), "machine": machine()}  # fmt: skip
    md = [f"`{report['model']}` on {report['images']} test images at {size}; {len(images)} calibration images for both quantizers; "
          f"{counts['transplanted']} of the calibrated model's {counts['recorded']} inner activation ranges found by name in "
          f"ai-edge-quantizer's file; {report['machine']}",
          "", "| model | mAP@0.5 | vs converter int8 (90 % interval) | operators left float |", "|---|---|---|---|"]  # fmt: skip
    for r in rows:
        floats = ", ".join(f"{k} x{n}" for k, n in r["float_ops"].items()) or "none"
        gain = "" if r is plain else f"{r['gain_points']:+.2f} ({r['gain_interval_90'][0]:+.2f} to {r['gain_interval_90'][1]:+.2f})"
        md.append(f"| {r['model']} | {r['mAP50']:.4f} | {gain} | {floats} |")
    md += ["", "ai-edge-quantizer's activation ranges against the converter's, by the operator writing the tensor (ratios: theirs / "
           "the converter's; low and high ends as signed values):", "",
           "| operator | tensors | median width ratio | narrower | wider | median low-end ratio | median high-end ratio |",
           "|---|---|---|---|---|---|---|"]  # fmt: skip

    def ratio(x):
        return "-" if x is None else f"{x:.2f}"

    for r in ranges:
        md.append(f"| {r['op']} | {r['tensors']} | {r['median_width_ratio']:.2f} | {r['narrower']} | {r['wider']} | "
                  f"{ratio(r['median_low_ratio'])} | {ratio(r['median_high_ratio'])} |")  # fmt: skip
    md.append(f"\nPer-channel int8 weights: {weights['matched']} of the converter's {weights['tensors']} weight tensors matched in "
              f"ai-edge-quantizer's file (by shape and nearest scales); median scale ratio {weights['median_scale_ratio']}; "
              f"{weights['values_differing']:,} of {weights['values']:,} int8 values differ.")
    write_results(Path(args.out), report, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
