#!/usr/bin/env python3
"""Quantize a float .tflite with LiteRT's ai-edge-quantizer: int8 activations (a8w8), int16 (a16w8) on the named layers.

    AEQ_PYTHON bench/aeq_quantize.py FLOAT.tflite CALIBRATION.npy OUT.tflite [LAYER,LAYER,... | all]

Runs in an environment of its own (``pip install ai-edge-quantizer==0.10.0``: it pins
its LiteRT and pulls in more than this project needs), called by
``bench/int16_mix.py``; it imports nothing of this project. A layer is named by
its index, which the project's tensor names carry (``conv_12``, ``bn_12``, ``leaky_12``).
"""

from __future__ import annotations

import sys

import numpy as np


def main(argv: list[str]) -> int:
    from ai_edge_quantizer import qtyping, quantizer

    float_path, calibration, out = argv[:3]
    layers = argv[3] if len(argv) > 3 else ""
    every_op = qtyping.TFLOperationName.ALL_SUPPORTED
    q = quantizer.Quantizer(float_path)
    q.add_static_config(".*", every_op, 8, 8)  # activation bits, weight bits
    if layers == "all":
        q.add_static_config(".*", every_op, 16, 8)
    elif layers:
        q.add_static_config(r"_(" + "|".join(layers.split(",")) + r")(/|;|$)", every_op, 16, 8)
    images = np.load(calibration)
    # the converter's default signature; this project's models name their input "image"
    result = q.calibrate({"serving_default": [{"image": x[None]} for x in images]}, num_threads=2)
    q.quantize(result, enable_progress_report=False).export_model(out, overwrite=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
