"""Bias absorption and empirical bias correction (after Nagel et al., "Data-Free Quantization", 2019, sections 4.1 and 4.2).

Two repairs that move only biases, never a kernel — a clustered model keeps
its shared values:

**Bias absorption** (on the Keras weights, data-free). In a pair ``a -> b`` (as
cross-layer equalisation finds them: ``b`` alone reads ``a``), a channel of
``a`` whose pre-activation sits far above zero stretches the int8 range of the
tensor between them for nothing. With ``c = max(0, beta - 3 |gamma|)`` (batch
norm's shift and scale: the channel's mean and spread before the activation;
``c = beta`` through a linear one), ``a``'s output is lowered by ``c`` and ``b``
adds back what ``c`` contributed (its moving mean lowered by ``W_b c``, or its
bias raised). Exact through a linear activation; through LeakyReLU or ReLU
exact wherever the pre-activation is at least ``c`` (all but about 0.1 % of a
normal channel's values), and not where it is below. A reader with zero
padding and a kernel larger than 1x1 would see ``c`` missing at the image
border, where it pads with 0, not with ``c``: such pairs are left alone and
reported (in Yolo-Fastest, the 1x1 -> depthwise 3x3 pairs; its depthwise ->
1x1 pairs are absorbed).

**Bias correction** (on the int8 file, with calibration images). int8 moves
the mean of a layer's output: its weights' rounding does, and so do the
activations' coarse steps — a LeakyReLU whose input is noisy is larger on
average than on the clean input, and the next layer sums that. The paper
corrects the weights' part from batch-norm statistics; here the whole shift is
measured and removed, in the int8 model itself, layer by layer in execution
order: each convolution's int8 output is averaged per channel over the
calibration images, with every convolution before it already corrected, and
its int32 bias moves by the difference to the float model's mean. What is
left is the noise around the mean, which a bias cannot fix.

Example::

    weights2, report = absorb_biases(spec, weights)                          # data-free, Keras weights
    int8_2, summary = correct_int8_biases(int8, calibrated, batches)         # in the conversion worker
"""

from __future__ import annotations

import numpy as np

from yolo3.darknet import ConvWeights, DarknetWeights
from yolo3.spec import Spec, analyse, conv_params

from .equalize import equalizable_pairs

SPREAD = 3.0  # c = beta - SPREAD |gamma|: the pre-activation stays above it for ~99.9 % of a normal channel's values


def absorbable_pairs(spec: Spec) -> tuple[list[tuple[int, int]], list[str]]:
    """The equalizable pairs whose reader sees no zero padding (so a shift is exact at the border); the others and why not."""
    pairs, skipped = equalizable_pairs(spec)
    kept = []
    for a, b in pairs:
        p = conv_params(spec.layers[b])
        if p.size > 1 and p.padding > 0:
            skipped.append(f"conv_{a} -> conv_{b}: conv_{b} is {p.size}x{p.size} with zero padding, it would read the shift as missing at the border")
        elif not conv_params(spec.layers[a]).batch_normalize:
            skipped.append(f"conv_{a} -> conv_{b}: conv_{a} has no batch norm to tell its channels' spread")
        else:
            kept.append((a, b))
    return kept, skipped


def _shift_of(w: ConvWeights, activation: str) -> np.ndarray:
    """Per channel, what ``a``'s output can lose without crossing the activation's knee (the mean through a linear one)."""
    gamma, beta, _, _ = (np.asarray(x, np.float64) for x in w.bn)
    if activation == "linear":
        return beta
    return np.maximum(0.0, beta - SPREAD * np.abs(gamma))


def _reader_sum(w: ConvWeights, c: np.ndarray, depthwise: bool) -> np.ndarray:
    """``W_b c`` per output channel of the reader (a 1x1 or unpadded kernel summed over its window)."""
    k = np.asarray(w.kernel, np.float64)
    if depthwise:
        return k.sum(axis=(0, 1, 2)) * c
    return np.einsum("hwio,i->o", k, c)


def _add_to_output(w: ConvWeights, delta: np.ndarray) -> ConvWeights:
    """The same convolution with ``delta`` added to its output before batch norm (for BN: its moving mean lowered)."""
    if w.bn is not None:
        gamma, beta, mean, var = w.bn
        return ConvWeights(w.kernel, None, (gamma, beta, (mean - delta).astype(mean.dtype), var))
    bias = np.zeros(w.filters) if w.bias is None else w.bias
    return ConvWeights(w.kernel, (bias + delta).astype(np.float32), None)


def _add_after_bn(w: ConvWeights, delta: np.ndarray) -> ConvWeights:
    """The same convolution with ``delta`` added to its batch-normed (BN-folded) output."""
    if w.bn is not None:
        gamma, beta, mean, var = w.bn
        return ConvWeights(w.kernel, None, (gamma, (beta + delta).astype(beta.dtype), mean, var))
    bias = np.zeros(w.filters) if w.bias is None else w.bias
    return ConvWeights(w.kernel, (bias + delta).astype(np.float32), None)


def absorb_biases(spec: Spec, weights: DarknetWeights) -> tuple[DarknetWeights, dict]:
    """Bias absorption over every absorbable pair (see the module docstring); new weights and what was done."""
    pairs, skipped = absorbable_pairs(spec)
    infos = analyse(spec)
    convs = dict(weights.convs)
    done = []
    for a, b in pairs:
        pa = conv_params(spec.layers[a])
        c = _shift_of(convs[a], pa.activation)
        if not np.any(c > 0) and pa.activation != "linear":
            continue
        depthwise = conv_params(spec.layers[b]).groups > 1 and conv_params(spec.layers[b]).groups == infos[b].in_shape[2]
        convs[a] = _add_after_bn(convs[a], -c)
        convs[b] = _add_to_output(convs[b], _reader_sum(convs[b], c, depthwise))
        done.append({"pair": f"conv_{a} -> conv_{b}", "channels": int(np.count_nonzero(c)), "largest_shift": float(np.abs(c).max())})
    return weights.with_convs(convs), {"pairs": done, "skipped": skipped}


