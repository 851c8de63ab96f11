import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, TINY_CFG, TINY_WEIGHTS, random_weights, require_shared
from yolo3.darknet import Header, expected_floats, read_weights, weights_to_bytes, write_weights
from yolo3.errors import UserError
from yolo3.zoo import build_spec, resolve_spec


def test_official_tiny_round_trip_through_keras_is_byte_identical():
    require_shared("weights", "yolov3-tiny-coco", "yolov3-tiny.weights")
    from yolo3.keras_model import build_model, get_darknet_weights, set_darknet_weights

    spec = resolve_spec(TINY_CFG)
    weights = read_weights(TINY_WEIGHTS, spec)
    model = build_model(spec)
    set_darknet_weights(model, spec, weights)
    again = weights_to_bytes(spec, get_darknet_weights(model, spec, weights.header))
    assert again == TINY_WEIGHTS.read_bytes()


def test_sixteen_byte_header(tmp_path):
    spec = build_spec("yolov3-tiny", 2, 64)
    weights = random_weights(spec, header=Header(0, 1, 0, 1234))
    path = tmp_path / "old.weights"
    write_weights(path, spec, weights)
    assert path.stat().st_size == 16 + 4 * expected_floats(spec)
    back = read_weights(path, spec)
    assert (back.header.major, back.header.minor, back.header.seen) == (0, 1, 1234)
    assert weights_to_bytes(spec, back) == path.read_bytes()
    assert np.array_equal(back.convs[0].kernel, weights.convs[0].kernel)


@pytest.mark.parametrize("delta", [-4, +8])
def test_wrong_size_names_expected_and_actual_bytes(tmp_path, delta):
    spec = build_spec("yolov3-tiny", 2, 64)
    good = weights_to_bytes(spec, random_weights(spec))
    path = tmp_path / "bad.weights"
    path.write_bytes(good[:delta] if delta < 0 else good + b"\0" * delta)
    with pytest.raises(UserError) as err:
        read_weights(path, spec)
    msg = err.value.message
    assert str(path) in msg
    assert f"{len(good):,} bytes" in msg and f"{len(good) + delta:,} bytes" in msg
    assert ("truncated" if delta < 0 else "too long") in msg


def test_wrong_class_count_is_reported(tmp_path):
    spec = build_spec("yolov3-tiny", 2, 64)
    path = tmp_path / "two.weights"
    write_weights(path, spec, random_weights(spec))
    with pytest.raises(UserError, match="bytes"):
        read_weights(path, build_spec("yolov3-tiny", 3, 64))


def test_export_cli_weights_h5_weights(tmp_path):
    spec = build_spec("yolov3-tiny", 2, 64)
    cfg = tmp_path / "tiny2.cfg"
    from yolo3.spec import write_cfg

    write_cfg(spec, cfg)
    src = tmp_path / "in.weights"
    write_weights(src, spec, random_weights(spec, header=Header(0, 2, 5, 777)))
    h5 = tmp_path / "model.h5"
    back = tmp_path / "back.weights"
    run = lambda *a: subprocess.run([sys.executable, "-m", "yolo3", "export", *a], capture_output=True, text=True, cwd=ROOT)
    r = run("--cfg", str(cfg), "--weights", str(src), "--out", str(h5))
    assert r.returncode == 0, r.stderr
    r = run("--cfg", str(cfg), "--weights", str(h5), "--out", str(back))
    assert r.returncode == 0, r.stderr
    # the header (version, seen) travels in the .h5: byte-identical, header included
    assert back.read_bytes() == src.read_bytes()
    r = run("--cfg", str(cfg), "--weights", str(h5), "--out", str(back))
    assert r.returncode == 2 and "--force" in r.stderr and "Traceback" not in r.stderr
    r = run("--cfg", str(cfg), "--weights", str(tmp_path / "missing.weights"), "--out", str(tmp_path / "x.h5"))
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_h5_carries_its_cfg(tmp_path):
    from yolo3.keras_model import build_model
    from yolo3.models import load_model, save_model

    spec = build_spec("yolov3-tiny", 3, 96)
    model = build_model(spec)
    save_model(model, spec, tmp_path / "m.h5")
    loaded = load_model(tmp_path / "m.h5")
    assert loaded.spec.num_classes == 3 and loaded.input_hw == (96, 96)
    x = np.random.RandomState(0).rand(1, 96, 96, 3).astype(np.float32)
    for a, b in zip(model(x), loaded.model(x)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
