import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from yolo3.postprocess import HeadSpec, decode, detect, nms
from yolo3.preprocess import letterbox, letterbox_geometry, letterboxed_images, load_image


def logit(p):
    return np.log(p / (1 - p))


def test_decode_one_cell():
    head = HeadSpec(((10, 20), (30, 40)), classes=2)
    out = np.full((2, 2, 2 * 7), -20.0, np.float32)
    # cell (row 1, col 0), anchor 1: centre offset 0.5, size = anchor, objectness .8, class 1 prob .9
    out[1, 0, 7:14] = [0, 0, 0, 0, logit(0.8), -20, logit(0.9)]
    boxes, obj, probs = decode(out, head, (64, 64))
    k = (1 * 2 + 0) * 2 + 1
    np.testing.assert_allclose(boxes[k], [16 - 15, 48 - 20, 16 + 15, 48 + 20], atol=1e-4)
    assert obj[k] == pytest.approx(0.8, abs=1e-6) and probs[k, 1] == pytest.approx(0.9, abs=1e-6)
    d = detect([out], [head], (64, 64), None, score_threshold=0.5)
    assert len(d) == 1 and d.classes[0] == 1 and d.scores[0] == pytest.approx(0.72, abs=1e-5)


def test_nms_is_class_aware():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    classes = np.array([0, 0, 1, 0])
    assert nms(boxes, scores, classes, 0.45, 100).tolist() == [0, 2, 3]
    assert nms(boxes, scores, classes, 0.45, 2).tolist() == [0, 2]


def test_letterbox_round_trip():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, :100] = 255
    tensor, box = letterbox(image, 64)
    assert tensor.shape == (64, 64, 3) and tensor.dtype == np.float32
    assert box.scale == pytest.approx(0.32) and (box.pad_x, box.pad_y) == (0, 16)
    assert tensor[0, 0, 0] == 0.5 and tensor[32, 10, 0] == 1.0 and tensor[32, 54, 0] == 0.0
    boxes = np.array([[20, 10, 150, 90]], np.float32)
    np.testing.assert_allclose(box.to_image(box.to_input(boxes)), boxes, atol=1e-4)
    assert letterbox_geometry(416, 416, 416)[:2] == (416, 416)


def test_letterboxed_images_are_the_evaluation_tensors(tmp_path):
    """Calibration, AdaRound and QAT must see each image exactly as evaluation letterboxes it."""
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for k, (h, w) in enumerate([(40, 90), (120, 60)]):
        paths.append(tmp_path / f"{k}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    stacked = letterboxed_images(paths, (64, 48))
    assert stacked.shape == (2, 64, 48, 3) and stacked.dtype == np.float32
    for k, path in enumerate(paths):
        np.testing.assert_array_equal(stacked[k], letterbox(load_image(path), (64, 48))[0])


def test_postprocessing_imports_without_tensorflow():
    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    if name.split('.')[0] in ('tensorflow', 'tf_keras', 'keras'):\n"
        "        raise ImportError('tensorflow is not allowed here')\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        "import yolo3, yolo3.postprocess, yolo3.preprocess, yolo3.spec, yolo3.darknet, yolo3.metrics, yolo3.datasets\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
