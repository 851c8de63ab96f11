"""Activation ranges other than min/max: each tensor's int8 range chosen by the smallest quantization error on calibration data.

TFLite's converter quantizes every activation over the full min..max it saw in
calibration. One rare large value then stretches the range and every common
value loses resolution — the known weakness of per-tensor int8 activations in
depthwise light detectors. Choosing the range that minimises the mean squared
error between a tensor's values and their int8 round trip (clipping the rare
values, keeping resolution for the common ones) is the standard fix (Banner et
al., "Post-training 4-bit quantization", 2019; TensorRT's and OpenVINO's MSE
calibration).

How it is done with TensorFlow 2.21's converter, which records only min/max:
``converter._experimental_calibrate_only = True`` gives the float model with
the calibrated min/max stored in each tensor's quantization parameters; the
float model runs once more on the calibration images with every tensor kept
(LiteRT's ``experimental_preserve_all_tensors``) to sample each tensor's values;
the chosen ranges are written into those min/max fields
(``tensorflow.lite.tools.flatbuffer_utils``); and
``tensorflow.lite.python.convert.mlir_quantize`` — what the converter itself
calls after calibrating — makes the int8 model from them. The model's input
(pinned to [0, 1]) and outputs (box and score logits, whose tails are the
detections) keep their min/max.

A second refit, ``mean``, sets each range at the mean over the calibration
images of each image's min and max: the moving average of per-batch extremes
that TF1, TFMOT's QAT and ai-edge-quantizer calibrate with approximates it, and
it also clips what only a few images reach.

The pure part (:func:`mse_range`) is here; the TensorFlow part runs in the
conversion worker (:func:`refit_ranges`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

SAMPLES_PER_TENSOR = 100_000  # values kept per tensor over all calibration images
GRID = np.linspace(0.25, 1.0, 31)  # fractions of the recorded end tried for each end of the range


def quantization_mse(values: np.ndarray, lo: float, hi: float) -> float:
    """Mean squared error of ``values`` through asymmetric int8 over [lo, hi] (zero kept exact, as TFLite nudges it)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0:
        return float(np.mean(values**2))
    scale = (hi - lo) / 255.0
    zero = np.round(-lo / scale) - 128.0
    q = np.clip(np.round(values / scale) + zero, -128, 127)
    return float(np.mean(((q - zero) * scale - values) ** 2))


def mse_range(values: np.ndarray, lo: float, hi: float, grid: np.ndarray = GRID) -> tuple[float, float]:
    """The [lo', hi'] inside [lo, hi] with the smallest int8 error on ``values``: the upper end first, then the lower.

    min/max itself (fraction 1) is among the candidates, so the result is never
    worse on these values than the converter's own range.
    """
    values = np.asarray(values, np.float64).ravel()
    best_hi = min((quantization_mse(values, lo, hi * f), -f, hi * f) for f in grid)[2] if hi > 0 else hi
    best_lo = min((quantization_mse(values, lo * f, best_hi), -f, lo * f) for f in grid)[2] if lo < 0 else lo
    return float(best_lo), float(best_hi)


METHODS = ("mse", "mean")


def refit_ranges(calibrated: bytes, batches: Callable[[], Iterable[list[np.ndarray]]], seed: int = 0, method: str = "mse") -> tuple[bytes, dict]:
    """The calibrated float model with every inner activation's min/max replaced; and a summary.

    ``method`` "mse": each range by :func:`mse_range`; "mean": the mean over the
    calibration images of each image's min and of its max (what TF1's and
    ai-edge-quantizer's moving average of per-batch extremes approximate).
    ``batches`` yields the calibration inputs (as the converter's representative
    dataset does). Runs in the conversion worker (TensorFlow imported).
    """
    if method not in METHODS:
        raise ValueError(f"unknown range method {method!r}")
    from tensorflow.lite.tools import flatbuffer_utils

    from yolo3.kerasenv import tf

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    graph = model.subgraphs[0]
    keep = set(graph.inputs) | set(graph.outputs)
    recorded = {i: t for i, t in enumerate(graph.tensors)
                if i not in keep and t.quantization is not None and t.quantization.min is not None and len(t.quantization.min) == 1}  # fmt: skip
    interpreter = tf.lite.Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    inputs = [d["index"] for d in interpreter.get_input_details()]
    data = list(batches())
    per_image = max(1, SAMPLES_PER_TENSOR // max(len(data), 1))
    rng = np.random.default_rng(seed)
    samples: dict[int, list[np.ndarray]] = {i: [] for i in recorded}
    extremes: dict[int, list[tuple[float, float]]] = {i: [] for i in recorded}
    for batch in data:
        for index, value in zip(inputs, batch):
            interpreter.set_tensor(index, value)
        interpreter.invoke()
        for i in recorded:
            v = interpreter.get_tensor(i).ravel()
            if method == "mean":
                extremes[i].append((float(v.min()), float(v.max())))
            else:
                samples[i].append(v if v.size <= per_image else rng.choice(v, per_image, replace=False))
    narrowed = []
    for i, t in recorded.items():
        lo, hi = float(t.quantization.min[0]), float(t.quantization.max[0])
        if method == "mean":
            new_lo, new_hi = (float(np.mean(e)) for e in zip(*extremes[i]))
        else:
            new_lo, new_hi = mse_range(np.concatenate(samples[i]), lo, hi)
        t.quantization.min, t.quantization.max = [new_lo], [new_hi]
        if (new_lo, new_hi) != (lo, hi):
            narrowed.append((hi - lo) / max(new_hi - new_lo, 1e-12))
    summary = {"method": method, "tensors": len(recorded), "narrowed": len(narrowed),
               "median_narrowing": float(np.median(narrowed)) if narrowed else 1.0, "images": len(data)}  # fmt: skip
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), summary
