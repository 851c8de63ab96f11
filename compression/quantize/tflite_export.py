"""Export a Keras YOLOv3 to TFLite: int8 (full integer), float16, dynamic range or float32.

The TFLite converter leaks memory with every call in TensorFlow 2.21, so the
conversion itself runs in a subprocess (:mod:`compression.quantize.tflite_worker`). The
result is written under a temporary name beside the destination, loaded back
with LiteRT and run once, and only then renamed into place.

int8 is full-integer with int8 input and output, calibrated on training images
preprocessed exactly as at inference (the shared letterbox). The YOLO decode
(sigmoid, exp) stays outside the model: the outputs are the raw head tensors,
so each gets its own quantization scale. The ``nms`` variant
(:mod:`compression.quantize.tflite_nms`) moves decode and NMS into the graph instead. The Darknet cfg, anchors and class
names travel inside the file as metadata ``yolo3``, which the edge runner reads.

Example::

    from compression.quantize.tflite_export import export_tflite
    report = export_tflite("best.h5", "best-int8.tflite", "int8", calibration_images, names)
    report["bytes"], report["gzip_bytes"], report["operators"]
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from yolo3.errors import UserError
from yolo3.fileio import atomic_write, gzip_size
from yolo3.spec import Spec, analyse, format_cfg, heads

from ..subprocesses import failure_reason, run_module

FORMATS = ("int8", "int16x8", "float16", "dynamic", "float32")


INPUT_TYPES = ("int8", "uint8")
ACTIVATION_RANGES = ("minmax", "mse", "mean")


@dataclass(frozen=True)
class ExportOptions:
    """How the ``.tflite`` meets the app that runs it.

    ``input_type`` (int8 only): ``uint8`` takes a camera's bytes as they are
    (scale 1/255, zero point 0), ``int8`` the bytes minus 128. ``nms``: the
    graph also decodes the boxes and runs NMS (:mod:`compression.quantize.tflite_nms`)
    with these settings, baked in at conversion.
    """

    input_type: str = "int8"
    nms: bool = False
    score_threshold: float = 0.005
    nms_iou: float = 0.45
    max_detections: int = 100
    nms_classes_per_box: int = 5  # quantization.nms_classes_per_box
    activation_ranges: str = "minmax"  # int8: "mse" / "mean" refit each inner activation's range (compression.quantize.ranges)
    bias_correction: bool = False  # int8: each convolution's bias corrected to the float model's mean output (compression.quantize.bias)

    def check(self, fmt: str) -> None:
        """One line for a combination that cannot be made, before any work is done."""
        if self.input_type not in INPUT_TYPES:
            raise UserError(f"--input-type must be {' or '.join(INPUT_TYPES)}, got {self.input_type!r}")
        if self.input_type != "int8" and fmt != "int8":
            raise UserError(f"--input-type {self.input_type} is for --format int8, not {fmt}")
        if self.nms and fmt == "int16x8":
            raise UserError("--nms does not go with --format int16x8 (LiteRT's detection post-processing takes 8-bit or float inputs)")
        if self.activation_ranges not in ACTIVATION_RANGES:
            raise UserError(f"activation ranges must be {' or '.join(ACTIVATION_RANGES)}, got {self.activation_ranges!r}")
        if self.bias_correction and fmt != "int8":
            raise UserError(f"bias correction is for int8 models, not {fmt}")

    def nms_job(self) -> dict | None:
        if not self.nms:
            return None
        return {"score_threshold": self.score_threshold, "iou": self.nms_iou, "max_detections": self.max_detections,
                "classes_per_box": self.nms_classes_per_box}


def calibration_images(records, samples: int, seed: int = 0) -> list[str]:
    """``samples`` training image paths chosen with a fixed seed (all of them if fewer)."""
    paths = [str(r.image) for r in records]
    if not paths:
        raise UserError("no training images to calibrate int8 quantization with")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(paths), size=min(samples, len(paths)), replace=False)
    return [paths[i] for i in sorted(chosen)]


def metadata_for(spec: Spec, names: Sequence[str], input_size: int) -> dict:
    """What the edge runner needs to decode the outputs: heads in output order, names, the cfg."""
    infos = analyse(spec, input_size, input_size)
    return {
        "format": 1,
        "names": list(names),
        "input_size": [input_size, input_size],
        # what an app must do to an image before it: RGB, (pixel - mean) / std, letterboxed (aspect kept) on grey
        "input_normalization": {"channels": "RGB", "mean": [0.0, 0.0, 0.0], "std": [255.0, 255.0, 255.0], "letterbox_fill": 0.5},
        "heads": [{"anchors": [list(a) for a in h.anchors], "classes": h.classes, "scale_xy": h.scale_xy} for h in heads(spec)],
        "output_shapes": [list(infos[h.conv].out_shape) for h in heads(spec)],
        "cfg": format_cfg(spec),
    }


def run_worker(h5: Path, fmt: str, out: Path, images: list[str], input_size: int, metadata: dict, qat: dict | None = None,
               float_layers: list[int] | None = None, options: ExportOptions | None = None) -> None:  # fmt: skip
    """Convert in a fresh Python process; raise UserError with the worker's last message on failure."""
    options = options or ExportOptions()
    if qat:
        qat = {**qat, "weights": str(Path(qat["weights"]).resolve())}
    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({  # absolute paths: the worker runs in the project's folder
            "model": str(Path(h5).resolve()), "format": fmt, "out": str(Path(out).resolve()), "images": [str(Path(p).resolve()) for p in images],
            "input_size": input_size, "metadata": metadata, "qat": qat, "float_layers": list(float_layers or []),
            "input_type": options.input_type, "nms": options.nms_job(), "ranges": options.activation_ranges,
            "bias_correction": options.bias_correction,
        }))  # fmt: skip
        proc = run_module("compression.quantize.tflite_worker", str(job))
    if proc.returncode != 0:
        raise UserError(f"TFLite conversion ({fmt}) failed: {failure_reason(proc)}", h5)


