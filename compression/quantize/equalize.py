"""Cross-layer equalisation (Nagel et al., "Data-Free Quantization", 2019): the same function, ranges int8 can hold.

Two consecutive convolutions ``a -> b`` where ``b`` alone reads ``a``: scaling
``a``'s output channel ``i`` by ``1/s_i`` and ``b``'s input channel ``i`` by
``s_i`` leaves the network's function unchanged whenever the activation between
them is positively homogeneous — ``f(x / s) = f(x) / s`` for ``s > 0``, true of
linear, ReLU and LeakyReLU (``max(x, 0.1 x)``), false of ReLU6 (its clip at 6
moves), Mish, Swish and the logistic, where this module leaves the pair alone.
With batch norm, ``a``'s scale goes into gamma and beta (its BN-folded kernel
and bias are what int8 sees), ``b``'s into its kernel's input channel; for a
depthwise ``b`` that is channel ``i``'s own filter.

``s_i = sqrt(r1_i / r2_i)``, with ``r1_i`` the range of ``a``'s BN-folded
output channel ``i`` and ``r2_i`` the range of ``b``'s BN-folded weights that
read channel ``i``, makes both ranges ``sqrt(r1_i r2_i)``: a channel whose
weights were tiny next to its neighbours' (and lost to the shared int8 grid of
an activation tensor downstream) is brought to their scale, and the scale it
gave up moves to the next layer. Chains (``a -> b -> c``, the 1x1 -> depthwise
-> 1x1 of a light backbone) are equalised pair by pair, repeatedly, until the
scales settle.

**Activation equalisation** (:func:`equalize_activations`) spends the same
freedom on the activations instead. int8 TFLite quantizes every convolution's
weights per output channel but every activation tensor per tensor. When ``b``
is depthwise, channel ``i``'s filter is one of its output channels, so any
scale on it is absorbed by its own int8 scale; the scale on ``a``'s output
channel is absorbed by ``a``'s per-channel scale too. The only int8 cost the
scaling changes is then the tensor between them: each channel is enlarged
(from calibration images: its measured range, before and after the
activation) until it reaches the tensor's shared range. Every channel then
uses the whole int8 grid, the shared range stays as it was, and nothing else
in the int8 model moves. With a regular ``b`` the scale would land on the
weights that several of its output channels share, so those pairs are left to
:func:`equalize`.

Example::

    weights2, report = equalize(spec, weights)     # report: pairs, skipped pairs and why, iterations
    ranges = measure_channel_ranges(model, spec, [a for a, _ in depthwise_reader_pairs(spec)], images, size)
    weights3, report = equalize_activations(spec, weights, ranges)
"""

from __future__ import annotations

import numpy as np

from yolo3.darknet import ConvWeights, DarknetWeights
from yolo3.keras_model import BN_EPSILON
from yolo3.spec import Spec, analyse, conv_params

HOMOGENEOUS = ("linear", "relu", "leaky")  # f(x / s) = f(x) / s for s > 0


def _readers(spec: Spec, index: int) -> list[int]:
    from compression.budget.levers import _readers as readers

    return readers(spec, index)


def equalizable_pairs(spec: Spec) -> tuple[list[tuple[int, int]], list[str]]:
    """The ``(a, b)`` convolution pairs CLE may scale, and for the rest of the conv -> conv pairs why not."""
    infos = analyse(spec)
    pairs, skipped = [], []
    for a in spec.conv_indices():
        b = a + 1
        if b >= len(spec.layers) or spec.layers[b].type != "convolutional" or _readers(spec, a) != [b]:
            continue
        pa, pb = conv_params(spec.layers[a]), conv_params(spec.layers[b])
        cin_b = infos[b].in_shape[2]
        if pa.activation not in HOMOGENEOUS:
            skipped.append(f"conv_{a} -> conv_{b}: {pa.activation} between them is not positively homogeneous, equalising would change the outputs")
        elif pa.groups not in (1, pa.filters) or pb.groups not in (1, cin_b):
            skipped.append(f"conv_{a} -> conv_{b}: grouped convolution (neither plain nor depthwise)")
        elif pb.groups == cin_b and pb.filters != cin_b:
            skipped.append(f"conv_{a} -> conv_{b}: depthwise with a channel multiplier")
        else:
            pairs.append((a, b))
    return pairs, skipped


