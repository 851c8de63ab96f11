"""The multi-backbone suite's constructs: [depthwise] and h_swish (MobileNetV3 YOLOs) against a numpy reference written from the
suite's definition (models.py: a depthwise Conv2d with groups = input channels, padding (k-1)//2; HardSwish x * relu6(x + 3) / 6),
the cfg and .weights round trips, and the malformed cases."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import random_weights

HEAD = """[convolutional]
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
"""  # a one-class head closing every test network

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

""" + HEAD


def _conv(x: np.ndarray, kernel: np.ndarray, stride: int | tuple[int, int], pad: int, groups: int) -> np.ndarray:
    """Direct convolution, Darknet kernel layout (kh, kw, in/groups, out), NHWC input of one image; stride (y, x) or both."""
    sy, sx = stride if isinstance(stride, tuple) else (stride, stride)
    kh, kw, cin_g, cout = kernel.shape
    x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    oh, ow = (x.shape[0] - kh) // sy + 1, (x.shape[1] - kw) // sx + 1
    out = np.zeros((oh, ow, cout), np.float64)
    per_group = cout // groups
    for o in range(cout):
        g = o // per_group
        xs = x[:, :, g * cin_g : (g + 1) * cin_g]
        for r in range(oh):
            for c in range(ow):
                out[r, c, o] = np.sum(xs[r * sy : r * sy + kh, c * sx : c * sx + kw, :] * kernel[:, :, :, o])
    return out


def _reference(spec, weights, image: np.ndarray) -> np.ndarray:
    """The suite's forward pass of SUITE_BLOCK in numpy (BN in inference form with PyTorch's epsilon 1e-5; the tool's Keras model
    uses Darknet's 1e-6, a relative difference below 1e-5 at these variances)."""
    from yolo3.spec import conv_params

    x = image.astype(np.float64)
    for i in spec.conv_indices():
        p = conv_params(spec.layers[i])
        w = weights.convs[i]
        x = _conv(x, w.kernel.astype(np.float64), p.strides, p.padding, p.groups)
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


SE_NET = """[net]
width=64
height=64
channels=3

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=h_swish

[convolutional]
batch_normalize=1
filters=32
size=1
stride=1
pad=1
activation=relu6

[depthwise]
batch_normalize=1
filters=32
size=3
stride=2
pad=1
activation=relu6

[se]
filters=32

[convolutional]
batch_normalize=1
filters=16
size=1
stride=1
pad=1
activation=linear

[se]
reduction=2

""" + HEAD


def _se_reference(x: np.ndarray, fc1: np.ndarray, fc2: np.ndarray) -> np.ndarray:
    """The suite's SE (utils/layers.py): avg pool, Linear(c, c/r, no bias), ReLU, Linear(c/r, c, no bias), HardSigmoid, x * y."""
    y = x.mean(axis=(0, 1))
    y = np.maximum(fc1 @ y, 0.0)
    y = np.clip(fc2 @ y + 3.0, 0.0, 6.0) / 6.0
    return x * y


def test_se_blocks_equal_the_suites_definition_and_round_trip(tmp_path):
    """[se] with filters (reduction 4) and with reduction: parameters, the Keras model against numpy, .weights byte-identical."""
    from yolo3.darknet import read_weights, weights_to_bytes
    from yolo3.keras_model import build_model, get_darknet_weights, set_darknet_weights
    from yolo3.spec import analyse, parse_cfg

    spec = parse_cfg(SE_NET, "se.cfg")
    infos = analyse(spec)
    assert infos[3].params == 2 * 32 * 8 and infos[3].out_shape == (16, 16, 32)  # fc 32 -> 8 -> 32
    assert infos[5].params == 2 * 16 * 8  # reduction 2 on 16 channels
    weights = random_weights(spec, seed=5)
    data = weights_to_bytes(spec, weights)
    (tmp_path / "se.weights").write_bytes(data)
    read = read_weights(tmp_path / "se.weights", spec)
    assert weights_to_bytes(spec, read) == data and set(read.se) == {3, 5}
    model = build_model(spec)
    set_darknet_weights(model, spec, read)
    assert weights_to_bytes(spec, get_darknet_weights(model, spec)) == data  # through Keras and back
    # numpy: the backbone computed layer by layer, then the SEs
    import tensorflow as tf

    image = np.random.RandomState(1).uniform(0, 1, (1, 64, 64, 3)).astype(np.float32)
    before_se = tf.keras.Model(model.input, model.get_layer("relu6_2").output)(image).numpy()[0]
    se_out = tf.keras.Model(model.input, model.get_layer("se_3").output)(image).numpy()[0]
    assert np.abs(se_out - _se_reference(before_se.astype(np.float64), *read.se[3])).max() < 1e-4
    conv4 = tf.keras.Model(model.input, model.get_layer("bn_4").output)(image).numpy()[0]
    se5 = tf.keras.Model(model.input, model.get_layer("se_5").output)(image).numpy()[0]
    assert np.abs(se5 - _se_reference(conv4.astype(np.float64), *read.se[5])).max() < 1e-4


