"""Shared fixtures: the ../shared folder (skip or fail when absent), small models, synthetic data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from yolo3.darknet import random_weights  # noqa: F401  (the tests import it from here)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TINY_CFG = SHARED / "weights" / "yolov3-tiny-coco" / "yolov3-tiny.cfg"
TINY_WEIGHTS = SHARED / "weights" / "yolov3-tiny-coco" / "yolov3-tiny.weights"


def require_shared(*parts: str) -> Path:
    """The path under ../shared, or skip (fail when REQUIRE_SHARED_DATA=1) when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        reason = f"needs {path} (the project's ../shared data folder), which is absent"
        if os.environ.get("REQUIRE_SHARED_DATA") == "1":
            pytest.fail(reason + " but REQUIRE_SHARED_DATA=1")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session", autouse=True)
def probe_cache(tmp_path_factory):
    """One cache of converted latency probes for the whole session (never the user's ~/.cache): the toy's blocks are converted once."""
    folder = tmp_path_factory.mktemp("probe-cache")
    old = os.environ.get("YOLO3_CACHE")
    os.environ["YOLO3_CACHE"] = str(folder)  # the compress subprocesses inherit it
    yield folder
    if old is None:
        os.environ.pop("YOLO3_CACHE", None)
    else:
        os.environ["YOLO3_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_coco():
    """The official YOLOv3-tiny COCO model as (spec, model), loaded once."""
    require_shared("weights", "yolov3-tiny-coco", "yolov3-tiny.weights")
    from yolo3.models import load_model

    loaded = load_model(TINY_WEIGHTS, architecture=TINY_CFG)
    return loaded


@pytest.fixture(scope="session")
def synthetic_valid(tmp_path_factory):
    """A small synthetic VOC split (24 images, 3 classes)."""
    from yolo3.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic")
    generate(root, 24, ["circle", "square", "triangle"], seed=5)
    return root


# A toy YOLO with every kind of block the latency model times: convolutions, max-pools, a route of two layers, an upsample, two heads.
TOY_CFG = """[net]
width=64
height=64
channels=3

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=32
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=64
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=64
size=1
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=128
size=3
stride=1
pad=1
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters=24
activation=linear

[yolo]
mask=3,4,5
anchors=6,8, 10,12, 14,20, 20,26, 30,34, 44,50
classes=3
num=6

[route]
layers=-4

[convolutional]
batch_normalize=1
filters=32
size=1
stride=1
pad=1
activation=leaky

[upsample]
stride=2

[route]
layers=-1,4

[convolutional]
batch_normalize=1
filters=64
size=3
stride=1
pad=1
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters=24
activation=linear

[yolo]
mask=0,1,2
anchors=6,8, 10,12, 14,20, 20,26, 30,34, 44,50
classes=3
num=6
"""

COMPRESS = {
    "sizes": [64, 32], "sensitivity_ratios": [0.5], "latency_levels": [1.0, 0.5], "candidate_epochs": 1, "finetune_epochs": 2,
    "cluster_epochs": 1, "qat": False, "calibration_samples": 4, "debug_images": 4, "lever_epochs": 1, "time_budget": 0, "small_boxes": 100,
    "threads": 1,  # the toy's int8 invoke is under a millisecond: with 2 threads its timings swing 0.7x-1.4x (waking a thread), with 1 they repeat
}  # fmt: skip


def toy_config(folder: Path, data: Path, **compress) -> Path:
    from yolo3.keras_model import build_model, set_darknet_weights
    from yolo3.models import save_model
    from yolo3.spec import parse_cfg

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "toy.cfg").write_text(TOY_CFG)
    if not (folder / "toy.h5").exists():
        spec = parse_cfg(TOY_CFG, "toy.cfg")
        model = build_model(spec)
        set_darknet_weights(model, spec, random_weights(spec, seed=1))
        save_model(model, spec, folder / "toy.h5")
    cfg = {
        "model": {"architecture": "toy.cfg", "input_size": 64, "labels": ["circle", "square", "triangle"], "weights": "toy.h5"},
        "train": {"train_image_folder": str(data / "images"), "train_annot_folder": str(data / "annotations"), "batch_size": 4,
                  "run_dir": str(folder / "run")},
        "valid": {"valid_image_folder": str(data / "images"), "valid_annot_folder": str(data / "annotations")},
        "clustering": {"clusters": 8},
        "quantization": {"adaround_iterations": 20},
        "compress": {**COMPRESS, **compress},
    }  # fmt: skip
    path = folder / "config.json"
    path.write_text(json.dumps(cfg))
    return path