def describe_tflite(path: str | Path, threads: int = 2) -> dict:
    """Sizes (raw, gzip), input/output types and quantization, operators used."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    data = Path(path).read_bytes()
    # without the default XNNPACK delegate, so that the operators are listed as they are in the file
    interpreter = Interpreter(
        model_content=data, num_threads=threads, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    interpreter.allocate_tensors()

    def io(detail):
        scale, zero = detail["quantization"]
        return {
            "name": detail["name"],
            "shape": [int(v) for v in detail["shape"]],
            "dtype": np.dtype(detail["dtype"]).name,
            "scale": float(scale) if scale else None,
            "zero_point": int(zero) if scale else None,
        }

    ops_details = interpreter._get_ops_details()
    ops = Counter(op["op_name"] for op in ops_details)
    return {
        "kernels": kernel_stats(interpreter, ops_details),
        "bytes": len(data),
        "gzip_bytes": gzip_size(data),
        "inputs": [io(d) for d in interpreter.get_input_details()],
        "outputs": [io(d) for d in interpreter.get_output_details()],
        "operators": dict(sorted(ops.items())),
    }


def kernel_stats(interpreter, ops_details: list[dict]) -> dict:
    """What compression left in the convolution kernels of a converted model: zeros and distinct values per channel.

    The converter folds BN into the kernels (one factor per output channel) and
    int8 quantizes per output channel, so a pruned or clustered model should
    still show its zeros and at most k distinct values in every channel.
    """
    produced = {int(i) for op in ops_details for i in op["outputs"]}  # e.g. a float16 kernel's DEQUANTIZE
    kernels = []
    for op in ops_details:
        if op["op_name"] not in ("CONV_2D", "DEPTHWISE_CONV_2D") or len(op["inputs"]) < 2 or int(op["inputs"][1]) in produced:
            continue
        w = interpreter.get_tensor(int(op["inputs"][1]))
        kernels.append(w.reshape(w.shape[0], -1))  # TFLite kernels are (out, h, w, in)
    if not kernels:
        return {}

    def distinct_nonzero(k: np.ndarray) -> int:
        s = np.sort(k, axis=1)
        changes = 1 + (np.diff(s, axis=1) != 0).sum(axis=1)
        return int((changes - (k == 0).any(axis=1)).max())

    distinct = max(distinct_nonzero(k) for k in kernels)
    total = sum(k.size for k in kernels)
    return {
        "layers": len(kernels),
        "dtype": kernels[0].dtype.name,
        "zero_fraction": float(sum((k == 0).sum() for k in kernels) / total),
        "max_distinct_per_channel": int(distinct),
    }


def export_tflite(
    model_path: str | Path,
    out: str | Path,
    fmt: str,
    images: list[str],
    names: Sequence[str],
    input_size: int,
    spec: Spec | None = None,
    qat: dict | None = None,
    float_layers: list[int] | None = None,
    options: ExportOptions | None = None,
) -> dict:
    """Convert ``model_path`` (an ``.h5`` this tool wrote) to ``out``; returns :func:`describe_tflite`'s report.

    ``qat`` ({"scheme", "weights"}) converts the quantization-aware-trained model
    instead: ``model_path`` wrapped by that scheme, with the trained weights.
    ``float_layers`` (Spec indices; int8 only) stay float in an otherwise int8 model.
    ``options``: the input type and in-model NMS (:class:`ExportOptions`).
    """
    from yolo3.lite import TFLitePredictor
    from yolo3.models import spec_from_h5

    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r} (use {', '.join(FORMATS)})")
    model_path = Path(model_path)
    spec = spec or spec_from_h5(model_path)
    if spec is None:
        raise UserError("this .h5 carries no cfg; convert a model written by this tool", model_path)
    options = options or ExportOptions()
    options.check(fmt)
    if options.bias_correction and (qat or float_layers):
        raise UserError("bias correction is for a post-training int8 model, not one trained with simulated int8 or with float layers")
    metadata = metadata_for(spec, names, input_size)
    if options.nms:
        from .tflite_nms import OUTPUT_NAMES

        metadata["postprocess"] = {"nms": True, "outputs": list(OUTPUT_NAMES), "score_threshold": options.score_threshold,
                                   "nms_iou": options.nms_iou, "max_detections": options.max_detections,
                                   "classes_per_box": min(options.nms_classes_per_box, int(metadata["heads"][0]["classes"]))}  # fmt: skip
    if fmt not in ("int8", "int16x8"):
        images = []

    written: dict = {}

    def write(tmp: Path) -> None:
        run_worker(model_path, fmt, tmp, images, input_size, metadata, qat, float_layers, options)
        predictor = TFLitePredictor(tmp, threads=1)  # loads with LiteRT and runs once before we keep it
        predictor.invoke(np.full((1, *predictor.input_hw, 3), 0.5, np.float32))
        written.update(predictor.metadata)

    atomic_write(out, write)
    report = describe_tflite(out)
    report.update(format=fmt, calibration_images=len(images), path=str(out), float_layers=[f"conv_{i}" for i in float_layers or []],
                  in_model_nms=metadata.get("postprocess"), activation_ranges=written.get("activation_ranges"), bias_correction=written.get("bias_correction"))  # fmt: skip
    return report
