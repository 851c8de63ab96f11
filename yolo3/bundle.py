"""A folder to copy to the device: the ``.tflite``, its labels, and a runner that needs only numpy, Pillow and LiteRT.

The runner is this project's own code, not a second copy: the modules the
edge runner is made of (:data:`RUNTIME_MODULES`, which import nothing but
numpy and Pillow, and OpenCV for video) are copied verbatim into
``DIR/yolo3/``, so ``python -m yolo3.lite`` runs there exactly as it runs
here. ``requirements.txt`` lists what a board must install; no TensorFlow.

Example::

    from yolo3.bundle import write_bundle
    write_bundle("best-int8.tflite", "device/")
    # on the device: cd device && python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && .venv/bin/python -m yolo3.lite model.tflite image.jpg
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .errors import UserError

RUNTIME_MODULES = ("errors.py", "preprocess.py", "postprocess.py", "draw.py", "detection.py", "lite.py", "board.py")
REQUIREMENTS = """# The runner needs numpy, Pillow and a TFLite runtime; no TensorFlow.
# ai-edge-litert: x86-64 and aarch64 Linux, Python 3.9-3.12 on aarch64 (2.3.0 on a glibc 2.36 board; 2.1.0 under Python 3.9), 3.9-3.13 on x86-64.
numpy>=1.23
Pillow>=9
ai-edge-litert>=1.2
# For video files or a camera: opencv-python-headless
"""
REQUIREMENTS_TFLITE_RUNTIME = """# Where ai-edge-litert has no wheel: tflite-runtime (2.14.0, its last release; Python 3.9-3.11, x86-64 and aarch64 Linux).
# It was built against numpy 1 and cannot load under numpy 2.
numpy>=1.23,<2
Pillow>=9
tflite-runtime>=2.11
"""

INIT = '''"""The edge runner of yolo3-compress, copied from the project: python -m yolo3.lite model.tflite IMAGE|FOLDER|VIDEO|0."""

__version__ = "{version}"
'''

README = """# {name}: YOLOv3 int8 detector for the device

Made by yolo3-compress from `{source}` ({size:,} bytes, input {hw}, {classes} classes: {labels}).
The runner needs Python 3.9 or newer, numpy, Pillow and a TFLite runtime — no TensorFlow.
Install it into a virtual environment in this folder (Debian 12, Raspberry Pi OS bookworm and
Ubuntu 23.04+ refuse `pip install` outside one, and have `python3` but no `python` command):

```sh
python3 -m venv .venv && .venv/bin/pip install -r requirements.txt
.venv/bin/python -m yolo3.lite model.tflite image.jpg                  # one line per image: boxes, scores, latency
.venv/bin/python -m yolo3.lite model.tflite images/ --json --draw out/ # a folder, JSON lines, boxes drawn into out/
.venv/bin/python -m yolo3.lite model.tflite video.mp4 --max-frames 100 # a video file, or 0 for the first camera (needs OpenCV)
.venv/bin/python -m yolo3.lite benchmark model.tflite --threads 4       # the model's latency on this board (median, interleaved)
```

Where ai-edge-litert has no wheel for the board (it has for x86-64 and aarch64 Linux, Python
3.9–3.12 on aarch64), install `requirements-tflite-runtime.txt` instead: tflite-runtime 2.14
(Python 3.9–3.11) with `numpy<2`, the numpy it was built for. `python3 -m venv` needs Debian's
`python3-venv` package on some systems.

Run the commands from this folder (or put it on `PYTHONPATH`). Options: `--score 0.25` (score
threshold), `--nms 0.45`, `--threads 2`. Boxes are in image pixels, x1 y1 x2 y2. The labels,
anchors and input size travel inside `model.tflite` (metadata `yolo3`); `labels.txt` is for
other programs.
"""


def check_bundle_folder(folder: str | Path, force: bool) -> None:
    """Refuse a bundle folder that is a file, or holds something already (unless ``force``): before any work is done."""
    from .fileio import check_output_folder

    folder = check_output_folder(folder, "--bundle folder")
    if folder.exists() and any(folder.iterdir()) and not force:
        raise UserError("--bundle: the folder exists and is not empty; pass --force to replace it", folder)


def write_bundle(model: str | Path, folder: str | Path, force: bool = False) -> dict:
    """Write the device folder for ``model`` (a ``.tflite`` this tool wrote); refuses to replace a folder unless ``force``."""
    from . import __version__
    from .lite import METADATA_NAME, parse_metadata, read_metadata

    model, folder = Path(model), Path(folder)
    check_bundle_folder(folder, force)  # the output first: nothing is read or written when it would be refused
    try:
        data = model.read_bytes()
    except FileNotFoundError:
        raise UserError("model file does not exist", model) from None
    except IsADirectoryError:
        raise UserError("is a folder, not a .tflite file", model) from None
    meta = parse_metadata(read_metadata(data, METADATA_NAME), model)
    if "names" not in meta or "heads" not in meta:
        raise UserError("this .tflite has no yolo3 metadata (labels, anchors): bundle a model that convert.py wrote", model)
    folder.parent.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).resolve().parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        (tmp / "model.tflite").write_bytes(data)
        (tmp / "labels.txt").write_text("\n".join(meta["names"]) + "\n", encoding="utf-8")
        (tmp / "requirements.txt").write_text(REQUIREMENTS)
        (tmp / "requirements-tflite-runtime.txt").write_text(REQUIREMENTS_TFLITE_RUNTIME)
        package = tmp / "yolo3"
        package.mkdir()
        (package / "__init__.py").write_text(INIT.format(version=__version__))
        for name in RUNTIME_MODULES:
            shutil.copyfile(here / name, package / name)
        hw = "x".join(str(v) for v in meta.get("input_size", []))
        labels = ", ".join(meta["names"][:8]) + (", ..." if len(meta["names"]) > 8 else "")
        (tmp / "README.md").write_text(README.format(name=folder.name, source=model.name, size=len(data), hw=hw, classes=len(meta["names"]), labels=labels))
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700: the folder is meant to be copied and shared
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    return {"folder": str(folder), "files": files, "bytes": sum((folder / f).stat().st_size for f in files)}
