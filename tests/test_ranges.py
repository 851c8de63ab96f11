"""Activation ranges by quantization error: the search itself, and the ranges written being the ranges in the int8 file."""

import numpy as np
import pytest

from compression.quantize.ranges import mse_range, quantization_mse


def test_mse_range_is_never_worse_than_min_max_and_clips_a_heavy_tail():
    rng = np.random.default_rng(0)
    heavy = rng.standard_t(3, 100_000)  # a heavy tail: min/max spends most levels on a few values
    lo, hi = float(heavy.min()), float(heavy.max())
    new_lo, new_hi = mse_range(heavy, lo, hi)
    assert lo < new_lo < 0 < new_hi < hi
    assert quantization_mse(heavy, new_lo, new_hi) < 0.9 * quantization_mse(heavy, lo, hi)
    uniform = rng.uniform(-1, 3, 50_000)  # nothing to clip: min/max is already (nearly) the best range
    u_lo, u_hi = mse_range(uniform, float(uniform.min()), float(uniform.max()))
    assert u_hi > 0.95 * uniform.max() and u_lo < 0.95 * uniform.min()
    relu = np.maximum(rng.normal(0, 1, 10_000), 0)  # a one-sided tensor keeps its zero lower end
    assert mse_range(relu, 0.0, float(relu.max()))[0] == 0.0


def test_refitted_ranges_are_the_ranges_in_the_int8_file():
    """Calibrate only, refit, quantize with the converter's own MLIR quantizer: unedited this gives the converter's int8 outputs
    exactly; edited, every inner tensor's int8 range in the file is the chosen one (within one quantization step)."""
    from tensorflow.lite.python.convert import mlir_quantize
    from tensorflow.lite.tools import flatbuffer_utils

    from compression.quantize.ranges import refit_ranges
    from yolo3.kerasenv import keras, tf

    inp = keras.Input((24, 24, 3))
    x = keras.layers.LeakyReLU(0.1)(keras.layers.Conv2D(8, 3, padding="same")(inp))
    x = keras.layers.ReLU()(keras.layers.Conv2D(8, 3, padding="same")(x))
    model = keras.Model(inp, keras.layers.Conv2D(4, 1)(x))
    rng = np.random.default_rng(1)
    data = [rng.standard_t(2, (1, 24, 24, 3)).astype(np.float32) for _ in range(6)]

    def dataset():
        for d in data:
            yield [d]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    plain = converter.convert()
    converter._experimental_calibrate_only = True
    calibrated = converter.convert()
    quantize = lambda m: mlir_quantize(m, fully_quantize=True, input_data_type=tf.int8, output_data_type=tf.int8)  # noqa: E731

    def outputs(m: bytes, x: np.ndarray) -> np.ndarray:
        it = tf.lite.Interpreter(model_content=m)
        it.allocate_tensors()
        i, o = it.get_input_details()[0], it.get_output_details()[0]
        scale, zero = i["quantization"]
        it.set_tensor(i["index"], np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8))
        it.invoke()
        return it.get_tensor(o["index"])

    assert all(np.array_equal(outputs(plain, d), outputs(quantize(calibrated), d)) for d in data)
    refitted, summary = refit_ranges(calibrated, dataset)
    assert summary["tensors"] == 3 and summary["narrowed"] >= 1  # conv output before LeakyReLU, LeakyReLU, conv + ReLU
    chosen = flatbuffer_utils.convert_bytearray_to_object(bytearray(refitted)).subgraphs[0]
    written = {t.name: t for t in flatbuffer_utils.convert_bytearray_to_object(bytearray(quantize(refitted))).subgraphs[0].tensors}
    inner = [t for k, t in enumerate(chosen.tensors) if k not in (*chosen.inputs, *chosen.outputs) and t.quantization is not None
             and t.quantization.min is not None and len(t.quantization.min) == 1]  # fmt: skip
    assert len(inner) == 3
    for t in inner:
        q = written[t.name].quantization
        scale, zero = float(q.scale[0]), int(q.zeroPoint[0])
        assert abs((-128 - zero) * scale - min(t.quantization.min[0], 0)) <= scale and abs((127 - zero) * scale - t.quantization.max[0]) <= scale
    # the mean refit: each inner range is the mean over the images of each image's min and max, read back from the calibrated model
    refit_mean, summary = refit_ranges(calibrated, dataset, method="mean")
    assert summary["method"] == "mean" and summary["tensors"] == 3
    names = [t.name for t in inner]
    probe = tf.lite.Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True)
    probe.allocate_tensors()
    index = {d["name"]: d["index"] for d in probe.get_tensor_details()}
    extremes = {n: [] for n in names}
    for d in data:
        probe.set_tensor(probe.get_input_details()[0]["index"], d)
        probe.invoke()
        for n in names:
            v = probe.get_tensor(index[n.decode() if isinstance(n, bytes) else n])
            extremes[n].append((v.min(), v.max()))
    means = {t.name: (t.quantization.min[0], t.quantization.max[0]) for t in flatbuffer_utils.convert_bytearray_to_object(bytearray(refit_mean)).subgraphs[0].tensors
             if t.name in extremes}  # fmt: skip
    for n in names:
        assert means[n] == pytest.approx(tuple(np.mean(extremes[n], axis=0)), rel=1e-5)
