"""AdaRound (Nagel et al., "Up or Down? Adaptive Rounding for Post-Training Quantization", ICML 2020) for the TFLite converter.

Rounding each int8 weight to its nearest grid value is not what keeps a
layer's output closest to float: the errors of a filter's weights add up on
the same inputs. AdaRound learns, layer by layer, whether each weight goes up
or down, minimising the layer's output error on calibration data.

What int8 sees is decided by the converter, so the rounding is chosen on its
grid and written back where it will find it:

- the converter folds batch norm into the kernel (``w * gamma / sqrt(var +
  eps)``) and quantizes each output channel symmetrically with scale
  ``max|w| / 127`` (per-channel, narrow range); AdaRound works on those folded
  weights and that scale;
- the chosen integers ``q`` are written back as ``q * scale / bn_factor``, so
  the converter's fold gives ``q * scale`` again within a few float32 ulps and
  its rounding lands on ``q`` exactly; the element with the largest magnitude
  keeps ``±127``, so the converter's scale stays the one AdaRound used (tested:
  the int8 kernels in the ``.tflite`` are the chosen ones).

Per layer, with ``x`` the layer's input patches from the float model (the
"local" form of AdaRound: inputs from float, not from the quantized layers
before it), the loss is the squared pre-activation output error
``|x (W~ - W)|^2`` summed over output channels and averaged over patches, plus
``reg * mean(1 - |2 h(V) - 1|^beta)``, ``beta`` annealed from 20 to 2 after a
warm start of 20 % of the steps without it, ``h`` the rectified sigmoid (zeta
1.1, gamma -0.1) — the paper's and AIMET's schedule. The reconstruction term is
divided by its value at round-to-nearest, so that ``reg`` means the same in
every layer whatever its activations' scale; on the official Yolo-Fastest's
layers (500 steps) ``reg`` 1 to 10 gave the lowest output error, 0.01 (AIMET's
value for its unnormalised sum) much less gain. A layer whose learned rounding
is worse than round-to-nearest on its patches keeps round-to-nearest. Plain convolutions use the Gram matrix
``x^T x`` when it is smaller than a batch of patches; depthwise ones a Gram
matrix per channel. Grouped convolutions (neither plain nor depthwise) are left
to the converter's rounding.

Example::

    weights2, report = adaround(model, spec, weights, calibration_batch)   # report: layers, loss before/after, seconds
"""

from __future__ import annotations

import time

import numpy as np

