"""The device bundle: built from the official YOLOv3-tiny as int8, run in a fresh virtual environment without TensorFlow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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
        ["__init__.py", "errors.py", "preprocess.py", "postprocess.py", "draw.py", "detection.py", "lite.py", "board.py"]
    )
    for name in ("lite.py", "postprocess.py", "preprocess.py"):
        assert (out / "yolo3" / name).read_bytes() == (ROOT / "yolo3" / name).read_bytes()
    assert "tensorflow" not in (out / "requirements.txt").read_text().lower().replace("no tensorflow", "")
    assert (out / "labels.txt").read_text().splitlines()[16] == "dog"
    assert "python -m yolo3.lite model.tflite" in (out / "README.md").read_text()
    assert "numpy>=1.23,<2" in (out / "requirements-tflite-runtime.txt").read_text()


def _readme_commands(folder: Path) -> list[str]:
    """The shell lines of the bundle README's first code block, comments dropped."""
    block = (folder / "README.md").read_text().split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split(" #")[0].strip() for line in block.splitlines() if line.strip()]


def test_bundle_readme_commands_run_as_written_where_tensorflow_is_not_installed(bundle, tmp_path):
    """The README's install line in a copy of the bundle (a new virtual environment, no TensorFlow), then its folder line as written."""
    _, out = bundle
    device_dir = tmp_path / "device"
    shutil.copytree(out, device_dir)
    install, _, folder_line, *_ = _readme_commands(device_dir)
    assert install == "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT)))  # not the project's venv
    r = subprocess.run(["bash", "-c", install], cwd=device_dir, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    python = device_dir / ".venv" / "bin" / "python"
    check = subprocess.run([str(python), "-c", "import importlib.util as u; print(u.find_spec('tensorflow'))"], capture_output=True, text=True)
    assert check.stdout.strip() == "None"
    dog = ROOT.parent / "shared" / "darknet" / "images" / "dog.jpg"
    (device_dir / "images").mkdir()
    shutil.copy(dog, device_dir / "images" / "dog.jpg")
    assert folder_line == ".venv/bin/python -m yolo3.lite model.tflite images/ --json --draw out/"
    device = subprocess.run(["bash", "-c", folder_line], cwd=device_dir, capture_output=True, text=True, env=env)
    assert device.returncode == 0, device.stderr[-3000:]
    here = subprocess.run([sys.executable, "-m", "yolo3.lite", str(out / "model.tflite"), str(dog), "--json"], cwd=ROOT, capture_output=True, text=True)
    assert here.returncode == 0, here.stderr[-3000:]
    a = json.loads(device.stdout.strip().splitlines()[-1])["detections"]
    b = json.loads(here.stdout.strip().splitlines()[-1])["detections"]
    assert {d["class"] for d in a} >= {"dog", "bicycle"} and len(a) == len(b)
    for x, y in zip(sorted(a, key=lambda d: (d["class_id"], -d["score"])), sorted(b, key=lambda d: (d["class_id"], -d["score"]))):
        assert x["class"] == y["class"] and abs(x["score"] - y["score"]) <= 1e-4
        assert max(abs(p - q) for p, q in zip(x["box"], y["box"])) <= 1.0
    assert (device_dir / "out" / "dog.jpg").exists()
    assert "model latency median" in device.stderr
    # bad input on the device: one line each, exit 2
    for args, message in (
        (["missing.tflite", str(dog)], "model file does not exist"),
        (["model.tflite", "labels.txt"], "labels.txt"),
        (["labels.txt", str(dog)], "LiteRT cannot load this model"),
    ):
        r = subprocess.run([str(python), "-m", "yolo3.lite", *args], cwd=device_dir, capture_output=True, text=True, env=env)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr[-1000:])


def test_tflite_runtime_under_numpy_2_ends_in_what_to_install():
    from yolo3.errors import UserError
    from yolo3.lite import check_tflite_runtime_numpy

    check_tflite_runtime_numpy("1.26.4")
    with pytest.raises(UserError) as err:
        check_tflite_runtime_numpy("2.1.0")
    assert "numpy<2" in err.value.message and "2.1.0" in err.value.message


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
