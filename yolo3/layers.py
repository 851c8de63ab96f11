"""The Keras layers Darknet needs beyond the stock ones: a [route] channel group, Darknet's max pooling, mish.

Both have no weights, are registered under the ``yolo3`` package (so an ``.h5``
holding them loads wherever this package is imported) and lower to plain
TFLite builtins (``STRIDED_SLICE``; ``MIRROR_PAD`` + ``MAX_POOL_2D``) that the
int8 converter quantizes. Stock layers are used whenever they compute the same
thing (see :func:`yolo3.keras_model.apply_block`).
"""

from __future__ import annotations

from .kerasenv import keras, tf


@keras.utils.register_keras_serializable(package="yolo3")
class ChannelSlice(keras.layers.Layer):
    """Channels ``[start, stop)`` of the input: one ``group_id`` of a [route] with ``groups`` (YOLOv4-tiny's CSP split)."""

    def __init__(self, start: int, stop: int, **kwargs):
        super().__init__(**kwargs)
        self.start, self.stop = int(start), int(stop)

    def call(self, inputs):
        return inputs[..., self.start : self.stop]

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.stop - self.start)

    def get_config(self):
        return {**super().get_config(), "start": self.start, "stop": self.stop}


@keras.utils.register_keras_serializable(package="yolo3")
class ChannelPad(keras.layers.Layer):
    """``extra`` zero channels appended: a [shortcut] from a layer with fewer channels adds nothing to the others (AlexeyAB)."""

    def __init__(self, extra: int, **kwargs):
        super().__init__(**kwargs)
        self.extra = int(extra)

    def call(self, inputs):
        return tf.pad(inputs, [[0, 0], [0, 0], [0, 0], [0, self.extra]])

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] + self.extra)

    def get_config(self):
        return {**super().get_config(), "extra": self.extra}


@keras.utils.register_keras_serializable(package="yolo3")
class DarknetMaxPool(keras.layers.Layer):
    """Darknet's [maxpool]: ``padding // 2`` rows/columns before, the rest after, padded positions never win.

    TensorFlow's ``"same"`` padding puts the odd padding row after the input,
    Darknet before; they agree for stride 1 and for size 2 stride 2 (the
    builder uses the stock layer then), not for e.g. size 3 stride 2.

    The padding repeats the edge (``SYMMETRIC``) instead of holding -inf: with
    ``padding < size`` every window that reaches into the padding also holds
    the real values copied there, so the maximum is Darknet's, and the int8
    range of the padded tensor stays the input's.
    """

    def __init__(self, size: int, stride: int | tuple[int, int] | list[int], padding: int, **kwargs):
        super().__init__(**kwargs)
        self.size, self.padding = int(size), int(padding)
        self.stride = [int(s) for s in stride] if isinstance(stride, (tuple, list)) else int(stride)  # (y, x) or both

    def call(self, inputs):
        before, after = self.padding // 2, self.padding - self.padding // 2
        padded = tf.pad(inputs, [[0, 0], [before, after], [before, after], [0, 0]], mode="SYMMETRIC")
        return tf.nn.max_pool2d(padded, self.size, self.stride, "VALID")

    def get_config(self):
        return {**super().get_config(), "size": self.size, "stride": self.stride, "padding": self.padding}


@keras.utils.register_keras_serializable(package="yolo3")
class Mish(keras.layers.Layer):
    """Darknet's ``mish``, ``x * tanh(softplus(x))``, with softplus written as ``relu(x) + log(1 + exp(-|x|))``.

    Keras' own ``mish`` builds ``Softplus -> Tanh -> Mul``, which TensorFlow's
    oneDNN remapper fuses with the batch norm before it into a kernel it does
    not implement ("Fusion is not implemented: [FusedBatchNorm,Mish]") on
    CPU; this form computes the same values (and is stable for large |x|).
    """

    def call(self, inputs):
        softplus = tf.nn.relu(inputs) + tf.math.log(1.0 + tf.exp(-tf.abs(inputs)))
        return inputs * tf.tanh(softplus)


@keras.utils.register_keras_serializable(package="yolo3")
class HardSwish(keras.layers.Layer):
    """``h_swish`` of the MobileNetV3 YOLOs, ``x * relu6(x + 3) / 6`` (the multi-backbone suite's ``HardSwish``), in the form
    LiteRT's converter recognises as its own HARD_SWISH operator."""

    def call(self, inputs):
        return inputs * tf.nn.relu6(inputs + 3.0) * (1.0 / 6.0)


@keras.utils.register_keras_serializable(package="yolo3")
class HardSigmoid(keras.layers.Layer):
    """The gate of the suite's SE, ``relu6(x + 3) / 6`` (its ``HardSigmoid``; Keras' own hard_sigmoid has another slope)."""

    def call(self, inputs):
        return tf.nn.relu6(inputs + 3.0) * (1.0 / 6.0)


@keras.utils.register_keras_serializable(package="yolo3")
class SpaceToDepth(keras.layers.Layer):
    """AlexeyAB's [reorg3d]: ``space_to_depth`` by ``block`` (``depth_to_space`` when ``reverse``); see
    :func:`yolo3.spec.reorg_params` for why TensorFlow's channel order is Darknet's. LiteRT runs both in int8."""

    def __init__(self, block: int, reverse: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.block, self.reverse = int(block), bool(reverse)

    def call(self, inputs):
        if self.reverse:
            return tf.nn.depth_to_space(inputs, self.block)
        return tf.nn.space_to_depth(inputs, self.block)

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        b = self.block
        if self.reverse:
            return (n, None if h is None else h * b, None if w is None else w * b, c // (b * b))
        return (n, None if h is None else h // b, None if w is None else w // b, c * b * b)

    def get_config(self):
        return {**super().get_config(), "block": self.block, "reverse": self.reverse}


CUSTOM_LAYERS = (ChannelSlice, ChannelPad, DarknetMaxPool, SpaceToDepth, Mish, HardSwish, HardSigmoid)