BNECK = """[net]
width=64
height=64
channels=3

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=h_swish

[convolutional]
batch_normalize=1
filters=32
size=1
stride=1
pad=1
activation=relu6

[depthwise]
batch_normalize=1
filters=32
size=3
stride=1
pad=1
activation=relu6

[se]
filters=32

[convolutional]
batch_normalize=1
filters=16
size=1
stride=1
pad=1
activation=linear

[shortcut]
from=-5
activation=linear
{second_se}
[convolutional]
batch_normalize=1
filters=32
size=3
stride=2
pad=1
activation=leaky

""" + HEAD


def _dead_channels(weights, layers, channels) -> None:
    """BN scale and offset 0 on ``channels`` of ``layers``: those channels output act(0) = 0 everywhere."""
    from yolo3.darknet import ConvWeights

    for i in layers:
        gamma, beta, mean, var = (a.copy() for a in weights.convs[i].bn)
        gamma[channels] = beta[channels] = 0.0
        weights.convs[i] = ConvWeights(weights.convs[i].kernel, None, (gamma, beta, mean, var))


def _same_outputs(spec, weights, result) -> float:
    from yolo3.keras_model import build_model, set_darknet_weights

    original, pruned = build_model(spec), build_model(result.spec)
    set_darknet_weights(original, spec, weights)
    set_darknet_weights(pruned, result.spec, result.weights)
    image = np.random.RandomState(0).uniform(0, 1, (1, 64, 64, 3)).astype(np.float32)
    return float(np.abs(original.predict(image, verbose=0) - pruned.predict(image, verbose=0)).max())


def test_pruning_the_channels_an_se_scales_prunes_its_weights_and_keeps_the_model_equal(tmp_path):
    """A MobileNetV3 bottleneck (expand, depthwise, SE, project, residual): the expansion's group (its depthwise tied) is pruned
    through the [se]: the SE's first layer loses those columns, its second those rows, its hidden units stay (the cfg's
    reduction chosen for it), the pruned cfg + .weights round trip, and with only channels that output 0 removed the model
    computes the same. The residual group, read by an SE on the sum, is pruned the same way."""
    from compression.prune.surgery import channel_groups, prune_channels
    from yolo3.spec import format_cfg, parse_cfg

    spec = parse_cfg(BNECK.format(second_se="\n[se]\nreduction=2\n"), "bneck.cfg")
    groups = {g.id: g for g in channel_groups(spec)}
    assert groups[1].members == [1, 2] and groups[1].prunable and groups[1].se_readers == {3}
    assert groups[0].members == [0, 4] and groups[0].prunable and groups[0].se_readers == {6}
    weights = random_weights(spec, seed=2)
    dead_wide, dead_narrow = [1, 5, 6, 9, 20, 30], [3, 7]
    _dead_channels(weights, (1, 2), dead_wide)
    _dead_channels(weights, (0, 4), dead_narrow)
    keep_wide, keep_narrow = np.ones(32, bool), np.ones(16, bool)
    keep_wide[dead_wide], keep_narrow[dead_narrow] = False, False
    result = prune_channels(spec, weights, {1: keep_wide, 0: keep_narrow})
    kept = list(result.kept[1])  # 26 channels and a carrier for the removed constants (the SE's first layer has no bias)
    assert result.carriers[1] == 1 and kept == sorted({*np.flatnonzero(keep_wide), 1})
    fc1, fc2 = result.weights.se[3]
    assert fc1.shape == (9, 27) and fc2.shape == (27, 9)  # 8 units need reduction 3, which gives 9: one added
    real = [k for k, c in enumerate(kept) if c != 1]
    assert np.array_equal(fc1[:8, real], weights.se[3][0][:, [kept[k] for k in real]])
    assert np.array_equal(fc2[real, :8], weights.se[3][1][[kept[k] for k in real], :]) and not fc2[kept.index(1)].any()
    assert not fc1[8:].any() and not fc2[:, 8:].any()  # the unit added to meet the reduction is zero
    block = result.spec.layers[3]
    assert block.get_int("filters") == len(kept) and block.get_int("reduction") == 3
    assert _same_outputs(spec, weights, result) < 1e-4
    assert_weights_round_trip(result.spec, result.weights, tmp_path)
    assert "reduction=3" in format_cfg(result.spec)


