"""The light YOLO family: every Darknet construct they use, alone against OpenCV DNN; the whole models; surgery on them."""

import cv2
import numpy as np
import pytest
from test_opencv import opencv_outputs
from test_resampling import random_set

from conftest import SHARED, random_weights, require_shared
from yolo3.darknet import read_weights, weights_to_bytes, write_weights
from yolo3.errors import UserError
from yolo3.spec import parse_cfg, write_cfg

STEM = """[net]
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
"""

HEAD = """[convolutional]
filters=14
size=1
stride=1
pad=1
activation=linear
[yolo]
mask=0,1
anchors=10,14, 23,27, 37,58
classes=2
num=3
"""


def conv(filters, size=3, stride=1, groups=1, activation="leaky", bn=1):
    g = f"groups={groups}\n" if groups != 1 else ""
    return f"[convolutional]\nbatch_normalize={bn}\n{g}filters={filters}\nsize={size}\nstride={stride}\npad=1\nactivation={activation}\n"


CONSTRUCTS = {
    "depthwise": conv(8, groups=8),
    "depthwise-5x5-stride2": conv(8, 5, 2, groups=8),
    "depthwise-multiplier2": conv(16, groups=8),
    "grouped": conv(8, groups=2) + conv(12, 1, groups=4),
    "kernel1-5-7": conv(8, 1) + conv(8, 5) + conv(8, 7, 2),
    "dropout": conv(8, 1) + "[dropout]\nprobability=.15\n[shortcut]\nfrom=-3\nactivation=linear\n",
    "route-group": conv(16) + "[route]\nlayers=-1\ngroups=2\ngroup_id=1\n" + conv(8) + "[route]\nlayers=-1,-2\n",
    "route-groups-of-two": conv(16) + "[route]\nlayers=-1,-2\ngroups=4\ngroup_id=2\n",
    "shortcut-leaky": conv(8) + "[shortcut]\nfrom=-2\nactivation=leaky\n",
    "shortcut-relu": conv(8, activation="linear") + "[shortcut]\nfrom=-2\nactivation=relu\n",
    # AlexeyAB's shortcut between widths (EfficientNet YOLO cfgs): the previous layer's channels, the other added where it has them
    "shortcut-from-wider": conv(16) + conv(8, 1) + "[shortcut]\nfrom=-2\nactivation=linear\n",
    "shortcut-from-narrower": conv(16, 1) + "[shortcut]\nfrom=-2\nactivation=leaky\n",
    "avgpool-scale-channels": conv(8, groups=8, activation="swish") + "[avgpool]\n" + conv(4, 1, activation="swish", bn=0)
    + conv(8, 1, activation="logistic", bn=0) + "[scale_channels]\nfrom=-4\n",
    "maxpool-3-2": "[maxpool]\nsize=3\nstride=2\n",
    "maxpool-3-1": "[maxpool]\nsize=3\nstride=1\n",
    "maxpool-2-2": "[maxpool]\nsize=2\nstride=2\n",
    "maxpool-2-1": "[maxpool]\nsize=2\nstride=1\n",
    "upsample": "[upsample]\nstride=2\n[maxpool]\nsize=2\nstride=2\n",
    "relu": conv(8, activation="relu"),
    "relu6": conv(8, activation="relu6"),
    "mish": conv(8, activation="mish"),
    "swish": conv(8, activation="swish"),
    "logistic": conv(8, activation="logistic"),
    "mish-big-inputs": conv(8, activation="linear") + conv(8, 1, activation="mish", bn=0),
}


def check_against_opencv(spec, weights, folder, size=None, seed=1):
    """Our raw head outputs against OpenCV DNN's for the same cfg and weights; the largest difference."""
    from yolo3.keras_model import build_model, set_darknet_weights

    cfg, wts = folder / "net.cfg", folder / "net.weights"
    write_cfg(spec, cfg)
    write_weights(wts, spec, weights)
    model = build_model(spec, size)
    set_darknet_weights(model, spec, weights)
    hw = model.input_shape[1]
    tensor = np.random.RandomState(seed).rand(hw, hw, 3).astype(np.float32)
    outputs = model(tensor[None])
    ours = [np.asarray(o)[0] for o in (outputs if isinstance(outputs, list) else [outputs])]
    theirs = opencv_outputs(cfg, wts, tensor, [f"conv_{i - 1}" for i in spec.yolo_indices()])
    worst = 0.0
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        worst = max(worst, float(np.abs(a - b).max()))
    return worst


# OpenCV 4.x refuses relu6 ("Unsupported activation") and a grouped [route] of several layers;
# those two are checked against Darknet's definition in numpy instead.
NOT_IN_OPENCV = {"relu6", "route-groups-of-two"}


@pytest.mark.parametrize("name", sorted(set(CONSTRUCTS) - NOT_IN_OPENCV))
def test_construct_matches_opencv(tmp_path, name):
    spec = parse_cfg(STEM + CONSTRUCTS[name] + HEAD, source=name)
    assert check_against_opencv(spec, random_weights(spec, seed=3), tmp_path) < 1e-3


def _layer_outputs(spec, names):
    from yolo3.keras_model import build_model, set_darknet_weights
    from yolo3.kerasenv import keras

    model = build_model(spec)
    set_darknet_weights(model, spec, random_weights(spec, seed=3))
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names])
    x = np.random.RandomState(1).rand(1, 64, 64, 3).astype(np.float32)
    return [np.asarray(o)[0] for o in probe(x)]


def test_relu6_is_darknets():
    spec = parse_cfg(STEM + CONSTRUCTS["relu6"] + HEAD)
    before, after = _layer_outputs(spec, ["bn_1", "relu6_1"])
    assert before.max() > 6 or before.min() < 0
    assert np.array_equal(after, np.clip(before, 0, 6))


