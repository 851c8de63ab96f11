import json
import subprocess
import sys

import numpy as np

from conftest import ROOT, require_shared
from yolo3.datasets import read_voc
from yolo3.evaluation import evaluate, head_specs


class OraclePredictor:
    """Emits, for each image, raw head outputs that decode to its ground-truth boxes."""

    in_model_nms = False

    def __init__(self, spec, records, size):
        self.heads = head_specs(spec)
        self.input_hw = (size, size)
        self.records = {}
        self.queue = list(records)

    def __call__(self, batch):
        from yolo3.preprocess import letterbox_geometry

        outs = [np.full((len(batch), self.input_hw[0] // s, self.input_hw[1] // s, 3 * (5 + h.classes)), -30.0, np.float32)
                for s, h in zip((32, 16), self.heads)]  # fmt: skip
        for k in range(len(batch)):
            record = self.queue.pop(0)
            _, _, box = letterbox_geometry(record.width, record.height, self.input_hw)
            for b, c in zip(box.to_input(record.boxes), record.classes):
                cx, cy, w, h = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2, b[2] - b[0], b[3] - b[1]
                stride, head, out = 16, self.heads[1], outs[1]
                gx, gy = int(cx // stride), int(cy // stride)
                a = 0
                aw, ah = head.anchors[a]
                tx, ty = cx / stride - gx, cy / stride - gy
                logit = lambda p: np.log(np.clip(p, 1e-6, 1 - 1e-6) / (1 - np.clip(p, 1e-6, 1 - 1e-6)))
                vec = np.full(5 + head.classes, -30.0)
                vec[:5] = [logit(tx), logit(ty), np.log(w / aw), np.log(h / ah), 10.0]
                vec[5 + c] = 10.0
                out[k, gy, gx, a * (5 + head.classes) : (a + 1) * (5 + head.classes)] = vec
        return outs


def test_oracle_outputs_score_one(synthetic_valid):
    """Letterbox, decode, NMS and un-letterbox compose exactly: ground truth in, mAP 1 out."""
    from yolo3.zoo import build_spec

    ds = read_voc(synthetic_valid / "images", synthetic_valid / "annotations", ["circle", "square", "triangle"])
    spec = build_spec("yolov3-tiny", 3, 128)
    # keep objects apart so that no two share a stride-16 cell
    report = evaluate(OraclePredictor(spec, ds.records, 128), ds, progress=False)
    assert report["mAP50"] > 0.97
    assert report["coco"]["AP50"] > 0.97


def test_evaluate_script_end_to_end(tmp_path, synthetic_valid):
    config = {
        "model": {"architecture": "yolov3-tiny", "input_size": 96, "labels": ["circle", "square", "triangle"]},
        "train": {"train_image_folder": str(synthetic_valid / "images"), "train_annot_folder": str(synthetic_valid / "annotations")},
        "valid": {"valid_image_folder": str(synthetic_valid / "images"), "valid_annot_folder": str(synthetic_valid / "annotations")},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    out = tmp_path / "report.json"
    r = subprocess.run(
        [sys.executable, "evaluate.py", "-c", str(path), "-p", "1", "--quiet", "--json", str(out), "--plots", str(tmp_path / "plots")],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    for key in ("mAP50", "coco", "per_class", "params", "macs", "images", "seconds_per_image"):
        assert key in report
    assert set(report["coco"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"}
    assert len(report["confusion"]["matrix"]) == 4 and (tmp_path / "plots" / "pr_curves.png").is_file()
    assert (tmp_path / "plots" / "confusion_matrix.png").is_file()
    assert report["images"] == 24 and set(report["per_class"]) == {"circle", "square", "triangle"}
    assert "mAP@0.5" in r.stdout and "circle" in r.stdout
    bad = subprocess.run([sys.executable, "evaluate.py", "-c", str(path), "-p", "7"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_official_tiny_on_coco128(tiny_coco):
    """The pretrained model finds COCO objects on held-out val2017 images (full figures: README)."""
    from yolo3.config import load_config
    from yolo3.datasets import read_dataset
    from yolo3.evaluation import KerasPredictor

    require_shared("data", "coco128")
    config = load_config(ROOT / "bench" / "configs" / "coco128-yolov3-tiny.json")
    ds = read_dataset(config.dataset("valid"), config.labels)
    ds.records = ds.records[:24]
    report = evaluate(KerasPredictor(tiny_coco), ds, config.labels, progress=False)
    assert report["mAP50"] > 0.2