from yolo3.darknet import ConvWeights, DarknetWeights
from yolo3.keras_model import BN_EPSILON
from yolo3.spec import Spec, analyse, conv_params

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (the paper's values)
QMAX = 127  # TFLite's int8 weights: symmetric, narrow range
ITERATIONS = 1000
REG = 1.0  # the rounding term's weight, the reconstruction term being 1 at round-to-nearest (see the module docstring)
BETA = (20.0, 2.0)
WARM_START = 0.2
LEARNING_RATE = 1e-2
PATCHES = 4096  # input patches kept per layer over all calibration images
BATCH = 512  # patches per step when the Gram matrix would be larger


def fold(w: ConvWeights) -> tuple[np.ndarray, np.ndarray]:
    """(the BN-folded kernel the converter quantizes, the per-output-channel factor batch norm multiplied it by)."""
    if w.bn is None:
        factor = np.ones(w.filters, np.float64)
    else:
        gamma, _, _, var = (np.asarray(x, np.float64) for x in w.bn)
        factor = gamma / np.sqrt(var + BN_EPSILON)
    return np.asarray(w.kernel, np.float64) * factor, factor


def channel_scales(folded: np.ndarray) -> np.ndarray:
    """The converter's per-output-channel weight scale: ``max|w| / 127`` (1 for an all-zero channel)."""
    m = np.abs(folded).reshape(-1, folded.shape[-1]).max(axis=0)
    return np.where(m > 0, m / QMAX, 1.0)


def nearest(folded: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Round-to-nearest int8 values (what the converter would choose)."""
    return np.clip(np.round(folded / scale), -QMAX, QMAX)


def write_back(w: ConvWeights, q: np.ndarray, scale: np.ndarray, factor: np.ndarray) -> ConvWeights:
    """The kernel whose batch-norm fold is ``q * scale``; channels batch norm zeroes keep their kernel."""
    target = q * scale
    safe = np.abs(factor) > 0
    kernel = np.where(safe, target / np.where(safe, factor, 1.0), np.asarray(w.kernel, np.float64))
    return ConvWeights(kernel.astype(np.float32), w.bias, w.bn)


def _h(v):
    from yolo3.kerasenv import tf

    return tf.clip_by_value(tf.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _initial_v(rest: np.ndarray) -> np.ndarray:
    """V with ``h(V)`` equal to the fractional part: the optimisation starts from the float weights."""
    p = np.clip((rest - GAMMA) / (ZETA - GAMMA), 1e-4, 1 - 1e-4)
    return -np.log(1.0 / p - 1.0)


def optimise_rounding(folded: np.ndarray, scale: np.ndarray, patches: np.ndarray, depthwise: bool, iterations: int = ITERATIONS,
                      seed: int = 0) -> tuple[np.ndarray, dict]:  # fmt: skip
    """The int8 values AdaRound chooses for one layer; and the output error before and after (relative to the output's power).

    ``folded``: ``(K, C)`` (plain, ``K = kh * kw * cin``) or ``(K, C)`` with
    ``K = kh * kw`` (depthwise); ``patches``: ``(N, K)`` or ``(N, K, C)``.
    """
    from yolo3.kerasenv import keras, tf

    k, c = folded.shape
    base = np.floor(folded / scale)
    top = np.abs(folded) >= np.abs(folded).max(axis=0, keepdims=True) * (1 - 1e-12)  # keeps ±127: the scale stays the converter's
    x = patches.astype(np.float64)
    if depthwise:
        gram = np.einsum("nkc,nlc->ckl", x, x) / len(x)  # (C, K, K)
    else:
        gram = x.T @ x / len(x) if k <= BATCH else None

    def error(q: np.ndarray) -> float:
        d = q * scale - folded
        if depthwise:
            return float(np.einsum("kc,ckl,lc->", d, gram, d))
        return float(np.einsum("kc,kl,lc->", d, gram, d)) if gram is not None else float(np.mean(np.sum((x @ d) ** 2, axis=1)))

    power = max(error(np.zeros_like(folded)), 1e-30)
    q_near = nearest(folded, scale)
    before = error(q_near) / power
    reference = max(error(q_near), 1e-30)  # the reconstruction term is 1 at round-to-nearest: REG means the same in every layer
    v = tf.Variable(_initial_v(folded / scale - base).astype(np.float32))
    base_t, scale_t, folded_t = (tf.constant(a, tf.float32) for a in (base, scale[None, :], folded))
    free = tf.constant(~top, tf.float32)
    near_t = tf.constant(q_near, tf.float32)
    gram_t = tf.constant(gram, tf.float32) if gram is not None else None
    x_t = tf.constant(x, tf.float32) if gram is None else None
    rng = np.random.default_rng(seed)
    opt = keras.optimizers.Adam(LEARNING_RATE)
    warm = int(WARM_START * iterations)

    @tf.function
    def step(beta, reg, rows):
        with tf.GradientTape() as tape:
            q = free * tf.clip_by_value(base_t + _h(v), -QMAX, QMAX) + (1 - free) * near_t
            d = q * scale_t - folded_t
            if depthwise:
                rec = tf.einsum("kc,ckl,lc->", d, gram_t, d)
            elif gram_t is not None:
                rec = tf.einsum("kc,kl,lc->", d, gram_t, d)
            else:
                rec = tf.reduce_mean(tf.reduce_sum(tf.square(tf.gather(x_t, rows) @ d), axis=1))
            round_loss = tf.reduce_sum(free * (1 - tf.pow(tf.abs(2 * _h(v) - 1), beta)))
            loss = rec / reference + reg * round_loss / float(k * c)
        opt.apply_gradients([(tape.gradient(loss, v), v)])

    for t in range(iterations):
        annealed = BETA[1] + (BETA[0] - BETA[1]) * (1 - max(0.0, (t - warm) / max(iterations - warm, 1)))
        rows = rng.integers(0, len(x), BATCH) if gram is None else np.zeros(1, np.int64)
        step(tf.constant(annealed, tf.float32), tf.constant(0.0 if t < warm else REG, tf.float32), tf.constant(rows))
    chosen = np.where(top, q_near, np.clip(base + (v.numpy() >= 0), -QMAX, QMAX))  # h(V) >= 0.5 <=> V >= 0
    after = error(chosen) / power
    if after > before:  # never worse than the converter's own rounding on these patches
        chosen, after = q_near, before
    return chosen, {"error_nearest": before, "error_adaround": after, "changed": float(np.mean(chosen != q_near))}


def layer_patches(model, layers: dict[int, bool], batches: list[np.ndarray], rng: np.random.Generator, batch: int = 8) -> dict[int, np.ndarray]:
    """For each convolution ``index -> depthwise``: ``PATCHES`` input patches (as its kernel reads them) over the calibration images.

    One graph-mode pass of the float model per ``batch`` images gives every
    layer's input at once; each layer keeps an equal share of random patch
    positions from every image. Plain layers: ``(N, kh * kw * cin)``;
    depthwise ones: ``(N, kh * kw, C)``.
    """
    from yolo3.kerasenv import keras, tf
    from yolo3.names import conv_name

    convs = {i: model.get_layer(conv_name(i)) for i in layers}
    feed = keras.Model(model.inputs, [c.input for c in convs.values()])
    run = tf.function(lambda x: feed(x, training=False))
    per_image = max(1, PATCHES // max(len(batches), 1))
    kept: dict[int, list[np.ndarray]] = {i: [] for i in convs}
    for start in range(0, len(batches), batch):
        x = np.concatenate(batches[start : start + batch])
        outs = run(tf.constant(x))
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for (i, layer), out in zip(convs.items(), outs):
            kh, kw = layer.kernel_size
            sh, sw = layer.strides
            p = tf.image.extract_patches(out, [1, kh, kw, 1], [1, sh, sw, 1], [1, 1, 1, 1], layer.padding.upper()).numpy()
            p = p.reshape(len(x), -1, p.shape[-1])
            take = min(per_image, p.shape[1])
            for image in p:
                kept[i].append(image[rng.choice(len(image), take, replace=False)])
    out = {}
    for i, layer in convs.items():
        patches = np.concatenate(kept[i]).astype(np.float32)
        kh, kw = layer.kernel_size
        out[i] = patches.reshape(len(patches), kh * kw, -1) if layers[i] else patches  # depthwise: (row, col, channel) -> (N, kh*kw, C)
    return out


def adaround(model, spec: Spec, weights: DarknetWeights, batches: list[np.ndarray], iterations: int = ITERATIONS, log=None,
             seed: int = 0) -> tuple[DarknetWeights, dict]:  # fmt: skip
    """Every plain and depthwise convolution's int8 rounding chosen by AdaRound (see the module docstring).

    ``model``: the Keras model of ``spec`` with ``weights`` (its inputs are
    sampled for each layer); ``batches``: calibration images as the converter
    sees them, each ``(1, size, size, 3)``.
    """
    infos = analyse(spec)
    rng = np.random.default_rng(seed)
    convs, layers, t0 = dict(weights.convs), [], time.perf_counter()
    rounded: dict[int, bool] = {}  # index -> depthwise
    for i in spec.conv_indices():
        p = conv_params(spec.layers[i])
        depthwise = p.groups > 1 and p.groups == infos[i].in_shape[2] == p.filters
        if p.groups > 1 and not depthwise:
            layers.append({"layer": f"conv_{i}", "skipped": "grouped convolution"})
        else:
            rounded[i] = depthwise
    patches = layer_patches(model, rounded, batches, rng)
    for i, depthwise in rounded.items():
        p = conv_params(spec.layers[i])
        w = convs[i]
        folded, factor = fold(w)
        scale = channel_scales(folded)
        flat = folded.reshape(-1, p.filters)  # (kh*kw*cin, C); depthwise: (kh*kw, C)
        q, info = optimise_rounding(flat, scale, patches.pop(i), depthwise, iterations, seed + i)
        convs[i] = write_back(w, q.reshape(folded.shape), scale, factor)
        layers.append({"layer": f"conv_{i}", **info})
        if log:
            log(f"   AdaRound conv_{i}: output error {info['error_nearest']:.3g} -> {info['error_adaround']:.3g} (relative), "
                f"{info['changed']:.1%} of the weights rounded the other way")  # fmt: skip
    layers.sort(key=lambda r: int(r["layer"].removeprefix("conv_")))
    done = [r for r in layers if "skipped" not in r]
    return weights.with_convs(convs), {"layers": layers, "iterations": iterations, "images": len(batches),
                                       "improved": sum(r["error_adaround"] < r["error_nearest"] for r in done),
                                       "seconds": time.perf_counter() - t0}  # fmt: skip
