"""Quantization-aware training (QAT) with TFMOT, keeping what pruning and clustering made.

Post-training int8 quantization rounds weights and activations once, after
training; QAT trains with the rounding in the forward pass (fake quantization)
so that the network learns around it, and the converter then uses the ranges
the training learned. TFMOT's collaborative schemes
(``tfmot.experimental.combine``) also keep the structure compression left:

- ``pqat`` — ``Default8BitPrunePreserveQuantizeScheme``: zero weights stay zero;
- ``cqat`` / ``pcqat`` — ``Default8BitClusterPreserveQuantizeScheme``: every
  kernel stays on its cluster centroids (which train), and with
  ``preserve_sparsity`` the zero cluster stays zero;
- ``qat`` — ``Default8BitQuantizeScheme`` for a model with neither.

:func:`scheme_for` picks one from the record the ``.h5`` carries. TFMOT's
default 8-bit registry covers every layer these models use (Conv2D,
BatchNormalization, LeakyReLU, ZeroPadding2D, MaxPooling2D, nearest
UpSampling2D, Concatenate, Add). The converter folds BN into the convolution,
which scales each output channel by one factor, so sparsity and "at most k
distinct values per channel" survive into the int8 kernels.

Per-channel clusters: TFMOT reads them per channel only when every channel of
a kernel has the same number of distinct values (give or take one); otherwise
it takes the kernel's distinct values as one codebook and, above 1024, stops
preserving clusters with only a warning. :func:`check_clusters_preservable`
refuses such a model with a message instead.

Example::

    hook = QatWrapper(scheme_for(compression_info("clustered.h5"), model), best_from_epoch=2)
    train(config, RunOptions("clustered.h5", True, epochs=2, hooks=(hook,)))
    hook.qat_model.save_weights("qat-weights.h5")   # convert with export_tflite(..., qat=...)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from yolo3.errors import UserError
from yolo3.hooks import TrainingHook

SCHEMES = ("qat", "pqat", "cqat", "pcqat")


def make_scheme(name: str):
    """The TFMOT quantize scheme called ``name`` (one of :data:`SCHEMES`)."""
    import tensorflow_model_optimization as tfmot

    if name == "qat":
        return tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme()
    if name == "pqat":
        return tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
    if name in ("cqat", "pcqat"):
        return tfmot.experimental.combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=name == "pcqat")
    raise ValueError(f"unknown QAT scheme {name!r}")


def _conv_kernels(model, names: list[str]) -> dict[str, np.ndarray]:
    from yolo3.keras_model import conv_kernel

    return {n: conv_kernel(model.get_layer(n)) for n in names}


def check_clusters_preservable(kernels: dict[str, np.ndarray], per_channel: bool) -> None:
    """Refuse clusters TFMOT's CQAT would silently stop preserving (see the module docstring)."""
    for name, kernel in kernels.items():
        if per_channel:
            counts = [len(np.unique(kernel[..., o])) for o in range(kernel.shape[-1])]
            if max(counts) - min(counts) <= 1:
                continue
        if len(np.unique(kernel)) > 1024:
            raise UserError(
                f"{name}: {'its channels have unequal numbers of distinct values' if per_channel else 'over 1024 distinct values'}, "
                "which TFMOT's cluster-preserving QAT cannot keep; cluster per layer for --qat, or convert without --qat "
                "(post-training int8 keeps the clusters too)"
            )


def scheme_for(info: dict, model) -> str:
    """The scheme that keeps what the model's compression record says it has (clusters, zeros)."""
    if "clustering" in info:
        c = info["clustering"]
        kernels = _conv_kernels(model, c["layers"])
        check_clusters_preservable(kernels, c.get("per_channel", False))
        has_zeros = any(bool((k == 0).any()) for k in kernels.values())
        return "pcqat" if has_zeros else "cqat"
    if "sparsity" in info:
        return "pqat"
    return "qat"


def _quantize_configs():
    """Two QuantizeConfigs for what TFMOT's 8-bit registry does not know.

    Pass-through: layers that only move values (a channel slice, a max-pool),
    nothing to quantize, as TFMOT does for MaxPooling2D. Output: an
    ``Activation`` whose function the registry lacks (mish, swish), its output
    quantized as the converter will.
    """
    import tensorflow_model_optimization as tfmot

    class PassThroughQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
        def get_weights_and_quantizers(self, layer):
            return []

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            pass

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            return []

        def get_config(self):
            return {}

    class OutputQuantizeConfig(PassThroughQuantizeConfig):
        def get_output_quantizers(self, layer):
            return [tfmot.quantization.keras.quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False,
                                                                                narrow_range=False)]  # fmt: skip

    return PassThroughQuantizeConfig, OutputQuantizeConfig


