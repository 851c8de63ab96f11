"""Edge TPU readiness of a ``.tflite``: every operator, whether the Edge TPU runs it, and where the first one that does not cuts the graph.

The Edge TPU compiler cannot be installed here (it is a Debian package for
x86-64 that this project does not carry), so this is a check against Coral's
published list of supported operations, not a compilation. What the list
says, and what it means for YOLOv3:

- only tensors quantized to 8 bits map (a float operator never does);
- the compiler maps operators in graph order until the first unsupported one;
  that one and everything after it run on the CPU;
- LeakyReLU — every YOLOv3 / -tiny activation — is not on the list: a
  Darknet model with ``activation=relu`` maps fully (the "ReLU variant",
  built in as ``yolov3-tiny-relu``).

Example::

    report = edge_tpu_report("best-int8.tflite")
    report["first_unsupported"], report["mapped_operators"], report["operators"]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Coral's "supported operations" for the Edge TPU (coral.ai/docs/edgetpu/models-intro), by TFLite builtin name
SUPPORTED = {
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS", "FULLY_CONNECTED",
    "L2_NORMALIZATION", "LOGISTIC", "LSTM", "UNIDIRECTIONAL_SEQUENCE_LSTM", "MAXIMUM", "MAX_POOL_2D", "MEAN", "MINIMUM", "MUL",
    "PACK", "PAD", "PRELU", "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE",
    "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX", "SPACE_TO_DEPTH", "SPLIT", "SQUEEZE",
    "STRIDED_SLICE", "SUB", "SUM", "SQUARED_DIFFERENCE", "TANH", "TRANSPOSE", "TRANSPOSE_CONV",
}  # fmt: skip
WHY_NOT = {
    "LEAKY_RELU": "LeakyReLU is not supported by the Edge TPU: build the model with activation=relu (e.g. the built-in yolov3-tiny-relu)",
    "DEQUANTIZE": "a float output: runs on the CPU (harmless at the very end)",
    "TFLite_Detection_PostProcess": "the in-model decode and NMS: runs on the CPU after the graph, as in Coral's own SSD models",
}
AT_THE_END = ("DEQUANTIZE", "TFLite_Detection_PostProcess")  # on the CPU, but after everything the Edge TPU would run
QUANTIZED = (np.int8, np.uint8)


def edge_tpu_report(path: str | Path) -> dict:
    """Operators in graph order with ``supported`` and the reason when not; the first that would cut the graph."""
    from yolo3.lite import _interpreter_class

    interpreter = _interpreter_class()(model_path=str(path))
    tensors = interpreter.get_tensor_details()
    rows = []
    first = None
    after_postprocess = False  # what follows the post-processing operator (the count's int32 product) is on the CPU too
    for op in interpreter._get_ops_details():
        name = op["op_name"]
        dtypes = {tensors[i]["dtype"] for i in [*op["inputs"], *op["outputs"]] if i >= 0}
        if name not in SUPPORTED:
            why = WHY_NOT.get(name, "not in Coral's list of supported operations")
        elif not all(d in QUANTIZED or d == np.int32 for d in dtypes):  # int32 biases go with int8 convolutions
            why = "not quantized to 8 bits (" + ", ".join(sorted(np.dtype(d).name for d in dtypes)) + ")"
        else:
            why = None
        rows.append({"index": int(op["index"]), "op": name, "supported": why is None, "why": why})
        if why is not None and first is None and name not in AT_THE_END and not after_postprocess:
            first = int(op["index"])
        after_postprocess = after_postprocess or name == "TFLite_Detection_PostProcess"
    mapped = sum(1 for r in rows if first is None or r["index"] < first)
    return {"operators": rows, "first_unsupported": first, "mapped_operators": mapped, "total_operators": len(rows),
            "unsupported": sorted({r["op"] for r in rows if not r["supported"]})}  # fmt: skip


def format_edge_tpu(report: dict) -> str:
    if report["first_unsupported"] is None:
        return f"Edge TPU: all {report['total_operators']} operators are on Coral's supported list (8-bit); the compiler would map the whole graph"
    op = next(r for r in report["operators"] if r["index"] == report["first_unsupported"])
    return (f"Edge TPU: the first unsupported operator is #{op['index']} {op['op']} ({op['why']}); the compiler would map "
            f"{report['mapped_operators']} of {report['total_operators']} operators and run the rest on the CPU")  # fmt: skip