def test_grouped_route_of_two_layers_is_darknets():
    """Darknet's route_layer: the group_id-th of groups slices of *each* input, concatenated."""
    spec = parse_cfg(STEM + CONSTRUCTS["route-groups-of-two"] + HEAD)
    first, second, routed = _layer_outputs(spec, ["leaky_0", "leaky_1", "route_2"])
    assert np.array_equal(routed, np.concatenate([second[..., 8:12], first[..., 4:6]], axis=-1))


def test_keys_with_spaces_and_tabs_are_read():
    text = (STEM + CONSTRUCTS["depthwise"] + HEAD).replace("=", " = ").replace("size = 3\nstride = 1", "size\t=\t3\nstride =1")
    spec = parse_cfg(text)
    assert spec.layers[1].get_int("groups") == 8 and spec.layers[1].get_int("size") == 3


def test_depthwise_is_a_depthwise_layer_and_trains():
    """groups = channels builds DepthwiseConv2D (LiteRT's fast DEPTHWISE_CONV_2D), grouped stays Conv2D; dropout acts only in training."""
    from yolo3.keras_model import build_model
    from yolo3.kerasenv import keras

    spec = parse_cfg(STEM + CONSTRUCTS["depthwise"] + CONSTRUCTS["grouped"] + conv(12, 1)
                     + "[dropout]\nprobability=.5\n[shortcut]\nfrom=-3\nactivation=linear\n" + HEAD)  # fmt: skip
    model = build_model(spec)
    assert isinstance(model.get_layer("conv_1"), keras.layers.DepthwiseConv2D)
    assert isinstance(model.get_layer("conv_2"), keras.layers.Conv2D) and model.get_layer("conv_2").groups == 2
    x = np.random.RandomState(0).rand(2, 64, 64, 3).astype(np.float32)
    assert np.array_equal(model(x, training=False)[0], model(x, training=False)[0])
    assert not np.allclose(model(x, training=True)[0], model(x, training=False)[0])


LIGHT = ["yolov4-tiny", "yolov3-tiny-relu", "yolo-fastest"]


@pytest.mark.parametrize("name", LIGHT)
def test_light_model_matches_opencv_and_round_trips_through_h5(tmp_path, name):
    """Random plausible weights: OpenCV agrees, and .weights -> .h5 -> .weights is byte-identical (header included)."""
    from yolo3.darknet import Header
    from yolo3.models import load_model, save_model
    from yolo3.zoo import build_spec

    spec = build_spec(name, classes=4, size=160)
    weights = random_weights(spec, seed=7, header=Header(0, 2, 5, 123456789))
    assert check_against_opencv(spec, weights, tmp_path) < 1e-3
    loaded = load_model(tmp_path / "net.weights", tmp_path / "net.cfg")
    save_model(loaded.model, loaded.spec, tmp_path / "m.h5", header=loaded.header)
    again = load_model(tmp_path / "m.h5")
    save_model(again.model, again.spec, tmp_path / "back.weights", header=again.header)
    assert (tmp_path / "back.weights").read_bytes() == (tmp_path / "net.weights").read_bytes()


FASTEST = ("weights", "yolo-fastest-1.0-coco")


@pytest.fixture(scope="module")
def fastest_paths():
    return require_shared(*FASTEST, "yolo-fastest.cfg"), require_shared(*FASTEST, "yolo-fastest.weights")


@pytest.mark.parametrize("image", ["dog", "person"])
def test_official_yolo_fastest_matches_opencv(fastest_paths, image):
    from yolo3.models import load_model
    from yolo3.preprocess import letterbox, load_image

    cfg, weights = fastest_paths
    loaded = load_model(weights, cfg)
    tensor, _ = letterbox(load_image(require_shared("darknet", "images", f"{image}.jpg")), 320)
    ours = [np.asarray(o)[0] for o in loaded.model(tensor[None])]
    theirs = opencv_outputs(cfg, weights, tensor, [f"conv_{i - 1}" for i in loaded.spec.yolo_indices()])
    for a, b in zip(ours, theirs):
        assert np.abs(a - b).max() < 1e-3


def test_official_yolo_fastest_round_trip_and_builtin(fastest_paths, tmp_path):
    """The official file through .h5 and back byte for byte (header's seen included); the built-in has its layers."""
    from yolo3.models import load_model, save_model
    from yolo3.spec import analyse, conv_params, totals
    from yolo3.zoo import build_spec

    cfg, weights = fastest_paths
    loaded = load_model(weights, cfg)
    assert loaded.header.seen > 0
    save_model(loaded.model, loaded.spec, tmp_path / "f.h5", header=loaded.header)
    again = load_model(tmp_path / "f.h5")
    save_model(again.model, again.spec, tmp_path / "f.weights", header=again.header)
    assert (tmp_path / "f.weights").read_bytes() == weights.read_bytes()
    builtin = build_spec("yolo-fastest", 80, 320)
    assert [b.type for b in builtin.layers] == [b.type for b in loaded.spec.layers]
    for a, b in zip(builtin.layers, loaded.spec.layers):
        if a.type == "convolutional":
            assert conv_params(a) == conv_params(b)
    assert [i.inputs for i in analyse(builtin)] == [i.inputs for i in analyse(loaded.spec)]
    assert weights_to_bytes(builtin, read_weights(weights, builtin)) == weights.read_bytes()
    t = totals(analyse(builtin))
    assert 0.34e6 < t.trainable_params < 0.36e6 and 0.12e9 < t.macs < 0.13e9  # 0.35 M, 0.25 BFLOPs (2 x MACs)