CORRECTION_IMAGES = 32  # calibration images each layer's mean output is taken over
CORRECTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")


def _per_channel_mean(values: np.ndarray, scale: float = 1.0, zero: int = 0) -> np.ndarray:
    """A tensor's mean over every position, per channel (the last axis), dequantized when ``scale`` is given."""
    flat = values.reshape(-1, values.shape[-1]).astype(np.float64)
    return (flat.mean(axis=0) - zero) * scale


def correctable_ops(quantized: bytes, calibrated: bytes) -> list[dict]:
    """The int8 model's convolutions, in execution order, that the calibrated float model has the same output tensor of.

    Each: ``out`` and ``bias`` (tensor indices in the int8 model), ``reference``
    (the output's index in the float model). A convolution without an int32
    bias or with a per-channel output is left out.
    """
    from yolo3.kerasenv import tf

    reference = tf.lite.Interpreter(model_content=calibrated)
    names = {t["name"]: (t["index"], tuple(t["shape"])) for t in reference.get_tensor_details()}
    interpreter = tf.lite.Interpreter(model_content=quantized)
    tensors = interpreter.get_tensor_details()
    found = []
    for op in interpreter._get_ops_details():
        if op["op_name"] not in CORRECTED_OPS or len(op["inputs"]) < 3 or op["inputs"][2] < 0:
            continue
        out, bias = tensors[op["outputs"][0]], tensors[op["inputs"][2]]
        match = names.get(out["name"])
        if match is None or match[1] != tuple(out["shape"]) or bias["dtype"] != np.int32 or len(out["quantization_parameters"]["scales"]) != 1:
            continue
        found.append({"out": out["index"], "bias": bias["index"], "reference": match[0]})
    return found


def correct_int8_biases(quantized: bytes, calibrated: bytes, batches: list[np.ndarray], threads: int = 2) -> tuple[bytes, dict]:
    """Empirical bias correction of an int8 ``.tflite``: each convolution's output brought to the float model's mean, layer by layer.

    ``calibrated``: the float model the converter calibrated (its tensors carry
    the same names); ``batches``: float inputs as the converter's representative
    dataset gives them. In execution order, each convolution's int8 output is
    averaged per channel over the images, with every layer before it already
    corrected, and its int32 bias moves by the difference to the float model's
    mean, in units of the bias's own scale. This corrects what int8 does to the
    mean — the weights' rounding and the activations' (LeakyReLU's knee seen
    through coarse steps makes the next layer's input larger on average) —
    not the noise around it. Runs in the conversion worker (TensorFlow imported).
    """
    import time

    from tensorflow.lite.tools import flatbuffer_utils

    from yolo3.kerasenv import tf

    t0 = time.perf_counter()
    ops = correctable_ops(quantized, calibrated)
    reference = tf.lite.Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True, num_threads=threads)
    reference.allocate_tensors()
    float_input = reference.get_input_details()[0]["index"]
    target = {op["reference"]: 0.0 for op in ops}
    for x in batches:
        reference.set_tensor(float_input, x)
        reference.invoke()
        for i in target:
            target[i] = target[i] + _per_channel_mean(reference.get_tensor(i)) / len(batches)
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(quantized))
    tensors = model.subgraphs[0].tensors
    detail = tf.lite.Interpreter(model_content=quantized).get_input_details()[0]
    (in_scale, in_zero), in_type = detail["quantization"], np.dtype(detail["dtype"])
    limits = np.iinfo(in_type)
    inputs = [np.clip(np.round(x / in_scale + in_zero), limits.min, limits.max).astype(in_type) for x in batches]
    shifts = []
    for op in ops:
        interpreter = tf.lite.Interpreter(model_content=bytes(flatbuffer_utils.convert_object_to_bytearray(model)),
                                          experimental_preserve_all_tensors=True, num_threads=threads)  # fmt: skip
        interpreter.allocate_tensors()
        q = interpreter.get_tensor_details()[op["out"]]["quantization_parameters"]
        scale, zero = float(q["scales"][0]), int(q["zero_points"][0])
        mean = 0.0
        for x in inputs:
            interpreter.set_tensor(detail["index"], x)
            interpreter.invoke()
            mean = mean + _per_channel_mean(interpreter.get_tensor(op["out"]), scale, zero) / len(inputs)
        shift = mean - target[op["reference"]]
        bias = tensors[op["bias"]]
        if sum(t.buffer == bias.buffer for t in tensors) > 1:  # a constant the converter shared between tensors: this one gets its own
            from tensorflow.lite.python import schema_py_generated as schema

            own = schema.BufferT()
            own.data = np.array(model.buffers[bias.buffer].data, np.uint8)
            model.buffers.append(own)
            bias.buffer = len(model.buffers) - 1
        buffer = model.buffers[bias.buffer]
        values = np.frombuffer(bytes(buffer.data), np.int32).astype(np.int64)
        step = np.asarray(bias.quantization.scale, np.float64)
        values = np.clip(values - np.round(shift / step), np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
        buffer.data = np.frombuffer(values.tobytes(), np.uint8)
        shifts.append(float(np.abs(shift).max() / scale))
    summary = {"layers": len(ops), "images": len(batches), "seconds": round(time.perf_counter() - t0, 1),
               "median_shift_steps": float(np.median(shifts)) if shifts else 0.0, "largest_shift_steps": max(shifts, default=0.0)}  # fmt: skip
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), summary
