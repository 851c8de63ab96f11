"""The multi-backbone suite's constructs: [depthwise] and h_swish (MobileNetV3 YOLOs) against a numpy reference written from the
suite's definition (models.py: a depthwise Conv2d with groups = input channels, padding (k-1)//2; HardSwish x * relu6(x + 3) / 6),
the cfg and .weights round trips, and the malformed cases."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import random_weights

SUITE_BLOCK = """[net]
width=64
height=64
channels=3

[convolutional]
batch_normalize = 1
filters = 8
size = 3
stride = 2
pad = 1
activation = h_swish

[depthwise]
batch_normalize = 1
filters = 8
size = 3
stride = 2
pad = 1
activation = relu6

[convolutional]
batch_normalize=1
filters=16
size=1
stride=1
pad=1
activation=linear

[convolutional]
size=1
stride=1
pad=1
filters=18
activation=linear

[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58
classes=1
num=3
"""


def _conv(x: np.ndarray, kernel: np.ndarray, stride: int, pad: int, groups: int) -> np.ndarray:
    """Direct convolution, Darknet kernel layout (kh, kw, in/groups, out), NHWC input of one image."""
    kh, kw, cin_g, cout = kernel.shape
    x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    oh, ow = (x.shape[0] - kh) // stride + 1, (x.shape[1] - kw) // stride + 1
    out = np.zeros((oh, ow, cout), np.float64)
    per_group = cout // groups
    for o in range(cout):
        g = o // per_group
        xs = x[:, :, g * cin_g : (g + 1) * cin_g]
        for r in range(oh):
            for c in range(ow):
                out[r, c, o] = np.sum(xs[r * stride : r * stride + kh, c * stride : c * stride + kw, :] * kernel[:, :, :, o])
    return out


def _reference(spec, weights, image: np.ndarray) -> np.ndarray:
    """The suite's forward pass of SUITE_BLOCK in numpy (BN in inference form with PyTorch's epsilon 1e-5; the tool's Keras model
    uses Darknet's 1e-6, a relative difference below 1e-5 at these variances)."""
    from yolo3.spec import conv_params

    x = image.astype(np.float64)
    for i in spec.conv_indices():
        p = conv_params(spec.layers[i])
        w = weights.convs[i]
        x = _conv(x, w.kernel.astype(np.float64), p.stride, p.padding, p.groups)
        if w.bn is not None:
            gamma, beta, mean, var = (np.asarray(v, np.float64) for v in w.bn)
            x = gamma * (x - mean) / np.sqrt(var + 1e-5) + beta
        else:
            x = x + w.bias
        if p.activation == "h_swish":
            x = x * np.clip(x + 3.0, 0.0, 6.0) / 6.0
        elif p.activation == "relu6":
            x = np.clip(x, 0.0, 6.0)
    return x


def test_depthwise_and_h_swish_equal_the_suites_definition(tmp_path):
    from yolo3.darknet import read_weights, weights_to_bytes
    from yolo3.keras_model import build_model, set_darknet_weights
    from yolo3.spec import analyse, conv_params, format_cfg, parse_cfg, totals

    spec = parse_cfg(SUITE_BLOCK, "suite.cfg")
    dw = spec.layers[1]
    assert dw.type == "convolutional" and conv_params(dw).groups == 8 and dw.origin == "depthwise"
    # parameters as the suite counts them: the depthwise kernel is 3x3x1 per channel
    infos = analyse(spec)
    assert infos[1].params == 3 * 3 * 8 + 4 * 8 and infos[1].macs == 16 * 16 * 3 * 3 * 8
    assert totals(infos).params == (3 * 3 * 3 * 8 + 32) + (9 * 8 + 32) + (8 * 16 + 64) + (16 * 18 + 18)
    # the cfg goes back out as [depthwise], without the groups it implies
    text = format_cfg(spec)
    assert "[depthwise]" in text and "groups" not in text.split("[depthwise]")[1].split("[")[0]
    assert format_cfg(parse_cfg(text)) == text
    # .weights: the suite's layout (BN, then the (8, 1, 3, 3) kernel), byte-identical round trip
    weights = random_weights(spec, seed=3)
    data = weights_to_bytes(spec, weights)
    (tmp_path / "m.weights").write_bytes(data)
    assert weights_to_bytes(spec, read_weights(tmp_path / "m.weights", spec)) == data
    # the Keras model computes what the suite's modules compute
    model = build_model(spec)
    set_darknet_weights(model, spec, weights)
    image = np.random.RandomState(0).uniform(0, 1, (64, 64, 3)).astype(np.float32)
    head = model.predict(image[None], verbose=0)
    head = head[0] if isinstance(head, list) else head
    assert np.abs(head[0] - _reference(spec, weights, image)).max() < 1e-3


@pytest.mark.parametrize(
    "cfg_edit, message",
    [
        (lambda t: t.replace("filters = 8\nsize = 3\nstride = 2\npad = 1\nactivation = relu6", "filters = 16\nsize = 3\nstride = 2\npad = 1\nactivation = relu6"),
         "[depthwise] filters=16 differ from its 8 input channels"),
        (lambda t: t.replace("activation = relu6", "groups = 8\nactivation = relu6"), "[depthwise] takes no 'groups'"),
        (lambda t: t.replace("activation = h_swish", "activation = h_sigmoid"), "activation=h_sigmoid is not supported"),
    ],
)
def test_malformed_depthwise_ends_in_one_line_naming_the_line(cfg_edit, message):
    from yolo3.errors import UserError
    from yolo3.spec import parse_cfg

    with pytest.raises(UserError) as err:
        parse_cfg(cfg_edit(SUITE_BLOCK), "suite.cfg")
    assert message in str(err.value) and "suite.cfg" in str(err.value)