def test_pruning_through_an_se_below_its_hidden_units_drops_the_weakest():
    """Fewer channels than hidden units: reduction 1 and the units with the smallest weights dropped; the model still builds."""
    from compression.prune.surgery import prune_channels
    from yolo3.keras_model import build_model, set_darknet_weights
    from yolo3.spec import parse_cfg

    spec = parse_cfg(BNECK.format(second_se=""), "bneck.cfg")
    weights = random_weights(spec, seed=3)
    keep = np.zeros(32, bool)
    keep[:5] = True
    result = prune_channels(spec, weights, {1: keep})
    fc1, fc2 = result.weights.se[3]
    assert fc1.shape[1] in (5, 6) and fc1.shape[0] == fc1.shape[1] and result.spec.layers[3].get_int("reduction") == 1
    model = build_model(result.spec)
    set_darknet_weights(model, result.spec, result.weights)


def test_memory_count_of_an_se_network_equals_its_int8_file(tmp_path):
    """The RAM count of the compress planner on a network with [depthwise], [se] and h_swish, against the converted file."""
    from compression.budget.memory_model import estimated_peak
    from yolo3.keras_model import build_model, set_darknet_weights
    from yolo3.spec import parse_cfg
    from yolo3.tflite_memory import memory_report

    spec = parse_cfg(BNECK.format(second_se="\n[se]\nreduction=2\n"), "bneck.cfg")
    model = build_model(spec)
    set_darknet_weights(model, spec, random_weights(spec, seed=1))
    path = tmp_path / "se-int8.tflite"
    _int8(model, path)
    report = memory_report(path)
    assert report["operator_counts"].get("HARD_SWISH") == 1 and report["operator_counts"].get("DEPTHWISE_CONV_2D") == 1
    assert abs(estimated_peak(spec, 64) - report["peak_activation_bytes"]) <= 0.02 * report["peak_activation_bytes"], report


