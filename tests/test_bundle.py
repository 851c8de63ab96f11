"""The device bundle: built from the official YOLOv3-tiny as int8, run in a fresh virtual environment without TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from conftest import ROOT, TINY_CFG, TINY_WEIGHTS, require_shared

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """convert.py --bundle on the official YOLOv3-tiny (int8, calibrated on the Darknet sample images)."""
    require_shared("weights", "yolov3-tiny-coco", "yolov3-tiny.weights")
    images = require_shared("darknet", "images")
    folder = tmp_path_factory.mktemp("bundle")
    names = (ROOT.parent / "shared" / "data" / "coco128" / "coco.names").read_text().split("\n")
    (folder / "ann").mkdir()
    for img in images.glob("*.jpg"):  # unlabelled images are enough to calibrate; VOC needs an xml per image
        (folder / "ann" / f"{img.stem}.xml").write_text(
            f"<annotation><filename>{img.name}</filename><size><width>1</width><height>1</height></size></annotation>"
        )
    config = {
        "model": {"architecture": str(TINY_CFG), "weights": str(TINY_WEIGHTS), "input_size": 416, "labels": [n for n in names if n]},
        "train": {"train_image_folder": str(images), "train_annot_folder": str(folder / "ann")},
        "valid": {"valid_image_folder": str(images), "valid_annot_folder": str(folder / "ann")},
    }
    (folder / "config.json").write_text(json.dumps(config))
    out = folder / "device"
    r = subprocess.run([sys.executable, "convert.py", "-c", str(folder / "config.json"), "--format", "int8", "--samples", "5",
                        "--out", str(folder / "tiny-int8.tflite"), "--bundle", str(out)], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wrote the device bundle" in r.stdout
    return folder, out


def test_bundle_holds_the_projects_own_runner(bundle):
    _, out = bundle
    assert sorted(p.name for p in (out / "yolo3").iterdir() if p.suffix == ".py") == sorted(
        ["__init__.py", "errors.py", "preprocess.py", "postprocess.py", "draw.py", "detection.py", "lite.py"]
    )
    for name in ("lite.py", "postprocess.py", "preprocess.py"):
        assert (out / "yolo3" / name).read_bytes() == (ROOT / "yolo3" / name).read_bytes()
    assert "tensorflow" not in (out / "requirements.txt").read_text().lower().replace("no tensorflow", "")
    assert (out / "labels.txt").read_text().splitlines()[16] == "dog"
    assert "python -m yolo3.lite model.tflite" in (out / "README.md").read_text()


def _fresh_env(folder: Path) -> Path:
    """A new virtual environment with only the bundle's requirements installed (no TensorFlow at all)."""
    env_dir = folder / "env"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    r = subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(folder / "device" / "requirements.txt")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    check = subprocess.run([str(python), "-c", "import importlib.util as u; print(u.find_spec('tensorflow'))"], capture_output=True, text=True)
    assert check.stdout.strip() == "None"
    return python


def test_bundle_runs_where_tensorflow_is_not_installed(bundle, tmp_path):
    folder, out = bundle
    python = _fresh_env(folder)
    dog = ROOT.parent / "shared" / "darknet" / "images" / "dog.jpg"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    device = subprocess.run([str(python), "-m", "yolo3.lite", "model.tflite", str(dog), "--json", "--draw", str(tmp_path / "drawn")],
                            cwd=out, capture_output=True, text=True, env=env)  # fmt: skip
    assert device.returncode == 0, device.stderr[-3000:]
    here = subprocess.run([sys.executable, "-m", "yolo3.lite", str(out / "model.tflite"), str(dog), "--json"], cwd=ROOT, capture_output=True, text=True)
    assert here.returncode == 0, here.stderr[-3000:]
    a = json.loads(device.stdout.strip().splitlines()[-1])["detections"]
    b = json.loads(here.stdout.strip().splitlines()[-1])["detections"]
    assert {d["class"] for d in a} >= {"dog", "bicycle"} and len(a) == len(b)
    for x, y in zip(sorted(a, key=lambda d: (d["class_id"], -d["score"])), sorted(b, key=lambda d: (d["class_id"], -d["score"]))):
        assert x["class"] == y["class"] and abs(x["score"] - y["score"]) <= 1e-4
        assert max(abs(p - q) for p, q in zip(x["box"], y["box"])) <= 1.0
    assert (tmp_path / "drawn" / "dog.jpg").exists()
    assert "model latency median" in device.stderr
    # bad input on the device: one line each, exit 2
    for args, message in (
        (["missing.tflite", str(dog)], "model file does not exist"),
        (["model.tflite", str(out / "labels.txt")], "labels.txt"),
        (["labels.txt", str(dog)], "LiteRT cannot load this model"),
    ):
        r = subprocess.run([str(python), "-m", "yolo3.lite", *args], cwd=out, capture_output=True, text=True, env=env)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr[-1000:])


def test_bundle_refuses_a_model_this_tool_did_not_write(tmp_path):
    from yolo3.bundle import write_bundle
    from yolo3.errors import UserError

    fake = tmp_path / "other.tflite"
    fake.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 64)
    with pytest.raises(UserError, match="no yolo3 metadata"):
        write_bundle(fake, tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    with pytest.raises(UserError, match="not empty; pass --force"):
        write_bundle(fake, tmp_path / "full")