def test_official_tiny_header_through_h5_with_export_cli(tmp_path):
    """The official YOLOv3-tiny's header (seen at bytes 13-20) survives `yolo3 export` .weights -> .h5 -> .weights."""
    import subprocess
    import sys

    from conftest import ROOT, TINY_CFG, TINY_WEIGHTS

    require_shared("weights", "yolov3-tiny-coco", "yolov3-tiny.weights")
    run = lambda *a: subprocess.run([sys.executable, "-m", "yolo3", "export", *a], capture_output=True, text=True, cwd=ROOT)
    r = run("--cfg", str(TINY_CFG), "--weights", str(TINY_WEIGHTS), "--out", str(tmp_path / "t.h5"))
    assert r.returncode == 0, r.stderr
    r = run("--cfg", str(TINY_CFG), "--weights", str(tmp_path / "t.h5"), "--out", str(tmp_path / "t.weights"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "t.weights").read_bytes() == TINY_WEIGHTS.read_bytes()


UNSUPPORTED = [
    (STEM + conv(8, activation="gelu") + HEAD, 12, "activation=gelu"),
    (STEM + "[route]\nlayers=-1\ngroups=3\n" + HEAD, 12, "groups=3 does not divide the 8 channels"),
    (STEM + "[route]\nlayers=-1\ngroups=2\ngroup_id=2\n" + HEAD, 12, "group_id=2"),
    (STEM + "[dropout]\nprobability=1.5\n" + HEAD, 12, "probability=1.5"),
    (STEM + conv(8) + "[shortcut]\nfrom=-2\nweights_type=per_feature\n" + HEAD, 19, "weights_type"),
    (STEM + conv(8) + "[shortcut]\nfrom=-2\nactivation=gelu\n" + HEAD, 19, "activation=gelu"),
    (STEM + "[maxpool]\nsize=2\nstride=2\npadding=3\n" + HEAD, 12, "padding=3"),
    (STEM + conv(12, groups=5) + HEAD, 12, "groups=5 must divide"),
    (STEM + HEAD.replace("num=3", "num=3\nscale_x_y=0.5"), 18, "scale_x_y=0.5"),
    (STEM + HEAD.replace("num=3", "num=3\nnew_coords=1"), 18, "new_coords"),
    (STEM + "[crop]\ncrop_width=4\n", 12, "unsupported section [crop]"),
]


@pytest.mark.parametrize("text,line,reason", UNSUPPORTED)
def test_unsupported_names_file_line_and_key(tmp_path, text, line, reason):
    from yolo3.spec import read_cfg

    path = tmp_path / "light.cfg"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        read_cfg(path)
    message = str(err.value)
    assert str(path) in message and f"line {line}:" in message and reason in message, message


def test_opencv_is_available():
    assert cv2.__version__ and SHARED is not None


def yolo_head(mask):
    """A 1x1 head convolution and its [yolo] (3 classes, scale_x_y 1.05) over the toy anchors."""
    return (conv(24, 1, activation="linear", bn=0) + f"[yolo]\nmask={mask}\nanchors=6,8, 10,12, 14,20, 20,26, 30,34, 44,50\n"
            "classes=3\nnum=6\nscale_x_y=1.05\n")  # fmt: skip


# A small network with every light construct the compression chain meets: Darknet max-pool padding,
# an inverted-residual block (expand, depthwise, linear project, dropout, shortcut), a CSP route group,
# mish / relu / swish, and heads with scale_x_y.
LIGHT_TOY_CFG = """[net]
width=64
height=64
channels=3
""" + conv(16) + "[maxpool]\nsize=3\nstride=2\n" + conv(32, 1) + conv(32, groups=32) + conv(16, 1, activation="linear") + """[dropout]
probability=.15
[shortcut]
from=-5
activation=linear
""" + conv(32, 3, 2, activation="mish") + "[route]\nlayers=-1\ngroups=2\ngroup_id=1\n" + conv(16, activation="relu") + """[route]
layers=-1,-2
""" + conv(32, 1, activation="swish") + """[maxpool]
size=2
stride=2
""" + yolo_head("3,4,5") + "[route]\nlayers=-4\n" + yolo_head("0,1,2")


def test_light_toy_matches_opencv(tmp_path):
    spec = parse_cfg(LIGHT_TOY_CFG)
    assert check_against_opencv(spec, random_weights(spec, seed=2), tmp_path) < 1e-3


def test_surgery_ties_depthwise_channels_and_keeps_route_groups_whole(tmp_path):
    """Removing channels of an expand + depthwise pair (BN scale 0) leaves the outputs unchanged; OpenCV loads the result."""
    from compression.prune.surgery import channel_groups, prune_channels
    from yolo3.keras_model import build_model, set_darknet_weights

    spec = parse_cfg(LIGHT_TOY_CFG)
    weights = random_weights(spec, seed=2)
    groups = {g.id: g for g in channel_groups(spec)}
    assert groups[2].members == [2, 3] and groups[2].prunable  # expand and depthwise: one unit
    assert groups[0].members == [0, 4] and groups[0].prunable  # stem and project, tied by the shortcut
    assert not groups[7].prunable  # split by the grouped [route]: every channel stays
    assert 3 not in groups[2].consumers  # the depthwise reads its own channels, not the group's
    removed = [1, 4, 5, 9, 30]
    for i in (2, 3):
        weights.convs[i].bn[0][removed] = 0.0
    mask = np.ones(32, bool)
    mask[removed] = False
    result = prune_channels(spec, weights, {2: mask})
    assert result.spec.layers[3].get_int("groups") == 27 and result.spec.layers[3].get_int("filters") == 27
    x = np.random.RandomState(4).rand(2, 64, 64, 3).astype(np.float32)
    before = build_model(spec)
    set_darknet_weights(before, spec, weights)
    after = build_model(result.spec)
    set_darknet_weights(after, result.spec, result.weights)
    for a, b in zip(before(x), after(x)):
        assert np.abs(np.asarray(a) - np.asarray(b)).max() < 1e-4
    assert check_against_opencv(result.spec, result.weights, tmp_path) < 1e-3
    with pytest.raises(UserError, match="grouped"):
        prune_channels(spec, weights, {7: np.arange(32) % 2 == 0})


def test_planner_costs_follow_depthwise_ties():
    """The planner's MACs of a pruned Yolo-Fastest equal the pruned architecture's, depthwise layers counted per channel."""
    from compression.budget.planner import ChannelMap, MacsCost
    from yolo3.spec import analyse, totals
    from yolo3.zoo import build_spec

    spec = build_spec("yolo-fastest", 3, 320)
    cmap = ChannelMap(spec)
    kept = {u: max(1, n // 2) for u, n in cmap.units.items()}
    for size in (320, 256):
        assert MacsCost(cmap)(cmap.full(), size) == totals(analyse(spec, size, size)).macs
        assert MacsCost(cmap)(kept, size) == totals(analyse(cmap.spec_with(kept), size, size)).macs


def light_toy_config(folder, data, cfg: str = LIGHT_TOY_CFG):
    """A config for ``cfg`` (LIGHT_TOY_CFG unless given) with random weights on the synthetic shapes (3 classes, 64 px)."""
    import json

    from yolo3.keras_model import build_model, set_darknet_weights
    from yolo3.models import save_model

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "light.cfg").write_text(cfg)
    spec = parse_cfg(cfg, "light.cfg")
    model = build_model(spec)
    set_darknet_weights(model, spec, random_weights(spec, seed=1))
    save_model(model, spec, folder / "light.h5")
    config = {
        "model": {"architecture": "light.cfg", "input_size": 64, "labels": ["circle", "square", "triangle"], "weights": "light.h5"},
        "train": {"train_image_folder": str(data / "images"), "train_annot_folder": str(data / "annotations"), "batch_size": 4,
                  "run_dir": str(folder / "run"), "nb_epochs": 1, "warmup_epochs": 0, "freeze_backbone_epochs": 0},
        "valid": {"valid_image_folder": str(data / "images"), "valid_annot_folder": str(data / "annotations")},
        "clustering": {"clusters": 8},
        "pruning": {"finetune_epochs": 0, "layer_blocks": 1},
    }  # fmt: skip
    path = folder / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_light_model_through_the_whole_tool(tmp_path, synthetic_valid):
    """Train, evaluate, every pruning method, clustering, QAT and int8, the edge runner; the pruned Darknet files load in OpenCV."""
    import json

    from yolo3.darknet import read_weights
    from yolo3.lite import TFLitePredictor
    from yolo3_cli.main import main

    config = light_toy_config(tmp_path, synthetic_valid)
    c = ["-c", str(config)]
    assert main(["train", *c, "--epochs", "1", "--quiet"]) == 0
    best = tmp_path / "run" / "best.h5"
    assert best.is_file()
    assert main(["evaluate", *c, "--model", str(best), "--json", str(tmp_path / "eval.json"), "--quiet"]) == 0
    assert 0 <= json.loads((tmp_path / "eval.json").read_text())["mAP50"] <= 1
    for method in ("magnitude", "similarity", "slimming", "layers"):
        out = tmp_path / f"{method}.h5"
        epochs = ["--finetune-epochs", "1"] if method == "magnitude" else []  # TFMOT prunes while training
        assert main(["prune", *c, "--method", method, "--model", str(best), "--out", str(out), *epochs, "--quiet"]) == 0, method
        assert out.is_file()
    pruned = tmp_path / "similarity.cfg"
    spec = parse_cfg(pruned.read_text())
    assert spec.layers[3].get_int("groups") == spec.layers[3].get_int("filters") < 32  # the depthwise followed its input
    assert check_against_opencv(spec, read_weights(tmp_path / "similarity.weights", spec), tmp_path / "cv") < 1e-3
    assert len(parse_cfg((tmp_path / "layers.cfg").read_text()).layers) == len(parse_cfg(LIGHT_TOY_CFG).layers) - 5
    int8 = clustered_qat_int8(c, tmp_path / "similarity.h5", tmp_path)
    predictor = TFLitePredictor(int8)
    assert predictor.heads[0].scale_xy == pytest.approx(1.05)
    ops = {op["op_name"] for op in predictor.interpreter._get_ops_details()}
    assert "DEPTHWISE_CONV_2D" in ops and "MIRROR_PAD" in ops and "FLEX" not in " ".join(ops)
    image = next((synthetic_valid / "images").glob("*"))
    assert main(["detect", *c, "--model", str(tmp_path / "device" / "model.tflite"), "-i", str(image), "-o", str(tmp_path / "drawn")]) == 0
    assert_device_runner_detects(tmp_path / "device", image)


def clustered_qat_int8(c: list[str], source, folder):
    """``source`` clustered, then int8 through one epoch of QAT with its device folder (``folder/device``): the int8 file's path."""
    from yolo3_cli.main import main

    clustered = folder / "clustered.h5"
    assert main(["cluster", *c, "--model", str(source), "--out", str(clustered), "--finetune-epochs", "0", "--quiet"]) == 0
    int8 = folder / "qat-int8.tflite"
    assert main(["convert", *c, "--model", str(clustered), "--format", "int8", "--samples", "4", "--qat", "--qat-epochs", "1",
                 "--out", str(int8), "--bundle", str(folder / "device"), "--quiet"]) == 0  # fmt: skip
    return int8


def assert_device_runner_detects(device, image) -> None:
    """The device's runner, from the bundle folder (numpy, Pillow and LiteRT only), prints detections for ``image``."""
    import json
    import subprocess
    import sys

    runner = subprocess.run([sys.executable, "-m", "yolo3.lite", "model.tflite", str(image), "--json"], cwd=device, capture_output=True,
                            text=True)  # fmt: skip
    assert runner.returncode == 0, runner.stderr[-2000:]
    assert isinstance(json.loads(runner.stdout.strip().splitlines()[-1])["detections"], list)


def test_latency_model_probes_depthwise_layers_as_depthwise():
    """Block variants of a depthwise layer keep one filter per input channel, and fitting them needs no impossible architecture."""
    from compression.budget.latency_model import block_items, fit_blocks
    from compression.budget.latency_worker import block_model
    from yolo3.kerasenv import keras
    from yolo3.zoo import build_spec

    spec = build_spec("yolo-fastest", 3, 320)
    items = block_items(spec, [320, 256], 320, levels=(1.0, 0.75, 0.5))
    depthwise = [it for it in items if it.layer == 13]  # a 3x3 depthwise on 32 channels
    assert depthwise and all(it.filters == it.in_shapes[0][2] for it in depthwise)
    assert {it.filters for it in depthwise} >= {32, 24, 16}
    model = block_model(spec, 13, [list(s) for s in depthwise[-1].in_shapes], depthwise[-1].filters)
    assert isinstance(model.get_layer("conv_13"), keras.layers.DepthwiseConv2D)
    coefficients = fit_blocks(spec, [(it, 1.0 + 0.001 * k) for k, it in enumerate(items)])
    assert 13 in coefficients and len(coefficients[13]) == 4


def test_converted_probes_are_cached_by_what_they_are_and_shared_between_networks(tmp_path, monkeypatch):
    """A block probe is converted once: a second conversion, and the same block in a levered network, come from the cache."""
    from compression.budget.latency_model import Item, convert_items, probe_cache, probe_key
    from compression.budget.levers import Levers
    from yolo3.zoo import build_spec

    monkeypatch.setenv("YOLO3_CACHE", str(tmp_path / "cache"))
    spec = build_spec("yolov3-tiny", 3, 64)
    shapes = ((4, 4, 256),)
    items = [Item("block", 64, 10, shapes, 512), Item("block", 64, 10, shapes, 256)]  # conv_10 at two widths
    assert probe_key(spec, items[0]) != probe_key(spec, items[1])
    (tmp_path / "a").mkdir()
    first = convert_items(spec, items, tmp_path / "a", progress=False)
    assert [p.parent for p in first] == [tmp_path / "a"] * 2  # converted here, then copied into the cache
    cached = sorted(probe_cache().glob("*.tflite"))
    assert [p.name for p in cached] == sorted(f"{probe_key(spec, it)}.tflite" for it in items)
    assert [p.read_bytes() for p in sorted(first, key=lambda p: probe_key(spec, items[first.index(p)]))] == [p.read_bytes() for p in cached]
    # the levered network's conv_8 is the unlevered conv_10 (two max-pools folded away): the same probe, no conversion
    levered = Levers((0, 2)).apply_spec(spec)
    assert levered.layers[8].options == spec.layers[10].options
    (tmp_path / "b").mkdir()
    again = convert_items(levered, [Item("block", 64, 8, shapes, 512)], tmp_path / "b", progress=False)
    assert again[0].parent == probe_cache() and not list((tmp_path / "b").iterdir())
    monkeypatch.setenv("YOLO3_CACHE", "off")
    assert probe_cache() is None


def test_grouped_convolution_is_kept_whole_and_converts(tmp_path):
    """A grouped (not depthwise) convolution: its input and output channels are fixed for pruning; QAT wraps it; int8 converts it."""
    from compression.budget.latency_worker import convert_int8
    from compression.prune.surgery import channel_groups, prune_channels
    from compression.quantize.qat import quantize_model
    from yolo3.keras_model import build_model, set_darknet_weights
    from yolo3.lite import _interpreter_class

    spec = parse_cfg(STEM + conv(16, 1) + conv(16, groups=4) + conv(8, 1) + HEAD)
    groups = {g.id: g for g in channel_groups(spec)}
    assert not groups[1].prunable and not groups[2].prunable  # read by / made by the grouped convolution
    assert groups[3].prunable
    weights = random_weights(spec, seed=5)
    weights.convs[3].bn[0][:3] = 0.0
    result = prune_channels(spec, weights, {3: np.arange(8) >= 3})
    assert result.spec.layers[2].get_int("groups") == 4 and result.spec.layers[3].get_int("filters") == 5
    assert check_against_opencv(result.spec, result.weights, tmp_path) < 1e-3
    model = build_model(result.spec)
    set_darknet_weights(model, result.spec, result.weights)
    x = np.random.RandomState(0).rand(1, 64, 64, 3).astype(np.float32)
    assert np.asarray(quantize_model(model, "qat")(x)).shape == np.asarray(model(x)).shape
    interpreter = _interpreter_class()(model_content=convert_int8(model))
    interpreter.allocate_tensors()
    assert "CONV_2D" in {op["op_name"] for op in interpreter._get_ops_details()}


def test_cross_layer_equalisation_keeps_the_outputs_and_equalises_the_ranges():
    """CLE on conv -> conv 1x1 -> depthwise -> conv 1x1 (leaky, leaky, leaky, linear) -> ...: outputs unchanged within 1e-4, each pair's
    ranges equal; the pair with ReLU6 between is left alone."""
    from compression.quantize.equalize import _in_range, _out_range, equalizable_pairs, equalize
    from yolo3.keras_model import build_model, set_darknet_weights

    cfg = STEM + conv(16, 1) + conv(16, 3, groups=16) + conv(8, 1, activation="linear") + conv(8, 1, activation="relu6") + conv(8, 3) + HEAD
    spec = parse_cfg(cfg, "cle.cfg")
    weights = random_weights(spec, seed=3)
    rng = np.random.default_rng(0)
    for i in (1, 2):  # channels of very different scales, as a trained light backbone has
        w = weights.convs[i]
        weights.convs[i] = type(w)(w.kernel * rng.uniform(0.05, 20, w.filters).astype(np.float32), w.bias, w.bn)
    pairs, skipped = equalizable_pairs(spec)
    assert pairs == [(0, 1), (1, 2), (2, 3), (3, 4), (5, 6)] and len(skipped) == 1 and "relu6" in skipped[0] and "conv_4 -> conv_5" in skipped[0]
    equalized, report = equalize(spec, weights, iterations=200, tolerance=1e-7)
    before, after = build_model(spec), build_model(spec)
    set_darknet_weights(before, spec, weights)
    set_darknet_weights(after, spec, equalized)
    x = rng.uniform(0, 1, (2, 64, 64, 3)).astype(np.float32)
    a, b = np.asarray(before(x)), np.asarray(after(x))
    assert np.abs(a - b).max() <= 1e-4 * max(1.0, float(np.abs(a).max()))
    depthwise = {1: False, 2: True, 3: False, 4: False, 6: False}
    for p, q in pairs:  # at convergence every pair's ranges agree channel by channel
        np.testing.assert_allclose(_out_range(equalized.convs[p]), _in_range(equalized.convs[q], depthwise[q]), rtol=1e-3)
    spread = lambda r: r.max() / r.min()  # noqa: E731
    assert spread(_out_range(equalized.convs[1])) < spread(_out_range(weights.convs[1])) / 10  # the depthwise input is far more even
    assert report["iterations"] <= 200 and report["pairs"][:3] == ["conv_0 -> conv_1", "conv_1 -> conv_2", "conv_2 -> conv_3"]


def test_activation_equalisation_fills_the_range_before_each_depthwise_convolution_and_keeps_the_outputs(tmp_path):
    """Activation equalisation on conv 1x1 -> depthwise 3x3 -> conv 1x1 (linear): every channel of the tensor between the first two
    (before and after LeakyReLU) grows until it reaches the tensor's shared range, which stays as it was; the outputs stay within 1e-4;
    the pair whose reader is not depthwise is left and said why."""
    from PIL import Image

    from compression.quantize.equalize import depthwise_reader_pairs, equalize_activations, expansion, measure_channel_ranges
    from yolo3.keras_model import build_model, set_darknet_weights
    from yolo3.preprocess import letterbox, load_image

    spec = parse_cfg(STEM + conv(16, 1) + conv(16, 3, groups=16) + conv(8, 1, activation="linear") + HEAD, "ace.cfg")
    weights = random_weights(spec, seed=5)
    rng = np.random.default_rng(1)
    w = weights.convs[1]  # channels of very different scales, as a trained light backbone has
    weights.convs[1] = type(w)(w.kernel * rng.uniform(0.05, 20, w.filters).astype(np.float32), w.bias, w.bn)
    paths = []
    for k in range(4):
        paths.append(tmp_path / f"{k}.png")
        Image.fromarray(rng.integers(0, 256, (48 + 8 * k, 64, 3), dtype=np.uint8)).save(paths[-1])
    assert depthwise_reader_pairs(spec) == [(1, 2)]
    before, after = build_model(spec), build_model(spec)
    set_darknet_weights(before, spec, weights)
    measured = measure_channel_ranges(before, spec, [1], [str(p) for p in paths], 64)
    assert len(measured[1]) == 2  # before and after the activation
    assert expansion(measured[1]).max() > 5  # some channels used a small part of the shared range
    equalized, report = equalize_activations(spec, weights, measured)
    set_darknet_weights(after, spec, equalized)
    x = np.stack([letterbox(load_image(str(p)), 64)[0] for p in paths]).astype(np.float32)
    a, b = np.asarray(before(x)), np.asarray(after(x))
    assert np.abs(a - b).max() <= 1e-4 * max(1.0, float(np.abs(a).max()))
    again = measure_channel_ranges(after, spec, [1], [str(p) for p in paths], 64)
    np.testing.assert_allclose(expansion(again[1]), 1.0, rtol=1e-3)  # every channel now reaches the shared range on one side
    for (lo0, hi0), (lo1, hi1) in zip(measured[1], again[1]):  # and the shared range is the same
        np.testing.assert_allclose([lo1.min(), hi1.max()], [lo0.min(), hi0.max()], rtol=1e-4)
    assert report["pairs"] == ["conv_1 -> conv_2"] and report["median_expansion"] > 1
    assert any(r.startswith("conv_2 -> conv_3: conv_3 is not depthwise") for r in report["skipped"])


def test_bias_absorption_keeps_the_outputs_and_lowers_the_ranges_where_the_reader_is_unpadded():
    """Absorption on conv 3x3 -> 1x1 -> depthwise 3x3 -> 1x1 (linear) -> 1x1: channels sitting high (beta 5, gamma 0.001) are lowered by
    beta - 3 gamma and the reader adds it back — the outputs unchanged within 1e-4; the padded depthwise reader is left alone and said why."""
    from compression.quantize.bias import absorb_biases
    from yolo3.keras_model import build_model, set_darknet_weights
    from yolo3.kerasenv import keras
    from yolo3.names import bn_name

    spec = parse_cfg(STEM + conv(16, 1) + conv(16, 3, groups=16) + conv(8, 1, activation="linear") + conv(8, 1) + HEAD, "absorb.cfg")
    weights = random_weights(spec, seed=4)
    for i in (0, 2, 3):
        gamma, beta, mean, var = weights.convs[i].bn
        high = np.arange(len(beta)) % 2 == 0
        gamma, beta = np.where(high, 1e-3, gamma).astype(np.float32), np.where(high, 5.0, beta).astype(np.float32)
        weights.convs[i] = type(weights.convs[i])(weights.convs[i].kernel, None, (gamma, beta, mean, var))
    absorbed, report = absorb_biases(spec, weights)
    assert [p["pair"] for p in report["pairs"]] == ["conv_0 -> conv_1", "conv_2 -> conv_3", "conv_3 -> conv_4"]
    assert len(report["skipped"]) == 1 and "conv_1 -> conv_2" in report["skipped"][0] and "zero padding" in report["skipped"][0]
    models = [build_model(spec), build_model(spec)]
    for m, w in zip(models, (weights, absorbed)):
        set_darknet_weights(m, spec, w)
    x = np.random.default_rng(0).uniform(0, 1, (2, 64, 64, 3)).astype(np.float32)
    a, b = (np.asarray(m(x)) for m in models)
    assert np.abs(a - b).max() <= 1e-4 * max(1.0, float(np.abs(a).max()))
    pre = [keras.Model(m.inputs, m.get_layer(bn_name(0)).output)(x).numpy() for m in models]
    assert pre[0][..., ::2].min() > 4.9 and pre[1][..., ::2].max() < 0.01  # the high channels come down to 3 gamma above zero
    assert np.abs(pre[1][..., 1::2] - pre[0][..., 1::2]).max() < 1e-5 and pre[1].max() < pre[0].max() - 3  # the others stay


def test_bias_correction_brings_each_int8_convolution_to_the_float_mean_and_edits_only_biases():
    """Empirical bias correction of an int8 file (conv -> 1x1 -> depthwise 3x3 -> 1x1 linear -> head): afterwards every convolution's
    int8 output has the float model's mean per channel on the calibration images within a fraction of its step (before: further);
    the file differs from the converter's only in the int32 biases."""
    from tensorflow.lite.python.convert import mlir_quantize
    from tensorflow.lite.tools import flatbuffer_utils

    from compression.quantize.bias import correct_int8_biases, correctable_ops
    from yolo3.keras_model import build_model, set_darknet_weights
    from yolo3.kerasenv import tf

    spec = parse_cfg(STEM + conv(16, 1) + conv(16, 3, groups=16) + conv(8, 1, activation="linear") + HEAD, "bias.cfg")
    model = build_model(spec)
    set_darknet_weights(model, spec, random_weights(spec, seed=6))
    rng = np.random.default_rng(2)
    batches = [rng.uniform(0, 1, (1, 64, 64, 3)).astype(np.float32) for _ in range(6)]
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([b] for b in batches)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    converter._experimental_calibrate_only = True
    calibrated = converter.convert()
    quantized = mlir_quantize(calibrated, fully_quantize=True, input_data_type=tf.int8, output_data_type=tf.int8)
    corrected, summary = correct_int8_biases(quantized, calibrated, batches)
    ops = correctable_ops(quantized, calibrated)
    assert summary["layers"] == len(ops) == len(spec.conv_indices()) and summary["images"] == 6

    def mean_errors(content: bytes) -> list[float]:
        """Per convolution: the largest |int8 mean - float mean| over channels, in the output's quantization steps."""
        runs = []
        for model_bytes in (content, calibrated):
            it = tf.lite.Interpreter(model_content=model_bytes, experimental_preserve_all_tensors=True)
            it.allocate_tensors()
            d = it.get_input_details()[0]
            scale, zero = d["quantization"]
            sums = {}
            for x in batches:
                it.set_tensor(d["index"], np.round(x / scale + zero).astype(np.int8) if scale else x)
                it.invoke()
                for op in ops:
                    key = op["out"] if model_bytes is content else op["reference"]
                    v = it.get_tensor(key).astype(np.float64)
                    sums[key] = sums.get(key, 0) + v.reshape(-1, v.shape[-1]).mean(axis=0) / len(batches)
            runs.append((it, sums))
        (qi, q), (_, f) = runs
        errors = []
        for op in ops:
            p = qi.get_tensor_details()[op["out"]]["quantization_parameters"]
            errors.append(float(np.abs((q[op["out"]] - p["zero_points"][0]) * p["scales"][0] - f[op["reference"]]).max() / p["scales"][0]))
        return errors

    before, after = mean_errors(quantized), mean_errors(corrected)
    assert max(after) < 0.5 and sum(after) < sum(before), (before, after)
    a, b = (flatbuffer_utils.convert_bytearray_to_object(bytearray(m)) for m in (quantized, corrected))
    biases = {a.subgraphs[0].tensors[op["bias"]].buffer for op in ops}
    changed = {i for i, (x, y) in enumerate(zip(a.buffers, b.buffers)) if not np.array_equal(x.data, y.data)}
    assert changed and changed <= biases


def test_adaround_weights_convert_to_exactly_the_int8_values_it_chose():
    """AdaRound on conv -> 1x1 -> depthwise 3x3 stride 2 -> 1x1 -> head: the BN-folded weights it writes back sit on the converter's
    per-channel grid, the int8 kernels in the .tflite are those integers, some differ from round-to-nearest, and no layer's output
    error on its patches is worse than round-to-nearest's."""
    from compression.budget.latency_worker import convert_int8
    from compression.quantize.adaround import adaround, channel_scales, fold, nearest
    from yolo3.keras_model import build_model, set_darknet_weights
    from yolo3.lite import _interpreter_class

    spec = parse_cfg(STEM + conv(16, 1) + conv(16, 3, 2, groups=16) + conv(24, 1, activation="linear") + HEAD, "adaround.cfg")
    weights = random_weights(spec, seed=7)
    model = build_model(spec)
    set_darknet_weights(model, spec, weights)
    rng = np.random.default_rng(1)
    batches = [rng.uniform(0, 1, (1, 64, 64, 3)).astype(np.float32) for _ in range(3)]
    rounded, report = adaround(model, spec, weights, batches, iterations=60)
    assert [r["layer"] for r in report["layers"]] == [f"conv_{i}" for i in spec.conv_indices()]
    assert all(r["error_adaround"] <= r["error_nearest"] for r in report["layers"]) and report["improved"] >= 1
    chosen, changed = {}, 0
    for i in spec.conv_indices():
        folded, _ = fold(rounded.convs[i])
        q = folded / channel_scales(folded)
        np.testing.assert_allclose(q, np.round(q), atol=1e-3)  # on the grid
        chosen[i] = np.round(q).astype(np.int8)
        before, _ = fold(weights.convs[i])
        changed += int((chosen[i] != nearest(before, channel_scales(before))).sum())
    assert changed > 0
    set_darknet_weights(model, spec, rounded)
    interpreter = _interpreter_class()(model_content=convert_int8(model))
    interpreter.allocate_tensors()
    found = {}
    for t in interpreter.get_tensor_details():
        if t["dtype"] == np.int8 and len(t["shape"]) == 4 and len(t["quantization_parameters"]["scales"]) > 1:
            k = interpreter.get_tensor(t["index"])
            found[tuple(np.transpose(k, (1, 2, 3, 0)).shape)] = np.transpose(k, (1, 2, 3, 0))  # (out|1, kh, kw, in|C) -> Darknet layout
    for i, q in chosen.items():
        key = q.shape if q.shape in found else (q.shape[0], q.shape[1], q.shape[3], q.shape[2])  # depthwise: TFLite (1, kh, kw, C)
        got = found[key] if key == q.shape else np.transpose(found[key], (0, 1, 3, 2))
        np.testing.assert_array_equal(got, q, err_msg=f"conv_{i}")


def test_compress_int8_step_tries_adaround_beside_ranges_and_keeps_the_best(tmp_path, synthetic_valid):
    """compress's int8 step: plain, activation equalisation (the later steps start from its model when kept), refitted ranges (the better of
    two refits), bias correction (with the kept ranges) and AdaRound (converted with the ranges and the correction when those were kept), each
    kept only if it beats the best so far with 90 % confidence, the last kept one as the final file; a clustered model is bias-corrected (only
    biases move) but neither equalised nor AdaRounded."""
    from types import SimpleNamespace

    from compression.steps import Int8Files, int8_keep_better
    from yolo3.keras_model import build_model, set_darknet_weights
    from yolo3.metrics import match_detections
    from yolo3.models import save_model
    from yolo3.resampling import weighted_map50

    spec = parse_cfg(STEM + conv(8, 3, 2, groups=8) + conv(8, 1) + HEAD, "int8.cfg")  # conv_0 -> depthwise conv_1: one pair to equalise
    model = build_model(spec)
    set_darknet_weights(model, spec, random_weights(spec, seed=2))
    images = sorted(str(p) for p in (synthetic_valid / "images").glob("*.jpg"))[:3]
    config = SimpleNamespace(labels=["a", "b"])
    # each file's matched detections on 40 images (boxes further off for the plainer steps), so that every gain is judged as
    # compress judges it: kept only if the paired bootstrap confirms it with 90 % confidence
    records, _ = random_set(7, images=40)
    matched = {name: match_detections(records, random_set(7, images=40, noise=noise)[1], 3)
               for name, noise in (("ptq-int8.tflite", 14.0), ("equalized-int8.tflite", 10.0), ("ranges-int8.tflite", 7.5), ("ranges-mean-int8.tflite", 6.5),
                                   ("bias-int8.tflite", 3.5), ("adaround-int8.tflite", 0.5))}  # fmt: skip
    scores = {name: float(weighted_map50(m, np.ones((1, 40)))[0]) for name, m in matched.items()}
    for clustered in (False, True):
        folder = tmp_path / str(clustered)
        folder.mkdir()
        save_model(model, spec, folder / "m.h5", {"clustering": {"clusters": 8}} if clustered else None)
        files = Int8Files(*(folder / n for n in ("ptq-int8.tflite", "qat", "qat-int8.tflite", "final.tflite", "ranges-int8.tflite", "adaround.h5",
                                                  "adaround-int8.tflite", "ranges-mean-int8.tflite", "bias-int8.tflite", "equalized.h5",
                                                  "equalized-int8.tflite")))  # fmt: skip
        result = int8_keep_better(config, folder / "m.h5", 64, images, files, qat_epochs=0, score=lambda p: scores[p.name], progress=False,
                                  ranges=not clustered, adaround_iterations=10, matches=lambda p: matched[p.name], confidence=0.9,
                                  bias_correction=True, equalization=True)  # fmt: skip
        if clustered:
            assert set(result["results"]) == {"ptq", "bias"} and result["chosen"] == "bias" and not files.adaround_h5.exists() and not files.equalized_h5.exists()
            assert result["results"]["bias"]["ranges"] == "minmax" and result["results"]["bias"]["bias_correction"]["layers"] == len(spec.conv_indices())
        else:
            r = result["results"]
            assert r["equalized"]["pairs"] == 1 and r["equalized"]["vs"] == "ptq" and r["ranges"]["vs"] == "equalized"

            def weight_scales(path):  # every int8 kernel's per-channel scales: the refit after equalisation converts the equalised weights
                from yolo3.lite import _interpreter_class

                details = _interpreter_class()(model_path=str(path)).get_tensor_details()
                return sorted(tuple(np.round(d["quantization_parameters"]["scales"], 9)) for d in details
                              if d["dtype"] == np.int8 and len(d["quantization_parameters"]["scales"]) > 1)  # fmt: skip

            assert weight_scales(files.ranges_mean) == weight_scales(files.equalized) != weight_scales(files.ptq)
            # the better refit (here the mean of per-image extremes) is the one judged, and AdaRound is converted with it
            assert r["ranges"]["file"] == "ranges-mean-int8.tflite" and r["ranges"]["tried"]["mse"] < r["ranges"]["tried"]["mean"]
            assert r["bias"]["ranges"] == "mean" and r["bias"]["vs"] == "ranges"
            assert result["chosen"] == "adaround" and r["adaround"]["ranges"] == "mean" and r["adaround"]["bias_correction"] and r["adaround"]["vs"] == "bias"
            assert all(0 < r[k]["sure_gain_points"] < r[k]["gain_points"] for k in ("ranges", "bias", "adaround")) and result["confidence"] == 0.9
            assert files.adaround.read_bytes() != files.bias.read_bytes()
            assert files.final.read_bytes() == files.adaround.read_bytes() and files.adaround_h5.exists()
