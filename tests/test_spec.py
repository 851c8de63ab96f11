import json
import subprocess
import sys

import pytest

from conftest import ROOT, require_shared
from yolo3.errors import UserError
from yolo3.spec import analyse, format_cfg, parse_cfg, totals, with_classes
from yolo3.zoo import build_spec, resolve_spec

EXPECTED = {  # 80 classes at 416: (params incl. BN statistics, trainable)
    "yolov3": (62_001_757, 61_949_149),
    "yolov3-spp": (63_052_381, None),
    "yolov3-tiny": (8_858_734, None),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_parameter_counts(name):
    t = totals(analyse(build_spec(name, 80, 416)))
    params, trainable = EXPECTED[name]
    assert t.params == params
    if trainable is not None:
        assert t.trainable_params == trainable


def test_yolov3_macs_match_darknet():
    macs = totals(analyse(build_spec("yolov3", 80, 416))).macs
    assert abs(macs - 65.86e9 / 2) / (65.86e9 / 2) < 0.005
    # Darknet reports 140.69 BFLOPs at 608
    macs608 = totals(analyse(build_spec("yolov3", 80, 608))).macs
    assert abs(2 * macs608 - 140.69e9) / 140.69e9 < 0.005


def test_keras_parameter_count_matches_spec():
    from yolo3.keras_model import build_model

    spec = build_spec("yolov3-tiny", 3, 160)
    model = build_model(spec)
    t = totals(analyse(spec))
    assert model.count_params() == t.params
    assert [tuple(o.shape[1:]) for o in model.outputs] == [(5, 5, 24), (10, 10, 24)]
    assert all(layer.__class__.__module__.startswith("tf_keras") for layer in model.layers)


@pytest.mark.parametrize("name", ["yolov3", "yolov3-spp", "yolov3-tiny"])
def test_reference_cfg_equals_builtin(name):
    path = require_shared("darknet", "cfg", f"{name}.cfg")
    from yolo3.darknet import conv_shapes

    from_cfg = resolve_spec(path, size=416)
    builtin = build_spec(name, 80, 416)
    assert [b.type for b in from_cfg.layers] == [b.type for b in builtin.layers]
    a, b = analyse(from_cfg), analyse(builtin)
    assert [(x.inputs, x.out_shape) for x in a] == [(y.inputs, y.out_shape) for y in b]
    assert conv_shapes(from_cfg) == conv_shapes(builtin)


@pytest.mark.parametrize("name", ["yolov3", "yolov3-spp", "yolov3-tiny"])
def test_cfg_round_trip(name):
    spec = build_spec(name, 7, 320)
    again = parse_cfg(format_cfg(spec))
    assert [(b.type, b.options) for b in again.layers] == [(b.type, b.options) for b in spec.layers]
    assert totals(analyse(again)) == totals(analyse(spec))


def test_any_class_count_and_size():
    spec = with_classes(build_spec("yolov3", 80, 416), 2)
    assert spec.num_classes == 2
    infos = analyse(spec, 320, 320)
    assert [infos[i - 1].out_shape for i in spec.yolo_indices()] == [(10, 10, 21), (20, 20, 21), (40, 40, 21)]
    with pytest.raises(UserError, match="multiple of 32"):
        build_spec("yolov3", 80, 100)


BAD_CFGS = [
    ("[net]\nwidth=64\nheight=64\n[convolutional]\nfilters=8\nsize=3\nactivation=gelu\n", 4, "activation=gelu"),
    ("[net]\n[convolutional]\nfilters=eight\n", 2, "not an integer"),
    ("[net]\n[route]\nlayers=-3\n", 2, "not an earlier layer"),
    ("[net]\n[conv]\n", 2, "unsupported section"),
    ("[net]\nwidth 416\n", 2, "expected key=value"),
    ("filters=3\n[net]\n", 1, "before any"),
    (
        "[net]\nwidth=64\nheight=64\n[convolutional]\nfilters=10\nsize=1\nactivation=linear\n[yolo]\nmask=0,1,2\nanchors=1,1,2,2,3,3\nclasses=2\n",
        8,
        "needs 21 input channels",
    ),
    (
        "[net]\nwidth=64\nheight=64\n[convolutional]\nfilters=8\nsize=3\nstride=2\npad=1\nactivation=leaky\n[convolutional]\nfilters=8\nsize=3\npad=1\nactivation=leaky\n[shortcut]\nfrom=-3\n",
        15,
        "not an earlier layer",
    ),
]


# The line named is the one of the offending [section] header.
@pytest.mark.parametrize("text,line,reason", BAD_CFGS)
def test_malformed_cfg_names_file_line_reason(tmp_path, text, line, reason):
    path = tmp_path / "bad.cfg"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        resolve_spec(path)
    assert str(path) in err.value.message
    assert f"line {line}" in err.value.message
    assert reason in err.value.message


def test_cli_info_json_and_table():
    out = subprocess.run(
        [sys.executable, "-m", "yolo3", "info", "yolov3", "--json"], capture_output=True, text=True, cwd=ROOT, check=True
    )
    data = json.loads(out.stdout)
    assert (data["params"], data["trainable_params"]) == (62_001_757, 61_949_149)
    assert data["macs"] == totals(analyse(build_spec("yolov3"))).macs
    table = subprocess.run(
        [sys.executable, "-m", "yolo3", "info", "yolov3-tiny", "--classes", "3", "--size", "320"],
        capture_output=True, text=True, cwd=ROOT, check=True,
    ).stdout  # fmt: skip
    assert "320 x 320 x    3" in table and "Total BFLOPs" in table


def test_cli_bad_cfg_is_one_line(tmp_path):
    path = tmp_path / "bad.cfg"
    path.write_text("[net]\n[route]\nlayers=5\n")
    out = subprocess.run([sys.executable, "-m", "yolo3", "info", str(path)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 and f"{path}:line 2" in out.stderr
