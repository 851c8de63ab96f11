"""The Keras model against an independent implementation: OpenCV DNN's Darknet importer."""

import cv2
import numpy as np
import pytest

from conftest import SHARED, random_weights, require_shared
from yolo3.darknet import write_weights
from yolo3.preprocess import letterbox, load_image
from yolo3.spec import parse_cfg, write_cfg

IMAGES = ["dog", "eagle", "giraffe", "horses", "person"]

# Exercises what the built-in definitions use: stride-2 3x3 conv, shortcut, route of several
# layers (absolute and negative), SPP maxpools (stride 1), tiny's size-2 stride-1 maxpool, upsample.
MIXED_CFG = """
[net]
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
[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=leaky
[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
pad=1
activation=leaky
[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky
[shortcut]
from=-3
activation=linear
[maxpool]
size=2
stride=2
[maxpool]
size=2
stride=1
[maxpool]
stride=1
size=5
[route]
layers=-2
[maxpool]
stride=1
size=9
[route]
layers=-1,-3,6
[convolutional]
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
[route]
layers=-6
[upsample]
stride=2
[route]
layers=-1,4
[convolutional]
filters=14
size=1
stride=1
pad=1
activation=linear
[yolo]
mask=1,2
anchors=10,14, 23,27, 37,58
classes=2
num=3
"""


def opencv_outputs(cfg, weights, tensor, names):
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    blob = cv2.dnn.blobFromImage(tensor, 1.0, tensor.shape[:2][::-1], swapRB=False, crop=False)
    net.setInput(blob)
    return [o[0].transpose(1, 2, 0) for o in net.forward(names)]


def assert_keras_matches_opencv(spec, weights, folder, name: str) -> None:
    """``spec`` + ``weights`` written as Darknet cfg + weights: OpenCV's heads equal the Keras model's within 1e-3 on a random 64 px input."""
    from yolo3.keras_model import build_model, set_darknet_weights

    cfg, wts = folder / f"{name}.cfg", folder / f"{name}.weights"
    write_cfg(spec, cfg)
    write_weights(wts, spec, weights)
    model = build_model(spec)
    set_darknet_weights(model, spec, weights)
    tensor = np.random.RandomState(1).rand(64, 64, 3).astype(np.float32)
    ours = [np.asarray(o)[0] for o in model(tensor[None])]
    heads = [f"conv_{i - 1}" for i in spec.yolo_indices()]
    theirs = opencv_outputs(cfg, wts, tensor, heads)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        assert np.abs(a - b).max() < 1e-3


def test_mixed_cfg_matches_opencv(tmp_path):
    spec = parse_cfg(MIXED_CFG)
    assert_keras_matches_opencv(spec, random_weights(spec, seed=3), tmp_path, "mixed")


@pytest.fixture(scope="module")
def coco_names():
    return (SHARED / "weights" / "yolov3-tiny-coco" / "coco.names").read_text().split("\n")


@pytest.mark.parametrize("image", IMAGES)
def test_official_tiny_matches_opencv(tiny_coco, image):
    from conftest import TINY_CFG, TINY_WEIGHTS

    path = require_shared("darknet", "images", f"{image}.jpg")
    tensor, _ = letterbox(load_image(path), 416)
    ours = [np.asarray(o)[0] for o in tiny_coco.model(tensor[None])]
    heads = [f"conv_{i - 1}" for i in tiny_coco.spec.yolo_indices()]
    theirs = opencv_outputs(TINY_CFG, TINY_WEIGHTS, tensor, heads)
    for a, b in zip(ours, theirs):
        assert np.abs(a - b).max() < 1e-3


def test_dog_detections(tiny_coco, coco_names):
    from yolo3.evaluation import head_specs
    from yolo3.postprocess import detect

    path = require_shared("darknet", "images", "dog.jpg")
    tensor, box = letterbox(load_image(path), 416)
    outputs = [np.asarray(o)[0] for o in tiny_coco.model(tensor[None])]
    dets = detect(outputs, head_specs(tiny_coco.spec), (416, 416), box, score_threshold=0.25)
    found = {coco_names[c] for c in dets.classes}
    assert "dog" in found and "bicycle" in found and found & {"car", "truck"}
    assert found <= {"dog", "bicycle", "car", "truck"}
    # the dog is in the lower left of the 768x576 image
    dog = dets.boxes[[coco_names[c] == "dog" for c in dets.classes]][0]
    assert dog[0] < 250 and dog[1] > 150