def _out_scale(w: ConvWeights) -> np.ndarray:
    """Per output channel, what batch norm multiplies the kernel by (1 without batch norm)."""
    if w.bn is None:
        return np.ones(w.filters)
    gamma, _, _, var = w.bn
    return np.abs(gamma) / np.sqrt(var + BN_EPSILON)


def _out_range(w: ConvWeights) -> np.ndarray:
    """Per output channel: the largest |BN-folded weight|."""
    return np.abs(w.kernel).reshape(-1, w.filters).max(axis=0) * _out_scale(w)


def _in_range(w: ConvWeights, depthwise: bool) -> np.ndarray:
    """Per input channel: the largest |BN-folded weight| that reads it."""
    folded = np.abs(w.kernel) * _out_scale(w)  # (kh, kw, in/groups, out)
    if depthwise:
        return folded.reshape(-1, w.filters).max(axis=0)
    return folded.max(axis=(0, 1, 3))


def _scale_out(w: ConvWeights, s: np.ndarray) -> ConvWeights:
    """Output channels multiplied by ``s``."""
    if w.bn is not None:
        gamma, beta, mean, var = w.bn
        return ConvWeights(w.kernel, None, (gamma * s, beta * s, mean, var))
    return ConvWeights(w.kernel * s, None if w.bias is None else w.bias * s, None)


def _scale_in(w: ConvWeights, s: np.ndarray, depthwise: bool) -> ConvWeights:
    """Input channels multiplied by ``s`` (for a depthwise convolution, channel i's own filter)."""
    kernel = w.kernel * (s[None, None, None, :] if depthwise else s[None, None, :, None])
    return ConvWeights(kernel.astype(w.kernel.dtype), w.bias, w.bn)


def equalize(spec: Spec, weights: DarknetWeights, iterations: int = 20, tolerance: float = 1e-4) -> tuple[DarknetWeights, dict]:
    """CLE over every equalizable pair (see the module docstring); new weights and what was done."""
    pairs, skipped = equalizable_pairs(spec)
    convs = {i: ConvWeights(w.kernel.astype(np.float64), None if w.bias is None else w.bias.astype(np.float64),
                            None if w.bn is None else tuple(np.asarray(x, np.float64) for x in w.bn))
             for i, w in weights.convs.items()}  # fmt: skip
    depthwise = {i: conv_params(spec.layers[i]).groups > 1 for i in spec.conv_indices()}
    done = 0
    while done < iterations:
        done += 1
        largest = 0.0
        for a, b in pairs:
            r1, r2 = _out_range(convs[a]), _in_range(convs[b], depthwise[b])
            ok = (r1 > 0) & (r2 > 0)
            s = np.ones_like(r1)
            s[ok] = np.sqrt(r1[ok] / r2[ok])
            convs[a] = _scale_out(convs[a], 1.0 / s)
            convs[b] = _scale_in(convs[b], s, depthwise[b])
            largest = max(largest, float(np.abs(np.log(s)).max()))
        if largest < tolerance:
            break
    out = {i: ConvWeights(w.kernel.astype(np.float32), None if w.bias is None else w.bias.astype(np.float32),
                          None if w.bn is None else tuple(x.astype(np.float32) for x in w.bn))
           for i, w in convs.items()}  # fmt: skip
    return weights.with_convs(out), {"pairs": [f"conv_{a} -> conv_{b}" for a, b in pairs], "skipped": skipped, "iterations": done}


MOST_EXPANSION = 1e3  # a channel that is all but silent on the calibration images is enlarged at most this much


