"""Build a Keras (tf_keras) model from a Spec, and move Darknet weights in and out of it.

Stock layers wherever they compute what Darknet does (Conv2D, DepthwiseConv2D
for a depthwise convolution, BatchNormalization, LeakyReLU / ReLU /
Activation, Dropout, ZeroPadding2D, MaxPooling2D, UpSampling2D, Concatenate,
Add), and those of :mod:`yolo3.layers` where none does (a [route] channel
group; a [maxpool] whose padding TensorFlow places differently; mish), named after
the Spec index (``conv_12``, ``bn_12``, ``leaky_12``, ``route_20`` ...), so
layers can be found again after any edit.

Depthwise: Darknet's ``groups = input channels`` convolution is built as
``DepthwiseConv2D`` (depth multiplier ``filters / groups``), which the int8
converter turns into ``DEPTHWISE_CONV_2D``; a grouped ``Conv2D`` would become a
grouped ``CONV_2D`` that LiteRT runs far slower or not at all. Other group
counts stay a grouped ``Conv2D``. Kernels move between the layouts in
:func:`darknet_kernel` / :func:`keras_kernel`.

The outputs are the raw head tensors, one per [yolo] layer, shape
``(batch, h, w, anchors * (5 + classes))``: decoding stays outside the model
(see :mod:`yolo3.postprocess`), which is what int8 export needs.

Batch norm: Darknet computes ``(x - mean) / (sqrt(var) + 1e-6)``; Keras and
OpenCV DNN compute ``(x - mean) / sqrt(var + eps)``. We keep Darknet's
variance unchanged (so ``.weights`` round-trip byte for byte) and use
``eps = 1e-6`` (:data:`BN_EPSILON`), which is what OpenCV's Darknet importer
uses. The relative difference to Darknet is below ``1e-6 / (2 sqrt(var))`` of
the normalised value, e.g. 5e-5 for var = 1e-4.

Example::

    from yolo3.zoo import build_spec
    from yolo3.keras_model import build_model
    model = build_model(build_spec("yolov3-tiny", classes=3), size=320)
    outputs = model.predict(images)        # two arrays, (n, 10, 10, 24) and (n, 20, 20, 24)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .darknet import ConvWeights, DarknetWeights, Header
from .errors import UserError
from .kerasenv import keras
from .layers import ChannelPad, ChannelSlice, DarknetMaxPool, HardSigmoid, HardSwish, Mish, SpaceToDepth
from .names import bn_name, conv_name, layer_name
from .spec import (
    Spec,
    conv_params,
    dropout_probability,
    explicit_padding,
    maxpool_params,
    reorg_params,
    route_group,
    route_inputs,
    scale_channels_input,
    se_params,
    shortcut_activation,
    shortcut_input,
)

BN_EPSILON = 1e-6
LEAKY_SLOPE = 0.1


def build_model(
    spec: Spec, size: int | tuple[int, int] | None = None, name: str = "yolov3", sync_bn: bool = False
) -> keras.Model:
    """Build the Keras model of ``spec``.

    ``size`` is the input size (an int for square, or (height, width)); ``None``
    uses the Spec's [net] size. Pass ``size=0`` for a model that accepts any
    size divisible by 32 (needed for multi-scale training). ``sync_bn``
    synchronises batch statistics across the replicas of a distribution
    strategy, so several devices train as one device with the whole batch.
    """
    layers = keras.layers
    if size is None:
        hw = (spec.height, spec.width)
    elif size == 0:
        hw = (None, None)
    elif isinstance(size, int):
        hw = (size, size)
    else:
        hw = tuple(size)
    for v in hw:
        if v is not None and (v <= 0 or v % 32):
            raise UserError(f"the input size must be a positive multiple of 32, got {v}", spec.source)
    inp = layers.Input(shape=(hw[0], hw[1], spec.channels), name="image")
    outs: list = []
    x = inp
    for i in range(len(spec.layers)):
        x = apply_block(spec, i, x, outs, sync_bn)
        outs.append(x)
    heads = [outs[i - 1] for i in spec.yolo_indices()]
    if not heads:
        raise UserError("the network has no [yolo] layer", spec.source)
    return keras.Model(inp, heads, name=name)


def apply_block(spec: Spec, i: int, x, outs: Sequence | Mapping, sync_bn: bool = False):
    """The Keras layers of block ``i`` applied to ``x`` (the previous layer's output); ``outs[j]`` is layer j's output.

    Shared by :func:`build_model` and by the latency model, which times one
    block at a time with exactly the layers the whole model uses.
    """
    layers = keras.layers
    block = spec.layers[i]
    if block.type == "convolutional":
        p = conv_params(block)
        if explicit_padding(p):
            x = layers.ZeroPadding2D(p.padding, name=layer_name("pad", i))(x)
            mode = "valid"
        else:
            mode = "same" if p.padding else "valid"
        cin = int(x.shape[-1])
        if is_depthwise(p.groups, cin):
            x = layers.DepthwiseConv2D(p.size, strides=p.strides, padding=mode, depth_multiplier=p.filters // cin,
                                       use_bias=not p.batch_normalize, name=conv_name(i))(x)  # fmt: skip
        else:
            x = layers.Conv2D(p.filters, p.size, strides=p.strides, padding=mode, groups=p.groups,
                              use_bias=not p.batch_normalize, name=conv_name(i))(x)  # fmt: skip
        if p.batch_normalize:
            x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, synchronized=sync_bn, name=bn_name(i))(x)
        return apply_activation(x, p.activation, i)
    if block.type == "maxpool":
        size_, strides, padding = maxpool_params(block)
        if padding == size_ - 1 and all(s == 1 or size_ == s == 2 for s in strides):  # per axis, TensorFlow's "same" is Darknet's
            return layers.MaxPooling2D(size_, strides, padding="same", name=layer_name("maxpool", i))(x)
        if padding == 0:
            return layers.MaxPooling2D(size_, strides, padding="valid", name=layer_name("maxpool", i))(x)
        return DarknetMaxPool(size_, strides, padding, name=layer_name("maxpool", i))(x)
    if block.type == "reorg3d":
        stride, reverse = reorg_params(block)
        return SpaceToDepth(stride, reverse, name=layer_name("reorg", i))(x)
    if block.type == "upsample":
        return layers.UpSampling2D(block.get_int("stride", 2), interpolation="nearest", name=layer_name("upsample", i))(x)
    if block.type == "dropout":
        return layers.Dropout(dropout_probability(block), name=layer_name("dropout", i))(x)
    if block.type == "route":
        groups, group_id = route_group(block)
        sources = []
        for k, j in enumerate(route_inputs(spec, i)):
            src = outs[j]
            if groups > 1:
                part = int(src.shape[-1]) // groups
                src = ChannelSlice(part * group_id, part * (group_id + 1), name=layer_name("group", f"{i}_{k}"))(src)
            sources.append(src)
        return sources[0] if len(sources) == 1 else layers.Concatenate(axis=-1, name=layer_name("route", i))(sources)
    if block.type == "shortcut":
        other = outs[shortcut_input(spec, i)]
        c, c_other = int(x.shape[-1]), int(other.shape[-1])
        if c_other > c:  # AlexeyAB's [shortcut] between different widths: the output keeps the previous layer's channels
            other = ChannelSlice(0, c, name=layer_name("group", f"{i}_0"))(other)
        elif c_other < c:
            other = ChannelPad(c - c_other, name=layer_name("pad", f"{i}_0"))(other)
        x = layers.Add(name=layer_name("shortcut", i))([x, other])
        return apply_activation(x, shortcut_activation(block), i)
    if block.type == "se":  # the suite's SE: pool, FC (ReLU), FC, hard sigmoid, scale; no biases
        channels, hidden = se_params(block, int(x.shape[-1]))
        # the fully connected layers as 1x1 convolutions on the pooled 1x1 map: plain CONV_2D in LiteRT (a Dense on a 4-D
        # tensor converts with a dynamic reshape around it)
        s = layers.GlobalAveragePooling2D(keepdims=True, name=layer_name("se_pool", i))(x)
        s = layers.Conv2D(hidden, 1, use_bias=False, activation="relu", name=layer_name("se_fc1", i))(s)
        s = layers.Conv2D(channels, 1, use_bias=False, name=layer_name("se_fc2", i))(s)
        s = HardSigmoid(name=layer_name("h_sigmoid", i))(s)
        return layers.Multiply(name=layer_name("se", i))([x, s])
    if block.type == "avgpool":  # global: one value per channel, kept as a 1x1 map for the 1x1 convolutions that follow
        return layers.GlobalAveragePooling2D(keepdims=True, name=layer_name("avgpool", i))(x)
    if block.type == "scale_channels":
        return layers.Multiply(name=layer_name("scale_channels", i))([outs[scale_channels_input(spec, i)], x])
    if block.type == "yolo":
        return x  # decoding happens outside the model
    raise spec.error(i, f"unsupported layer type [{block.type}]")  # pragma: no cover - the Spec parser rejects other types


def is_depthwise(groups: int, in_channels: int) -> bool:
    """Darknet ``groups`` equal to the input channels (above 1): one filter group per channel, a ``DepthwiseConv2D``."""
    return groups > 1 and groups == in_channels


def apply_activation(x, activation: str, i: int):
    """Darknet's ``activation=`` as a stock Keras layer named ``{activation}_{i}`` (none for linear)."""
    layers = keras.layers
    name = layer_name(activation, i)
    if activation == "linear":
        return x
    if activation == "leaky":
        return layers.LeakyReLU(alpha=LEAKY_SLOPE, name=name)(x)
    if activation == "relu":
        return layers.ReLU(name=name)(x)
    if activation == "relu6":
        return layers.ReLU(max_value=6.0, name=name)(x)
    if activation == "mish":
        return Mish(name=name)(x)
    if activation == "h_swish":
        return HardSwish(name=name)(x)
    if activation == "swish":
        return layers.Activation(activation, name=name)(x)
    if activation == "logistic":
        return layers.Activation("sigmoid", name=name)(x)
    raise ValueError(f"activation={activation} is not supported")  # pragma: no cover - conv_params checks


def keras_kernel(layer, kernel):
    """A Darknet-layout kernel ``(kh, kw, in/groups, out)`` in the layout of ``layer`` (depthwise: ``(kh, kw, in, multiplier)``)."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw, _, out = kernel.shape
        cin = int(layer.depthwise_kernel.shape[2])
        return kernel.reshape(kh, kw, cin, out // cin)
    return kernel


def darknet_kernel(layer, kernel):
    """The inverse of :func:`keras_kernel`: a layer's kernel as ``(kh, kw, in/groups, out)``."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw, cin, mult = kernel.shape
        return kernel.reshape(kh, kw, 1, cin * mult)
    return kernel


def conv_kernel(layer):
    """A convolution layer's kernel as numpy in Darknet's layout ``(kh, kw, in/groups, out)``: the last axis is always the filter."""
    return darknet_kernel(layer, kernel_variable(layer).numpy())


def set_conv_kernel(layer, kernel) -> None:
    """Set a convolution layer's kernel from Darknet's layout (see :func:`conv_kernel`), keeping its bias."""
    kernel_variable(layer).assign(keras_kernel(layer, kernel))


def kernel_variable(layer):
    """The kernel variable of a convolution layer, plain or depthwise."""
    return layer.depthwise_kernel if isinstance(layer, keras.layers.DepthwiseConv2D) else layer.kernel


def set_darknet_weights(model: keras.Model, spec: Spec, weights: DarknetWeights) -> None:
    """Copy Darknet weights into the model built from ``spec``."""
    for i in spec.conv_indices():
        cw = weights.convs.get(i)
        if cw is None:
            raise UserError(f"no weights for convolution {i}", spec.source)
        conv = model.get_layer(conv_name(i))
        expected = tuple(darknet_kernel(conv, kernel_variable(conv).numpy()).shape)
        if tuple(cw.kernel.shape) != expected:
            raise UserError(f"convolution {i}: weights {cw.kernel.shape} do not fit the model's {expected}", spec.source)
        kernel = keras_kernel(conv, cw.kernel)
        if cw.bn is not None:
            conv.set_weights([kernel])
            model.get_layer(bn_name(i)).set_weights(list(cw.bn))
        else:
            conv.set_weights([kernel, cw.bias])
    for i, (fc1, fc2) in weights.se.items():  # PyTorch Linear weights (out, in); the 1x1 kernels are (1, 1, in, out)
        model.get_layer(layer_name("se_fc1", i)).set_weights([np.ascontiguousarray(fc1.T)[None, None]])
        model.get_layer(layer_name("se_fc2", i)).set_weights([np.ascontiguousarray(fc2.T)[None, None]])
    missing = [i for i, b in enumerate(spec.layers) if b.type == "se" and i not in weights.se]
    if missing:
        raise UserError(f"no weights for [se] layer {missing[0]}", spec.source)


def get_darknet_weights(model: keras.Model, spec: Spec, header: Header | None = None) -> DarknetWeights:
    """Read the convolution weights of a model built from ``spec``."""
    convs = {}
    for i in spec.conv_indices():
        conv = model.get_layer(conv_name(i))
        values = conv.get_weights()
        values[0] = darknet_kernel(conv, values[0])
        if conv.use_bias:
            convs[i] = ConvWeights(values[0], values[1], None)
        else:
            bn = model.get_layer(bn_name(i)).get_weights()
            convs[i] = ConvWeights(values[0], None, tuple(bn))
    se = {i: tuple(np.ascontiguousarray(model.get_layer(layer_name(fc, i)).get_weights()[0][0, 0].T) for fc in ("se_fc1", "se_fc2"))
          for i, b in enumerate(spec.layers) if b.type == "se"}  # fmt: skip
    return DarknetWeights(convs, header or Header(), se)