def _int8(model, path) -> None:
    import tensorflow as tf

    def representative():
        rng = np.random.RandomState(0)
        for _ in range(4):
            yield [rng.uniform(0, 1, (1, *model.input.shape[1:])).astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    path.write_bytes(converter.convert())


def assert_weights_round_trip(spec, weights, folder) -> None:
    """The .weights bytes have the size the cfg implies and read back (through the written cfg) to the same bytes."""
    from yolo3.darknet import expected_floats, read_weights, weights_to_bytes
    from yolo3.spec import format_cfg, parse_cfg

    data = weights_to_bytes(spec, weights)
    assert len(data) == 20 + 4 * expected_floats(spec)
    (folder / "m.weights").write_bytes(data)
    again = parse_cfg(format_cfg(spec))
    assert weights_to_bytes(again, read_weights(folder / "m.weights", again)) == data


def test_builtin_tiny_mobilenetv3_small_is_the_suites_cfg_and_runs_as_int8(tmp_path):
    """The built-in equals the suite's yolov3tiny-mobilenet-small-coco.cfg (61 layers; the counts below are that cfg's, read by
    this tool); its .weights round trip, slimming through its SEs, its int8 model (HARD_SWISH, depthwise, SE)."""
    from compression.prune.pruning import slimming_masks
    from compression.prune.surgery import channel_groups, prune_channels
    from yolo3.keras_model import build_model, set_darknet_weights
    from yolo3.spec import analyse, format_cfg, totals
    from yolo3.tflite_memory import memory_report
    from yolo3.zoo import build_spec

    spec = build_spec("yolov3-tiny-mobilenetv3-small")
    t = totals(analyse(spec))
    assert len(spec.layers) == 61 and t.trainable_params == 3_041_430 and t.macs == 797_051_552
    text = format_cfg(spec)
    assert text.count("[depthwise]") == 11 and text.count("[se]") == 9 and text.count("activation=h_swish") == 18
    small = build_spec("yolov3-tiny-mobilenetv3-small", classes=2, size=96)
    weights = random_weights(small, seed=4)
    assert_weights_round_trip(small, weights, tmp_path)
    groups = channel_groups(small)
    assert any(g.prunable and 2 in g.members and g.se_readers for g in groups)  # layer 2 feeds an SE: pruned with it
    pruned = prune_channels(small, weights, slimming_masks(small, weights, percent=0.5))
    assert sum(b.type == "se" and "reduction" in b.options for b in pruned.spec.layers) >= 5  # the narrowed SEs follow
    assert_weights_round_trip(pruned.spec, pruned.weights, tmp_path)
    set_darknet_weights(build_model(pruned.spec), pruned.spec, pruned.weights)
    model = build_model(small)
    set_darknet_weights(model, small, weights)
    _int8(model, tmp_path / "m.tflite")
    ops = memory_report(tmp_path / "m.tflite")["operator_counts"]
    assert ops["DEPTHWISE_CONV_2D"] == 11 and ops["HARD_SWISH"] == 18 and ops["MEAN"] == 9


def test_latency_probes_of_an_se_network_build():
    """The latency model's probes of a network with [se]: an SE is probed at its own channels (the fit carries it to narrower ones), and every
    probe block builds."""
    from compression.budget.latency_model import block_items
    from compression.budget.latency_worker import block_model
    from yolo3.spec import parse_cfg

    spec = parse_cfg(BNECK.format(second_se="\n[se]\nreduction=2\n"), "bneck.cfg")
    items = block_items(spec, [64, 32], 64, levels=(1.0, 0.5))
    se_items = [it for it in items if spec.layers[it.layer].type == "se"]
    assert se_items and all(it.in_shapes[0][2] in (32, 16) for it in se_items)
    for it in se_items:
        model = block_model(spec, it.layer, [list(s) for s in it.in_shapes], it.filters)
        assert model.output.shape[-1] == it.in_shapes[0][2]


def test_builtin_yolov3_mobilenetv3_is_the_suites_cfg_and_builds(tmp_path):
    """The built-in equals the suite's yolov3-mobilenet-coco.cfg (97 layers, MobileNetV3-large under YOLOv3's heads; the counts
    are that cfg's as this tool reads it, compared option by option when it was written); .weights round trip; Keras builds."""
    from yolo3.keras_model import build_model, set_darknet_weights
    from yolo3.spec import analyse, format_cfg, totals
    from yolo3.zoo import build_spec

    spec = build_spec("yolov3-mobilenetv3")
    t = totals(analyse(spec))
    assert len(spec.layers) == 97 and t.trainable_params == 24_209_877 and t.macs == 9_021_784_384
    text = format_cfg(spec)
    assert (text.count("[depthwise]"), text.count("[se]"), text.count("activation=h_swish"), text.count("activation=relu6")) == (15, 8, 20, 12)
    small = build_spec("yolov3-mobilenetv3", classes=2, size=64)
    weights = random_weights(small, seed=5)
    assert_weights_round_trip(small, weights, tmp_path)
    model = build_model(small)
    set_darknet_weights(model, small, weights)
    assert [tuple(o.shape[1:3]) for o in model.outputs] == [(2, 2), (4, 4), (8, 8)]


# EfficientNet's MBConv as AlexeyAB's cfgs write it (the suite's yolov3tiny-efficientnetB0.cfg): expand, depthwise, SE as
# [avgpool] + two 1x1 convolutions with biases + [scale_channels] from=-4, project, residual.
MBCONV = """[net]
width=64
height=64
channels=3

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=swish

[convolutional]
batch_normalize=1
filters=32
size=1
stride=1
pad=0
activation=swish

[convolutional]
batch_normalize=1
groups=32
filters=32
size=3
stride=1
pad=1
activation=swish

[avgpool]

[convolutional]
filters=8
size=1
stride=1
activation=swish

[convolutional]
filters=32
size=1
stride=1
activation=logistic

[scale_channels]
from=-4

[convolutional]
batch_normalize=1
filters=16
size=1
stride=1
pad=0
activation=linear

[shortcut]
from=-8
activation=linear

""" + HEAD


def test_avgpool_and_scale_channels_match_opencv_and_their_counts(tmp_path):
    """[avgpool] + [scale_channels] (EfficientNet's SE) against OpenCV DNN, which reads both; shapes, parameters and MACs as
    Darknet counts them (the SE's 1x1 convolutions with biases, the product one multiply per element); .weights round trip."""
    from test_light import check_against_opencv

    from yolo3.spec import analyse, parse_cfg

    spec = parse_cfg(MBCONV, "mbconv.cfg")
    infos = analyse(spec)
    assert infos[3].out_shape == (1, 1, 32) and infos[6].out_shape == (32, 32, 32) and infos[6].inputs == (5, 2)
    assert (infos[4].params, infos[5].params, infos[6].macs) == (32 * 8 + 8, 8 * 32 + 32, 32 * 32 * 32)
    weights = random_weights(spec, seed=5)
    assert check_against_opencv(spec, weights, tmp_path) < 1e-3
    assert_weights_round_trip(spec, weights, tmp_path)


def test_pruning_an_mbconv_prunes_the_excitation_with_the_channels_it_scales(tmp_path):
    """EfficientNet's SE ([avgpool], two 1x1 convolutions, [scale_channels]): the excitation convolution's filters join the
    group of the channels it scales (expand + depthwise) and are pruned with them; the squeeze convolution loses the
    matching inputs; with only channels that output 0 removed (and the residual's) the model computes the same."""
    from compression.prune.surgery import channel_groups, prune_channels
    from yolo3.spec import parse_cfg

    spec = parse_cfg(MBCONV, "mbconv.cfg")
    groups = {g.id: g for g in channel_groups(spec)}
    assert groups[0].members == [0, 7] and groups[0].prunable
    assert groups[1].members == [1, 2, 5] and groups[1].prunable and groups[1].consumers == {4, 7} and groups[4].prunable
    weights = random_weights(spec, seed=2)
    dead_wide, dead_narrow = [0, 4, 11, 31], [3, 7]
    _dead_channels(weights, (1, 2), dead_wide)
    _dead_channels(weights, (0, 7), dead_narrow)
    keep_wide, keep_narrow = np.ones(32, bool), np.ones(16, bool)
    keep_wide[dead_wide], keep_narrow[dead_narrow] = False, False
    result = prune_channels(spec, weights, {0: keep_narrow, 1: keep_wide})
    convs = result.weights.convs
    assert convs[5].kernel.shape[-1] == convs[2].kernel.shape[-1] == 28 and convs[4].kernel.shape[2] == 28
    assert convs[7].kernel.shape == (1, 1, 28, 14) and convs[1].kernel.shape[2] == 14
    assert _same_outputs(spec, weights, result) < 1e-4
    assert_weights_round_trip(result.spec, result.weights, tmp_path)


def test_residual_layer_pruning_removes_an_mbconv_and_a_bottleneck_with_their_excitations(tmp_path):
    """The suite's bottleneck ([depthwise], [se]) and EfficientNet's MBConv ([avgpool] ... [scale_channels] reading inside the
    branch) are residual branches the layer pruner may remove whole; the MBConv result still reads in OpenCV."""
    from test_light import check_against_opencv

    from compression.prune.pruning import layer_prune, residual_blocks
    from yolo3.spec import parse_cfg

    bneck = parse_cfg(BNECK.format(second_se=""), "bneck.cfg")
    assert [(b.start, b.shortcut) for b in residual_blocks(bneck, random_weights(bneck, seed=1))] == [(1, 5)]
    spec = parse_cfg(MBCONV, "mbconv.cfg")
    weights = random_weights(spec, seed=3)
    assert [(b.start, b.shortcut) for b in residual_blocks(spec, weights)] == [(1, 8)]
    pruned, pruned_weights, _ = layer_prune(spec, weights, 1)
    assert [b.type for b in pruned.layers[:2]] == ["convolutional", "convolutional"] and len(pruned.layers) == len(spec.layers) - 8
    assert check_against_opencv(pruned, pruned_weights, tmp_path) < 1e-3


def test_mbconv_as_int8_its_memory_count_and_latency_probes(tmp_path):
    """int8 conversion (MEAN and MUL for the SE), the planner's RAM count against the file, and the latency model's probes of
    [avgpool] and [scale_channels] (at their own channels and narrower) build."""
    from compression.budget.latency_model import block_items
    from compression.budget.latency_worker import block_model
    from compression.budget.memory_model import estimated_peak
    from yolo3.keras_model import build_model, set_darknet_weights
    from yolo3.spec import parse_cfg
    from yolo3.tflite_memory import memory_report

    spec = parse_cfg(MBCONV, "mbconv.cfg")
    model = build_model(spec)
    set_darknet_weights(model, spec, random_weights(spec, seed=1))
    _int8(model, tmp_path / "m.tflite")
    report = memory_report(tmp_path / "m.tflite")
    assert report["operator_counts"].get("MEAN") == 1 and report["operator_counts"].get("MUL", 0) >= 1
    assert abs(estimated_peak(spec, 64) - report["peak_activation_bytes"]) <= 0.02 * report["peak_activation_bytes"], report
    items = [it for it in block_items(spec, [64, 32], 64, levels=(1.0, 0.5)) if spec.layers[it.layer].type in ("avgpool", "scale_channels")]
    assert {spec.layers[it.layer].type for it in items} == {"avgpool", "scale_channels"}
    assert {s[2] for it in items for s in it.in_shapes} == {32, 16}  # probed narrower too: pruning narrows them
    for it in items:
        assert len({s[2] for s in it.in_shapes}) == 1
        built = block_model(spec, it.layer, [list(s) for s in it.in_shapes], it.filters)
        assert built.output.shape[-1] == it.in_shapes[0][2]


@pytest.mark.parametrize(
    "cfg_edit, message",
    [
        (lambda t: t.replace("from=-4", "from=-2"), "[scale_channels] scales layer 4 (1, 1, 8) by layer 5 (1, 1, 32)"),
        (lambda t: t.replace("from=-4", "from=-4\nscale_wh=1"), "scale_wh=1"),
        (lambda t: t.replace("from=-4", "from=-4,-5"), "[scale_channels] needs exactly one layer"),
    ],
)
def test_malformed_scale_channels_ends_in_one_line_naming_the_line(cfg_edit, message):
    from yolo3.errors import UserError
    from yolo3.spec import parse_cfg

    with pytest.raises(UserError) as err:
        parse_cfg(cfg_edit(MBCONV), "mbconv.cfg")
    assert message in str(err.value) and "mbconv.cfg" in str(err.value) and "line" in str(err.value), str(err.value)


def test_the_planner_narrows_se_networks_it_can_build():
    """The planner's units include the channels an SE scales; the architecture it describes for narrower counts has its [se]
    blocks following (filters, reduction), and the latency model's narrower whole networks build."""
    from compression.budget.latency_worker import network_model
    from compression.budget.planner import ChannelMap
    from yolo3.spec import analyse, parse_cfg

    spec = parse_cfg(BNECK.format(second_se="\n[se]\nreduction=2\n"), "bneck.cfg")
    cmap = ChannelMap(spec)
    assert set(cmap.units) == {0, 1, 7}
    narrow = cmap.spec_with({0: 8, 1: 16})
    infos = analyse(narrow)
    assert infos[3].out_shape[2] == 16 and narrow.layers[3].get_int("reduction") == 2 and infos[3].params == 2 * 16 * 8
    assert narrow.layers[6].get_int("filters") == 8 and infos[6].params == 2 * 8 * 8  # 8 units kept: reduction 1
    model = network_model(spec, {"1": 16, "2": 16, "0": 8, "4": 8}, 64)
    assert model.get_layer("se_3").output.shape[-1] == 16


# AlexeyAB's [reorg3d] (space-to-depth, and depth-to-space with reverse=1) and per-axis strides (stride_x / stride_y) on a
# convolution and a max-pool, as the suite's yolov3-spp-pan-scale and yolov3-spp-matrix cfgs write them. OpenCV DNN reads
# neither (4.x: "Unknown layer type: reorg3d"; stride_x ignored), so the reference is Darknet's own definition in numpy.
REORG = """[net]
width=64
height=64
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=3
stride_x=2
stride_y=1

[convolutional]
batch_normalize=1
filters=16
size=3
stride_x=1
stride_y=2
pad=1
activation=leaky

[route]
layers=-3

[reorg3d]
stride=2

[route]
layers=-1,-3

[convolutional]
batch_normalize=1
filters=16
size=1
stride=1
pad=1
activation=leaky

[reorg3d]
stride=2
reverse=1

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=leaky

""" + HEAD


def _darknet_reorg(x: np.ndarray, stride: int, reverse: bool) -> np.ndarray:
    """Darknet's reorg_cpu as AlexeyAB's [reorg3d] calls it, on the flat NCHW buffer (its index arithmetic)."""
    h, w, c = x.shape
    flat = x.transpose(2, 0, 1).ravel()
    if reverse:
        out_w, out_h, out_c = w * stride, h * stride, c // (stride * stride)
    else:
        out_w, out_h, out_c = w // stride, h // stride, c * stride * stride
    sw, sh, sc = (w, h, c) if reverse else (out_w, out_h, out_c)  # its loops run over the small (deep) map
    in_c = sc // (stride * stride)
    out = np.zeros(out_w * out_h * out_c, np.float64)
    for k in range(sc):
        for j in range(sh):
            for i in range(sw):
                small = i + sw * (j + sh * k)
                offset = k // in_c
                w2, h2 = i * stride + offset % stride, j * stride + offset // stride
                big = w2 + sw * stride * (h2 + sh * stride * (k % in_c))
                if reverse:
                    out[big] = flat[small]
                else:
                    out[small] = flat[big]
    return out.reshape(out_c, out_h, out_w).transpose(1, 2, 0)


def _darknet_maxpool(x: np.ndarray, size: int, strides: tuple[int, int], padding: int) -> np.ndarray:
    sy, sx = strides
    before = padding // 2
    padded = np.full((x.shape[0] + padding, x.shape[1] + padding, x.shape[2]), -np.inf)
    padded[before : before + x.shape[0], before : before + x.shape[1]] = x
    oh, ow = (x.shape[0] + padding - size) // sy + 1, (x.shape[1] + padding - size) // sx + 1
    return np.array([[padded[r * sy : r * sy + size, c * sx : c * sx + size].max(axis=(0, 1)) for c in range(ow)] for r in range(oh)])


def _darknet_forward(spec, weights, image: np.ndarray) -> np.ndarray:
    """The REORG network's forward pass from Darknet's definitions (BN with Darknet's sqrt(var) + 1e-6)."""
    from yolo3.spec import conv_params, maxpool_params, reorg_params, route_inputs

    outs = []
    x = image.astype(np.float64)
    for i, block in enumerate(spec.layers):
        if block.type == "convolutional":
            p = conv_params(block)
            w = weights.convs[i]
            x = _conv(x, w.kernel.astype(np.float64), p.strides, p.padding, p.groups)
            if w.bn is not None:
                gamma, beta, mean, var = (np.asarray(v, np.float64) for v in w.bn)
                x = gamma * (x - mean) / (np.sqrt(var) + 1e-6) + beta
            else:
                x = x + w.bias
            if p.activation == "leaky":
                x = np.where(x > 0, x, 0.1 * x)
        elif block.type == "maxpool":
            x = _darknet_maxpool(x, *maxpool_params(block))
        elif block.type == "reorg3d":
            x = _darknet_reorg(x, *reorg_params(block))
        elif block.type == "route":
            x = np.concatenate([outs[j] for j in route_inputs(spec, i)], axis=-1)
        outs.append(x)
    return outs[-1]


def test_reorg3d_and_per_axis_strides_equal_darknets_definition(tmp_path):
    """Shapes, counts and outputs of [reorg3d] (both directions), a convolution with stride_y=2 stride_x=1 and a max-pool with
    stride_x=2 stride_y=1 against Darknet's definitions in numpy; the info table shows them; .weights round trip."""
    from yolo3.keras_model import build_model, set_darknet_weights
    from yolo3.spec import analyse, layer_table, parse_cfg

    spec = parse_cfg(REORG, "reorg.cfg")
    infos = analyse(spec)
    shapes = [infos[k].out_shape for k in (1, 2, 4, 5, 7, 8)]
    assert shapes == [(64, 32, 8), (32, 32, 16), (32, 32, 32), (32, 32, 48), (64, 64, 4), (32, 32, 16)]
    assert infos[2].macs == 32 * 32 * 9 * 8 * 16 and infos[4].params == infos[7].params == 0
    table = layer_table(spec, infos)
    assert "3 x 3/1x2" in table and "3 x 3/2x1" in table and "reorg3d reverse" in table, table
    weights = random_weights(spec, seed=4)
    model = build_model(spec)
    set_darknet_weights(model, spec, weights)
    image = np.random.RandomState(2).uniform(0, 1, (64, 64, 3)).astype(np.float32)
    ours = model.predict(image[None], verbose=0)[0]
    assert np.abs(ours - _darknet_forward(spec, weights, image)).max() < 1e-3
    assert_weights_round_trip(spec, weights, tmp_path)


def test_a_reorg3d_keeps_the_channels_it_moves_and_pruning_elsewhere_keeps_the_model(tmp_path):
    """The channels a [reorg3d] reads stay (each is copied to stride^2 places); the others prune as usual, and with only
    channels that output 0 removed the model computes the same; the planner counts the reorg's channels."""
    from compression.budget.planner import ChannelMap
    from compression.prune.surgery import channel_groups, prune_channels
    from yolo3.spec import analyse, parse_cfg

    spec = parse_cfg(REORG, "reorg.cfg")
    groups = {g.id: g for g in channel_groups(spec)}
    assert not groups[0].prunable and not groups[6].prunable and groups[2].prunable and groups[8].prunable
    weights = random_weights(spec, seed=2)
    _dead_channels(weights, (2,), [1, 5, 9])
    keep = np.ones(16, bool)
    keep[[1, 5, 9]] = False
    result = prune_channels(spec, weights, {2: keep})
    assert analyse(result.spec)[5].out_shape[2] in (45, 46)  # 13 kept, and a carrier where a padded reader needs one
    assert _same_outputs(spec, weights, result) < 1e-4
    assert_weights_round_trip(result.spec, result.weights, tmp_path)
    cmap = ChannelMap(spec)
    assert set(cmap.units) == {2, 8}
    reorg = next(b for b in cmap.blocks if b.layer == 4)
    assert cmap.channels(reorg, {2: 8, 8: 8}) == (8, 32)


def test_reorg3d_and_per_axis_strides_as_int8_memory_count_and_latency_probes(tmp_path):
    """LiteRT runs [reorg3d] as SPACE_TO_DEPTH / DEPTH_TO_SPACE in int8; the planner's RAM count matches the file; the latency
    model's probes of the reorg blocks build."""
    from compression.budget.latency_model import block_items
    from compression.budget.latency_worker import block_model
    from compression.budget.memory_model import estimated_peak
    from yolo3.keras_model import build_model, set_darknet_weights
    from yolo3.spec import parse_cfg
    from yolo3.tflite_memory import memory_report

    spec = parse_cfg(REORG, "reorg.cfg")
    model = build_model(spec)
    set_darknet_weights(model, spec, random_weights(spec, seed=1))
    _int8(model, tmp_path / "m.tflite")
    report = memory_report(tmp_path / "m.tflite")
    assert report["operator_counts"].get("SPACE_TO_DEPTH") == 1 and report["operator_counts"].get("DEPTH_TO_SPACE") == 1, report
    assert abs(estimated_peak(spec, 64) - report["peak_activation_bytes"]) <= 0.02 * report["peak_activation_bytes"], report
    items = [it for it in block_items(spec, [64], 64, levels=(1.0,)) if spec.layers[it.layer].type == "reorg3d"]
    assert {it.layer for it in items} == {4, 7}
    for it in items:
        built = block_model(spec, it.layer, [list(s) for s in it.in_shapes], it.filters)
        assert built.output.shape[-1] == (it.in_shapes[0][2] * 4 if it.layer == 4 else it.in_shapes[0][2] // 4)


@pytest.mark.parametrize(
    "cfg_edit, message",
    [
        (lambda t: t.replace("[reorg3d]\nstride=2\n\n[route]", "[reorg3d]\nstride=3\n\n[route]"), "[reorg3d] stride=3 does not divide its 64 x 64 input"),
        (lambda t: t.replace("filters=16\nsize=1", "filters=18\nsize=1"), "reverse=1 with stride=2 needs channels divisible by 4, the input has 18"),
        (lambda t: t.replace("reverse=1", "reverse=1\nflatten=1"), "[reorg3d] flatten is not supported"),
        (lambda t: t.replace("stride_x=1\nstride_y=2", "stride_x=1\nstride_y=2\nshare_index=0"), "share_index"),
        (lambda t: t.replace("stride_x=2\nstride_y=1", "stride_x=0\nstride_y=1"), "must be positive"),
    ],
)
def test_malformed_reorg3d_and_strides_end_in_one_line_naming_the_line(cfg_edit, message):
    from yolo3.errors import UserError
    from yolo3.spec import parse_cfg

    with pytest.raises(UserError) as err:
        parse_cfg(cfg_edit(REORG), "reorg.cfg")
    assert message in str(err.value) and "reorg.cfg" in str(err.value) and "line" in str(err.value), str(err.value)


def _suite_toy_cfg() -> str:
    """A two-head network of the suite's constructs: h_swish stem, a MobileNetV3 bottleneck (expand relu6, [depthwise], [se],
    linear project, residual), then a stride-2 h_swish convolution; 3 classes, 64 px (the synthetic shapes)."""
    from test_light import conv, yolo_head

    return ("[net]\nwidth=64\nheight=64\nchannels=3\n" + conv(16, 3, 2, activation="h_swish") + conv(32, 1, activation="relu6")
            + "[depthwise]\nbatch_normalize=1\nfilters=32\nsize=3\nstride=1\npad=1\nactivation=relu6\n[se]\nfilters=32\n"
            + conv(16, 1, activation="linear") + "[shortcut]\nfrom=-5\nactivation=linear\n" + conv(32, 3, 2, activation="h_swish")
            + "[maxpool]\nsize=2\nstride=2\n" + yolo_head("3,4,5") + "[route]\nlayers=-4\n" + yolo_head("0,1,2"))  # fmt: skip


def test_suite_model_through_the_whole_tool(tmp_path, synthetic_valid):
    """An SE network as a user brings it: train, evaluate, similarity / slimming / residual-layer pruning (the SE pruned with
    the channels it scales, the Darknet export reading back to the same model), clustering, QAT int8 with hard-swish as an
    int8 op, and the edge runner from the device folder."""
    import json

    from test_light import assert_device_runner_detects, clustered_qat_int8, light_toy_config

    from yolo3.lite import TFLitePredictor
    from yolo3.models import load_model
    from yolo3.spec import parse_cfg
    from yolo3_cli.main import main

    cfg = _suite_toy_cfg()
    config = light_toy_config(tmp_path, synthetic_valid, cfg)
    c = ["-c", str(config)]
    assert main(["train", *c, "--epochs", "1", "--quiet"]) == 0
    best = tmp_path / "run" / "best.h5"
    assert main(["evaluate", *c, "--model", str(best), "--json", str(tmp_path / "eval.json"), "--quiet"]) == 0
    assert 0 <= json.loads((tmp_path / "eval.json").read_text())["mAP50"] <= 1
    image = np.random.RandomState(3).uniform(0, 1, (1, 64, 64, 3)).astype(np.float32)
    for method in ("similarity", "slimming", "layers"):
        out = tmp_path / f"{method}.h5"
        assert main(["prune", *c, "--method", method, "--model", str(best), "--out", str(out), "--quiet"]) == 0, method
        pruned = parse_cfg((tmp_path / f"{method}.cfg").read_text())
        from_darknet = load_model(tmp_path / f"{method}.weights", tmp_path / f"{method}.cfg")
        from_h5 = load_model(out)
        for a, b in zip(from_darknet.model.predict(image, verbose=0), from_h5.model.predict(image, verbose=0)):
            assert np.abs(a - b).max() < 1e-4, method
        if method == "similarity":  # the bottleneck's expansion was pruned: its depthwise and its SE follow
            expand, depthwise, se = (pruned.layers[i] for i in (1, 2, 3))
            assert depthwise.get_int("filters") == se.get_int("filters") == expand.get_int("filters") < 32
        if method == "layers":
            assert "[se]" not in (tmp_path / "layers.cfg").read_text()  # the residual bottleneck went whole
    int8 = clustered_qat_int8(c, tmp_path / "similarity.h5", tmp_path)
    ops = {op["op_name"] for op in TFLitePredictor(int8).interpreter._get_ops_details()}
    assert {"HARD_SWISH", "DEPTHWISE_CONV_2D", "MEAN", "MUL"} <= ops and "FLEX" not in " ".join(ops) and "DEQUANTIZE" not in ops
    assert_device_runner_detects(tmp_path / "device", next((synthetic_valid / "images").glob("*")))