def _depthwise_readers(spec: Spec, pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Those of ``pairs`` whose reader is depthwise (equalizable pairs hold no other grouped reader)."""
    return [(a, b) for a, b in pairs if conv_params(spec.layers[b]).groups > 1]


def depthwise_reader_pairs(spec: Spec) -> list[tuple[int, int]]:
    """The equalizable pairs whose reader is depthwise: a scale on the tensor between them costs no int8 weight precision."""
    return _depthwise_readers(spec, equalizable_pairs(spec)[0])


def range_layers(spec: Spec, index: int) -> list[str]:
    """The Keras layers whose outputs int8 quantizes per tensor for convolution ``index``: before and after its activation."""
    from yolo3.names import bn_name, conv_name, layer_name

    p = conv_params(spec.layers[index])
    before = bn_name(index) if p.batch_normalize else conv_name(index)
    return [before] if p.activation == "linear" else [before, layer_name(p.activation, index)]


def expansion(ranges: list[tuple[np.ndarray, np.ndarray]], most: float = MOST_EXPANSION) -> np.ndarray:
    """Per channel, how much it can be enlarged with every one of ``ranges`` (its per-channel min and max) inside the tensor's own.

    A tensor's int8 range is its smallest min and largest max over all
    channels; channel ``i`` may grow by ``M / max_i`` on the positive side and
    ``m / min_i`` on the negative side, and by the least of these over the
    tensors it passes through (before and after the activation). At least 1, at
    most ``most``; a channel silent on both sides stays as it is.
    """
    grow = None
    for lo, hi in ranges:
        lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
        top, bottom = max(float(hi.max()), 0.0), min(float(lo.min()), 0.0)
        limit = np.full(hi.shape, np.inf)
        up = hi > top * 1e-12
        limit[up] = top / hi[up]
        down = lo < bottom * 1e-12
        limit[down] = np.minimum(limit[down], bottom / lo[down])
        grow = limit if grow is None else np.minimum(grow, limit)
    grow[~np.isfinite(grow)] = 1.0
    return np.clip(grow, 1.0, most)


def equalize_activations(spec: Spec, weights: DarknetWeights, ranges: dict[int, list[tuple[np.ndarray, np.ndarray]]]) -> tuple[DarknetWeights, dict]:
    """Activation equalisation of every conv -> depthwise pair (see the module docstring); new weights and what was done.

    ``ranges[a]``: per tensor of :func:`range_layers` ``(spec, a)``, the
    per-channel min and max measured on calibration images
    (:func:`measure_channel_ranges`). The float model's outputs do not change.
    """
    pairs, skipped = equalizable_pairs(spec)
    chosen = _depthwise_readers(spec, pairs)
    left = [f"conv_{a} -> conv_{b}: conv_{b} is not depthwise, its shared weights would pay for the scale" for a, b in pairs if (a, b) not in chosen]
    convs = dict(weights.convs)
    grown = []
    for a, b in chosen:
        t = expansion(ranges[a])
        convs[a] = _scale_out(convs[a], t.astype(np.float32))
        convs[b] = _scale_in(convs[b], (1.0 / t).astype(np.float32), True)
        grown.append(t)
    every = np.concatenate(grown) if grown else np.ones(1)
    return weights.with_convs(convs), {"pairs": [f"conv_{a} -> conv_{b}" for a, b in chosen], "skipped": skipped + left,
                                       "median_expansion": float(np.median(every)), "largest_expansion": float(every.max())}  # fmt: skip


def measure_channel_ranges(model, spec: Spec, indices: list[int], images: list[str], size: int) -> dict[int, list[tuple[np.ndarray, np.ndarray]]]:
    """Per convolution in ``indices``, each :func:`range_layers` tensor's per-channel min and max over ``images`` (letterboxed as for int8)."""
    from yolo3.kerasenv import keras
    from yolo3.preprocess import letterbox, load_image

    names = [(i, name) for i in indices for name in range_layers(spec, i)]
    probe = keras.Model(model.input, [model.get_layer(name).output for _, name in names])
    lows: list = [None] * len(names)
    highs: list = [None] * len(names)
    for path in images:
        x, _ = letterbox(load_image(path), size)
        outputs = probe(x[None].astype(np.float32), training=False)
        for k, y in enumerate(outputs if len(names) > 1 else [outputs]):
            flat = np.asarray(y).reshape(-1, y.shape[-1])
            lo, hi = flat.min(axis=0), flat.max(axis=0)
            lows[k] = lo if lows[k] is None else np.minimum(lows[k], lo)
            highs[k] = hi if highs[k] is None else np.maximum(highs[k], hi)
    found: dict[int, list] = {i: [] for i in indices}
    for k, (i, _) in enumerate(names):
        found[i].append((lows[k], highs[k]))
    return found
