"""Run one TFLite conversion in its own process (TensorFlow 2.21's converter leaks memory per call).

    python -m compression.quantize.tflite_worker JOB.json

The job names the ``.h5``, the format, the output path, the calibration images
(int8), the metadata to embed, and optionally the input type (int8 / uint8) and
the in-model NMS settings. Errors end the process with one line on stderr.
"""

from __future__ import annotations

import json
import sys

import numpy as np


def add_metadata(model: bytes, name: str, payload: bytes) -> bytes:
    """Append a named metadata buffer to a TFLite flatbuffer."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    obj = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(payload, np.uint8)
    obj.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(obj.buffers) - 1
    obj.metadata = [*(obj.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))


def convert(job: dict) -> bytes:
    import yolo3.layers  # noqa: F401 - registers the custom layers an .h5 may hold
    from yolo3.kerasenv import keras, tf
    from yolo3.preprocess import letterbox, load_image

    model = keras.models.load_model(job["model"], compile=False)
    if job.get("qat"):
        from compression.quantize.qat import quantize_model

        model = quantize_model(model, job["qat"]["scheme"], job["qat"].get("range_scale"))  # the same wrapping as in training, then its weights
        model.load_weights(job["qat"]["weights"])
    size = job["input_size"]
    if job.get("nms"):  # the graph also decodes and runs NMS (compression.quantize.tflite_nms)
        from compression.quantize.tflite_nms import nms_function

        serve = nms_function(model, job["metadata"], **job["nms"])
        converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], model)
    else:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
    fmt = job["format"]
    if fmt in ("int8", "int16x8", "float16", "dynamic"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if fmt == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if fmt in ("int8", "int16x8"):
        images = job["images"]

        def representative():
            for k, path in enumerate(images):
                tensor, _ = letterbox(load_image(path), size)
                if k == 0:  # a black and a white pixel pin the input's range to [0, 1]: scale 1/255, so a uint8
                    tensor[0, 0], tensor[0, 1] = 0.0, 1.0  # input takes a camera's bytes as they are (int8: bytes - 128)
                yield [tensor[None].astype(np.float32)]

        converter.representative_dataset = representative
    if fmt == "int8":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8 if job.get("input_type") == "uint8" else tf.int8
        if not job.get("nms"):  # the post-processing operator's outputs are float
            converter.inference_output_type = tf.int8
    if fmt == "int16x8":  # int16 activations, int8 weights: float input and output, integer inside
        converter.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    if fmt == "int8" and job.get("float_layers"):
        return selectively_quantized(converter, representative, set(job["float_layers"]))
    if fmt == "int8" and (job.get("ranges") in ("mse", "mean") or job.get("bias_correction")):
        return calibrated_quantized(converter, representative, job)
    return converter.convert()


def calibrated_quantized(converter, dataset, job: dict) -> bytes:
    """int8 made in two steps so that the calibrated model can be edited and read between them.

    Calibrate only; refit the recorded ranges (:mod:`compression.quantize.ranges`,
    by ``job["ranges"]``); quantize with the same MLIR quantizer the converter
    uses (unedited, the converter's own result); then, with
    ``job["bias_correction"]``, correct each convolution's int8 bias against the
    calibrated float model (:mod:`compression.quantize.bias`). What was done goes
    into the file's metadata.
    """
    import itertools

    from tensorflow.lite.python.convert import mlir_quantize

    from compression.quantize.bias import CORRECTION_IMAGES, correct_int8_biases
    from compression.quantize.ranges import refit_ranges
    from yolo3.kerasenv import tf

    converter._experimental_calibrate_only = True
    calibrated = converter.convert()
    if job.get("ranges") in ("mse", "mean"):
        calibrated, job["metadata"]["activation_ranges"] = refit_ranges(calibrated, dataset, method=job["ranges"])
    quantized = mlir_quantize(calibrated, fully_quantize=True, input_data_type=tf.uint8 if job.get("input_type") == "uint8" else tf.int8,
                              output_data_type=tf.float32 if job.get("nms") else tf.int8)  # fmt: skip
    if job.get("bias_correction"):
        batches = [inputs[0] for inputs in itertools.islice(dataset(), CORRECTION_IMAGES)]
        quantized, job["metadata"]["bias_correction"] = correct_int8_biases(quantized, calibrated, batches)
    return quantized


def selectively_quantized(converter, dataset, float_layers: set[int]) -> bytes:
    """int8 everywhere but the ops of the layers in ``float_layers`` (Spec indices), which stay float (TFLite's QuantizationDebugger).

    The ops are found by their output tensors' names, which carry the Keras
    layer names (``conv_12``, ``bn_12``, ``leaky_12``) of what was folded into them.
    """
    import re

    from yolo3.kerasenv import tf
    from yolo3.names import LAYER_IN_TENSOR

    layer = re.compile(LAYER_IN_TENSOR)
    plain = tf.lite.Interpreter(model_content=converter.convert())
    tensors = plain.get_tensor_details()
    nodes = sorted({tensors[o]["name"] for op in plain._get_ops_details() for o in op["outputs"]
                    if {int(i) for i in layer.findall(tensors[o]["name"])} & float_layers})  # fmt: skip
    if not nodes:
        raise ValueError(f"no operator of the layers {sorted(float_layers)} was found in the converted model")
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=nodes, fully_quantize=True)
    debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=dataset, debug_options=options)
    return debugger.get_nondebug_quantized_model()


def debug_int8(job: dict) -> list[dict]:
    """Per-tensor statistics of the int8 model against float (``QuantizationDebugger``) on the job's images."""
    import csv
    import io

    import yolo3.layers  # noqa: F401 - registers the custom layers an .h5 may hold
    from yolo3.kerasenv import keras, tf
    from yolo3.preprocess import letterboxed_images

    model = keras.models.load_model(job["model"], compile=False)
    size = job["input_size"]
    tensors = list(letterboxed_images(job["images"], size)[:, None])

    def dataset():
        for t in tensors:
            yield [t]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = dataset
    debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=dataset)
    debugger.run()
    buffer = io.StringIO()
    debugger.layer_statistics_dump(buffer)
    rows = []
    for row in csv.DictReader(io.StringIO(buffer.getvalue())):
        out = {"op_name": row["op_name"], "tensor_name": row["tensor_name"]}
        for key in ("num_elements", "stddev", "mean_error", "max_abs_error", "mean_squared_error", "scale", "zero_point"):
            try:
                out[key] = float(row[key])
            except (KeyError, ValueError):
                out[key] = None
        rows.append(out)
    return rows


def main(argv: list[str]) -> int:
    from yolo3.lite import METADATA_NAME

    job = json.loads(open(argv[0]).read())
    if job["format"] == "debug":
        try:
            rows = debug_int8(job)
        except Exception as err:  # the parent reports this line to the user
            print(f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}", file=sys.stderr)
            return 1
        with open(job["out"], "w", encoding="utf-8") as f:
            json.dump(rows, f)
        return 0
    try:
        model = convert(job)
        model = add_metadata(model, METADATA_NAME, json.dumps(job["metadata"]).encode("utf-8"))
    except Exception as err:  # the parent reports this line to the user
        print(f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}", file=sys.stderr)
        return 1
    with open(job["out"], "wb") as f:
        f.write(model)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
