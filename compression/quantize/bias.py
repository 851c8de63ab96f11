"""Bias absorption and bias correction (Nagel et al., "Data-Free Quantization", 2019, sections 4.1 and 4.2).

Two repairs that move only biases (batch norm's beta and moving mean), so a
kernel keeps its values — a clustered model keeps its shared values:

**Bias absorption.** In a pair ``a -> b`` (as cross-layer equalisation finds
them: ``b`` alone reads ``a``), a channel of ``a`` whose pre-activation sits far
above zero stretches the int8 range of the tensor between them for nothing.
With ``c = max(0, beta - 3 |gamma|)`` (batch norm's shift and scale: the
channel's mean and spread before the activation), ``a``'s output is lowered by
``c`` and ``b`` adds back what ``c`` contributed (its moving mean lowered by
``W_b c``, or its bias raised). Exact through a linear activation; through
LeakyReLU or ReLU exact wherever the pre-activation is at least ``c`` (all but
about 0.1 % of a normal channel's values), and not where it is below. A
reader with zero padding and a kernel larger than 1x1 would see ``c`` missing
at the image border, where it pads with 0, not with ``c``: such pairs are left
alone and reported (in Yolo-Fastest, the 1x1 -> depthwise 3x3 pairs; its
depthwise -> 1x1 pairs are absorbed).

**Bias correction.** Rounding a channel's weights to int8 moves its output's
mean by ``sum(eps * E[x])`` (``eps`` the BN-folded kernel's rounding error on
the converter's per-channel grid, ``E[x]`` the mean of each input channel on
the calibration images, zero padding included). That shift is subtracted from
the channel's bias, so int8 is right on average. It corrects the weights'
rounding, not the activations'; on a model whose loss is in its activations
it can do little (measured in docs/results.md).

Example::

    weights2, report = absorb_biases(spec, weights)                 # data-free
    weights3, report = correct_biases(model, spec, weights2, batches)  # needs the float model of weights2
"""

from __future__ import annotations

import numpy as np

from yolo3.darknet import ConvWeights, DarknetWeights
from yolo3.spec import Spec, analyse, conv_params

from .adaround import channel_scales, fold, nearest
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


def input_means(model, indices: list[int], batches: list[np.ndarray], batch: int = 8) -> dict[int, np.ndarray]:
    """Each convolution's input, averaged per channel over the calibration images (the float model; zero padding included)."""
    from yolo3.kerasenv import keras, tf
    from yolo3.names import conv_name

    layers = [model.get_layer(conv_name(i)) for i in indices]
    feed = keras.Model(model.inputs, [layer.input for layer in layers])
    run = tf.function(lambda x: [tf.reduce_sum(t, axis=(0, 1, 2)) for t in feed(x, training=False)])
    sums = [np.zeros(int(layer.input.shape[-1]), np.float64) for layer in layers]
    count = [0] * len(layers)
    for start in range(0, len(batches), batch):
        x = np.concatenate(batches[start : start + batch])
        for k, (s, layer) in enumerate(zip(run(tf.constant(x)), layers)):
            sums[k] += s.numpy()
            count[k] += len(x) * int(np.prod(layer.input.shape[1:3]))
    return {i: s / max(n, 1) for i, s, n in zip(indices, sums, count)}


def rounding_shift(w: ConvWeights, mean_in: np.ndarray, depthwise: bool) -> np.ndarray:
    """How much round-to-nearest int8 weights move each output channel's mean: ``sum(eps * E[x])`` on the folded kernel."""
    folded, _ = fold(w)
    eps = nearest(folded, channel_scales(folded)) * channel_scales(folded) - folded
    return _reader_sum(ConvWeights(eps), mean_in, depthwise)


def correct_biases(model, spec: Spec, weights: DarknetWeights, batches: list[np.ndarray]) -> tuple[DarknetWeights, dict]:
    """Bias correction of every plain and depthwise convolution (see the module docstring).

    ``model``: the Keras model of ``spec`` holding ``weights``; ``batches``:
    calibration images as the converter sees them, each ``(1, size, size, 3)``.
    """
    infos = analyse(spec)
    kinds = {}
    for i in spec.conv_indices():
        p = conv_params(spec.layers[i])
        depthwise = p.groups > 1 and p.groups == infos[i].in_shape[2] == p.filters
        if p.groups == 1 or depthwise:
            kinds[i] = depthwise
    means = input_means(model, list(kinds), batches)
    convs = dict(weights.convs)
    layers = []
    for i, depthwise in kinds.items():
        shift = rounding_shift(convs[i], means[i], depthwise)
        convs[i] = _add_after_bn(convs[i], -shift)
        layers.append({"layer": f"conv_{i}", "largest_shift": float(np.abs(shift).max())})
    return weights.with_convs(convs), {"layers": layers, "images": len(batches)}