UNKNOWN_TO_TFMOT = ("swish",)  # Activation functions TFMOT's 8-bit registry refuses


def learned_range_quantizer(range_scale: float):
    """TFMOT's activation quantizer with its range trained by the task loss instead of a moving average of min/max.

    ``fake_quant_with_min_max_vars`` has gradients for its min and max (the
    upstream gradient of the values clipped below / above them, as in PACT), so
    the training moves a range where clipping costs (or helps) the loss; the
    values inside it give it no gradient. The variables keep
    TFMOT's names (``output_min`` ...) and hold the range divided by
    ``range_scale``: Adam moves every variable by about the learning rate per
    step whatever its gradient, and QAT's rate (1e-5) would leave a range of a few
    units where it started; dividing makes the range's own step
    ``range_scale`` times larger. The range always holds 0, as TFLite requires.
    """
    import tensorflow_model_optimization as tfmot

    from yolo3.kerasenv import keras, tf

    base = tfmot.quantization.keras.quantizers.MovingAverageQuantizer

    class LearnedRangeQuantizer(base):
        scale = float(range_scale)

        def build(self, tensor_shape, name, layer):
            lo = layer.add_weight(name + "_min", initializer=keras.initializers.Constant(-6.0 / self.scale), trainable=True)
            hi = layer.add_weight(name + "_max", initializer=keras.initializers.Constant(6.0 / self.scale), trainable=True)
            return {"min_var": lo, "max_var": hi}

        def __call__(self, inputs, training, weights, **kwargs):
            lo = tf.minimum(weights["min_var"] * self.scale, 0.0)
            hi = tf.maximum(weights["max_var"] * self.scale, 0.0)
            return tf.quantization.fake_quant_with_min_max_vars(inputs, lo, hi, num_bits=self.num_bits, narrow_range=self.narrow_range)

    return LearnedRangeQuantizer


def _activation_quantizer(cls):
    """While active, TFMOT's schemes (and this module's configs) make their activation quantizers of ``cls``."""
    import contextlib

    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.quantization.keras import quantizers as internal

    @contextlib.contextmanager
    def swapped():
        public = tfmot.quantization.keras.quantizers
        old = internal.MovingAverageQuantizer
        internal.MovingAverageQuantizer = public.MovingAverageQuantizer = cls
        try:
            yield
        finally:
            internal.MovingAverageQuantizer = public.MovingAverageQuantizer = old

    return swapped()


def quantize_model(model, scheme: str, range_scale: float | None = None):
    """``model`` with fake quantization everywhere, per ``scheme``; the original model is not changed.

    ``range_scale``: the activation ranges are trained (:func:`learned_range_quantizer`), not averaged.

    The weightless layers of :mod:`yolo3.layers` (a [route] channel group,
    Darknet's max-pool padding) are annotated as pass-through: TFMOT's
    registry does not know them, and their outputs keep their input's range.
    Activations it does not know (mish, swish, h_swish, the SE's hard sigmoid)
    and the SE's scaling multiply get an output quantizer.
    """
    import tensorflow_model_optimization as tfmot

    from yolo3.kerasenv import keras
    from yolo3.layers import CUSTOM_LAYERS, HardSigmoid, HardSwish, Mish

    pass_through, output = _quantize_configs()
    q = tfmot.quantization.keras
    # layers that compute new values TFMOT's registry does not know: their outputs are quantized as the converter will
    computing = (Mish, HardSwish, HardSigmoid, keras.layers.Multiply)

    def unknown_activation(layer) -> bool:
        return (isinstance(layer, keras.layers.Activation) and keras.activations.serialize(layer.activation) in UNKNOWN_TO_TFMOT
                or isinstance(layer, keras.layers.Multiply))  # fmt: skip

    def annotate(layer):
        layer = layer.__class__.from_config(layer.get_config())
        if isinstance(layer, computing):
            return q.quantize_annotate_layer(layer, output())
        if isinstance(layer, CUSTOM_LAYERS):
            return q.quantize_annotate_layer(layer, pass_through())
        if unknown_activation(layer):
            return q.quantize_annotate_layer(layer, output())
        return layer

    if any(isinstance(layer, CUSTOM_LAYERS) or unknown_activation(layer) for layer in model.layers):
        clone = keras.models.clone_model(model, clone_function=annotate)
        clone.set_weights(model.get_weights())
        annotated = q.quantize_annotate_model(clone)
    else:
        annotated = q.quantize_annotate_model(model)
    scope = {cls.__name__: cls for cls in (*CUSTOM_LAYERS, pass_through, output)}
    if range_scale is None:
        with q.quantize_scope(scope):
            return q.quantize_apply(annotated, make_scheme(scheme))
    learned = learned_range_quantizer(range_scale)
    with _activation_quantizer(learned), q.quantize_scope({**scope, learned.__name__: learned}):
        quantized = q.quantize_apply(annotated, make_scheme(scheme))
    quantized.range_scale = float(range_scale)  # what calibrate_ranges divides the ranges it sets by
    return quantized


