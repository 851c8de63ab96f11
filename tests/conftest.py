"""Shared fixtures: the ../shared folder (skip or fail when absent), small models, synthetic data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