def copy_float_weights(qat_model, plain_model) -> None:
    """Copy the float weights of ``qat_model`` into ``plain_model``, matched by variable name.

    A wrapped layer keeps its own variables under their names (``conv_3/kernel``,
    ``bn_3/gamma``) beside the quantizer's (``quant_conv_3/kernel_min`` ...); the
    cluster-preserving quantizer writes the clustered kernel back into that
    variable at every training step, so it holds the weights the QAT model
    computes with (before fake quantization).
    """
    by_name = {w.name: w for w in qat_model.weights}
    values = []
    for w in plain_model.weights:
        if w.name not in by_name:
            raise ValueError(f"the QAT model has no variable {w.name}")
        values.append(by_name[w.name].numpy())
    plain_model.set_weights(values)


RANGE_LEAVES = ("output_min", "output_max", "post_activation_min", "post_activation_max")
START_RANGES = ("minmax", "mse", "mean")  # where calibrate_ranges starts the activation ranges


def calibrate_ranges(qat_model, float_model, images: np.ndarray, batch: int = 8, ranges: str = "minmax") -> int:
    """Start every activation range of ``qat_model`` at what ``float_model`` outputs on ``images``; returns how many.

    ``ranges``: "minmax" starts each at the outputs' min/max; "mse" at the
    range with the smallest int8 error on those outputs
    (:func:`compression.quantize.ranges.mse_range`); "mean" at the mean of
    each image's min and max — the two refits of ``convert --repair ranges``.

    TFMOT starts each activation range at [-6, 6] and moves it by an
    exponential average with decay 0.999 per training step, so over the few
    hundred steps of a short QAT run the ranges hardly move: head outputs wider
    than 6 are clipped and narrow activations get coarse steps (measured on the
    raccoon YOLOv3-tiny: 2 epochs of QAT from [-6, 6] gave int8 mAP@0.5 0.936
    against 0.985 for post-training int8). Starting from observed ranges, as
    post-training calibration does, leaves QAT to refine them. The input range
    is [0, 1] (the letterboxed image).
    """
    from yolo3.kerasenv import keras

    targets: dict[str, list] = {}
    inputs = []
    for w in qat_model.weights:
        owner, _, leaf = w.name.rpartition("/")
        leaf = leaf.split(":")[0]
        if owner.startswith("quantize_layer") and leaf.endswith(("_min", "_max")):
            inputs.append((leaf.endswith("_min"), w))
        elif owner.startswith("quant_") and leaf in RANGE_LEAVES:
            targets.setdefault(owner[len("quant_"):], []).append((leaf.endswith("_min"), w))
    names = [n for n in targets if n in {layer.name for layer in float_model.layers}]
    probe = keras.Model(float_model.inputs, [float_model.get_layer(n).output for n in names])
    from .ranges import SAMPLES_PER_TENSOR, mse_range

    if ranges not in START_RANGES:
        raise ValueError(f"unknown starting ranges {ranges!r} (one of {', '.join(START_RANGES)})")
    method = ranges
    lo = np.full(len(names), np.inf)
    hi = np.full(len(names), -np.inf)
    rng = np.random.default_rng(0)
    per_batch = max(1, SAMPLES_PER_TENSOR * batch // max(len(images), 1))
    samples: list[list[np.ndarray]] = [[] for _ in names]
    extremes: list[list[np.ndarray]] = [[] for _ in names]  # per image: (min, max)
    for start in range(0, len(images), batch):
        outs = probe(images[start : start + batch], training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for k, out in enumerate(outs):
            per_image = out.numpy().reshape(out.shape[0], -1)
            out = per_image.ravel()
            lo[k] = min(lo[k], float(out.min()))
            hi[k] = max(hi[k], float(out.max()))
            if method == "mse":
                samples[k].append(out if out.size <= per_batch else rng.choice(out, per_batch, replace=False))
            elif method == "mean":
                extremes[k].append(np.stack([per_image.min(axis=1), per_image.max(axis=1)], axis=1))
    for k in range(len(names)):
        if method == "mse":
            lo[k], hi[k] = mse_range(np.concatenate(samples[k]), lo[k], hi[k])
        elif method == "mean":
            lo[k], hi[k] = np.concatenate(extremes[k]).mean(axis=0)
    unit = getattr(qat_model, "range_scale", 1.0)  # learned ranges are stored divided by it (learned_range_quantizer)
    for k, name in enumerate(names):
        for is_min, var in targets[name]:
            var.assign(np.float32((min(lo[k], 0.0) if is_min else max(hi[k], 0.0)) / unit))
    for is_min, var in inputs:
        var.assign(np.float32(0.0 if is_min else 1.0))
    return len(names) + len(inputs)


class QatWrapper(TrainingHook):
    """Trainer hook: wrap the model for QAT; ``unwrap`` gives a float model with the trained weights.

    ``qat_model`` is the trained QAT model (its fake-quantization ranges are
    what the int8 conversion needs); ``compression`` keeps the starting
    model's record so that a later fine-tune still keeps clusters and zeros.
    """

    def __init__(self, scheme: str, compression: dict | None = None, calibration: np.ndarray | None = None, best_from_epoch: int = 1,
                 start_ranges: str = "minmax", range_scale: float | None = None):  # fmt: skip
        if scheme not in SCHEMES:
            raise ValueError(f"unknown QAT scheme {scheme!r}")
        self.scheme = scheme
        self.range_scale = range_scale  # the activation ranges are trained (learned_range_quantizer), not averaged
        self.calibration = calibration  # preprocessed images (N, H, W, 3) that set the starting activation ranges
        self.start_ranges = start_ranges  # start them at min/max, or refitted ("mse", "mean"): see calibrate_ranges
        self.compression = dict(compression or {})
        self.best_from_epoch = best_from_epoch  # only the last epoch's QAT model is converted
        self.plain = None
        self.qat_model = None

    def wrap(self, model):
        self.plain = model
        self.qat_model = quantize_model(model, self.scheme, self.range_scale)
        if self.calibration is not None:
            calibrate_ranges(self.qat_model, model, self.calibration, ranges=self.start_ranges)
        return self.qat_model

    def unwrap(self, model):
        copy_float_weights(model, self.plain)
        return self.plain



def qat_finetune(
    config, start_h5: Path, start_model, run_dir: Path, epochs: int | None = None, progress: bool = True, learning_rate: float | None = None,
    calibration: list[str] | None = None, start_ranges: str = "minmax",
) -> dict:
    """Quantization-aware fine-tuning of ``start_h5`` in ``run_dir``; writes ``run_dir/qat-weights.h5``.

    ``start_model`` is the same model loaded (its kernels decide the scheme);
    ``calibration`` images set the starting activation ranges (:func:`calibrate_ranges`;
    at their min/max, or with ``start_ranges`` "mse" / "mean" refitted as ``convert --repair ranges`` refits them).
    With ``quantization.qat_range_learning_rate`` above 0 the ranges are then
    trained by the task loss (:func:`learned_range_quantizer`) instead of
    following a moving average. The run is an ordinary training run
    (checkpoints, resume, history); only its last epoch counts, since the QAT
    model converted is the final one. ``result["conversion"]`` is what
    :func:`~compression.quantize.tflite_export.export_tflite` takes as ``qat``.
    """
    from yolo3.fileio import atomic_write
    from yolo3.models import compression_info
    from yolo3.training import RunOptions, train

    q = config.quantization
    epochs = epochs or q.qat_epochs
    lr = learning_rate or q.qat_learning_rate
    info = compression_info(start_h5)
    scheme = scheme_for(info, start_model)
    images = None
    if calibration:
        from yolo3.preprocess import letterboxed_images

        size = config.model.input_size
        images = letterboxed_images(calibration, size)
    range_scale = q.qat_range_learning_rate / lr if q.qat_range_learning_rate > 0 else None
    wrapper = QatWrapper(scheme, info, images, best_from_epoch=epochs, start_ranges=start_ranges, range_scale=range_scale)
    options = RunOptions(str(start_h5), True, epochs, str(run_dir), progress, learning_rate=lr, freeze_backbone_epochs=0,
                         hooks=(wrapper,))  # fmt: skip
    result = train(config, options)
    weights = Path(run_dir) / "qat-weights.h5"
    atomic_write(weights, lambda tmp: wrapper.qat_model.save_weights(str(tmp)))
    return {
        "scheme": scheme, "epochs": epochs, "learning_rate": lr, "mAP50": result["best_mAP50"],
        "run": str(run_dir), "weights": str(weights), "seconds": result["seconds"], "start_ranges": start_ranges,
        "ranges": "learned" if range_scale else "moving average",
        "conversion": {"scheme": scheme, "weights": str(weights), **({"range_scale": range_scale} if range_scale else {})},
    }  # fmt: skip
