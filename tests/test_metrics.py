import contextlib
import io

import numpy as np
import pytest

from yolo3.datasets import Record
from yolo3.metrics import average_precision, coco_detections, coco_ground_truth, evaluate_detections, voc_evaluation
from yolo3.postprocess import Detections


def rec(boxes, classes, difficult=None, size=(100, 100)):
    from pathlib import Path

    return Record.make(Path("x.jpg"), size[0], size[1], boxes, classes, difficult)


def dets(boxes, scores, classes):
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32), np.asarray(classes))


def test_perfect_detections_score_one():
    gt = [rec([[10, 10, 50, 50], [60, 60, 90, 90]], [0, 1])]
    d = [dets([[10, 10, 50, 50], [60, 60, 90, 90]], [0.9, 0.8], [0, 1])]
    r = evaluate_detections(gt, d, ["a", "b"])
    assert r["mAP50"] == 1.0 and r["coco"]["AP"] == pytest.approx(1.0)


def test_known_ap_with_a_false_positive_ranked_first():
    # 2 ground truths; ranked: FP, TP, TP  -> precision 0, 1/2, 2/3 at recall 0, .5, 1
    gt = [rec([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0])]
    d = [dets([[50, 50, 60, 60], [0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8, 0.7], [0, 0, 0])]
    per = voc_evaluation(gt, d, 1)
    assert per[0]["ap"] == pytest.approx(0.5 * 2 / 3 + 0.5 * 2 / 3)
    assert (per[0]["true_positives"], per[0]["false_positives"]) == (2, 1)


def test_known_ap_missed_object_and_duplicate():
    # 3 ground truths in two images; TP (0.9), duplicate of it = FP (0.8), TP (0.6); one missed
    gt = [rec([[0, 0, 10, 10], [40, 40, 60, 60]], [0, 0]), rec([[0, 0, 20, 20]], [0])]
    d = [dets([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8], [0, 0]), dets([[1, 1, 20, 20]], [0.6], [0])]
    per = voc_evaluation(gt, d, 1)
    # recall/precision: (1/3, 1), (1/3, 1/2), (2/3, 2/3) -> AP = 1/3 * 1 + 1/3 * 2/3
    assert per[0]["ap"] == pytest.approx(1 / 3 + 2 / 9)


def test_iou_threshold_is_inclusive_half():
    gt = [rec([[0, 0, 10, 10]], [0])]
    exactly_half = [dets([[0, 0, 10, 20]], [0.5], [0])]  # IoU = 100 / 200
    assert voc_evaluation(gt, exactly_half, 1)[0]["ap"] == 1.0
    below = [dets([[0, 0, 10, 20.5]], [0.5], [0])]
    assert voc_evaluation(gt, below, 1)[0]["ap"] == 0.0


def test_difficult_is_neither_hit_nor_miss():
    gt = [rec([[0, 0, 10, 10], [50, 50, 70, 70]], [0, 0], [False, True])]
    d = [dets([[50, 50, 70, 70], [0, 0, 10, 10]], [0.9, 0.8], [0, 0])]
    per = voc_evaluation(gt, d, 1)
    assert per[0]["ap"] == 1.0 and per[0]["ground_truth"] == 1 and per[0]["false_positives"] == 0


def test_mean_over_classes_with_ground_truth_only():
    gt = [rec([[0, 0, 10, 10]], [0])]
    d = [dets([[0, 0, 10, 10], [30, 30, 40, 40]], [0.9, 0.9], [0, 2])]
    r = evaluate_detections(gt, d, ["a", "b", "c"])
    assert r["mAP50"] == 1.0 and r["classes_with_ground_truth"] == 1
    assert r["per_class"]["b"]["ap"] is None and r["per_class"]["c"]["false_positives"] == 1


def test_all_point_interpolation():
    assert average_precision(np.array([0.5, 1.0]), np.array([1.0, 0.5])) == pytest.approx(0.75)
    assert average_precision(np.array([0.2, 0.4]), np.array([0.5, 1.0])) == pytest.approx(0.4)


def test_coco_numbers_equal_pycocotools_on_the_same_detections():
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.RandomState(0)
    records, detections = [], []
    for _ in range(6):
        xy = rng.uniform(0, 60, (4, 2))
        wh = rng.uniform(10, 40, (4, 2))
        boxes = np.hstack([xy, xy + wh])
        classes = rng.randint(0, 3, 4)
        records.append(rec(boxes, classes))
        noisy = boxes + rng.normal(0, 3, boxes.shape)
        detections.append(dets(np.vstack([noisy, noisy[:1] + 20]), rng.uniform(0.1, 1, 5), np.append(classes, 1)))
    ours = evaluate_detections(records, detections, ["a", "b", "c"])["coco"]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = coco_ground_truth(records, ["a", "b", "c"])
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(coco_detections(detections)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert [ours["AP"], ours["AP50"], ours["AP75"]] == pytest.approx(list(ev.stats[:3]))
    assert 0 < ours["AP"] < ours["AP50"] <= 1


def test_confusion_matrix_counts_confusions_misses_and_false_alarms(tmp_path):
    from yolo3.metrics import confusion_matrix
    from yolo3.plots import write_plots

    gt = [rec([[10, 10, 50, 50], [60, 60, 90, 90], [5, 60, 30, 90]], [0, 1, 1])]
    # box 1 found as class 0 (a confusion), box 0 found right, box 2 missed, one false alarm, one detection below the score threshold
    d = [dets([[10, 10, 50, 50], [60, 60, 90, 90], [70, 5, 95, 30], [5, 60, 30, 90]], [0.9, 0.8, 0.7, 0.1], [0, 0, 1, 1])]
    m = confusion_matrix(gt, d, 2)
    assert m.tolist() == [[1, 1, 0], [0, 0, 1], [0, 1, 0]]  # rows: predicted a, b, nothing; columns: true a, b, background
    r = evaluate_detections(gt, d, ["a", "b"], curves=True)
    assert r["confusion"]["matrix"] == m.tolist() and r["per_class"]["a"]["curve"]["recall"][-1] == 1.0
    assert r["coco"]["APl"] is None and r["coco"]["APm"] is not None and r["coco"]["APs"] is not None  # no box above 96² pixels
    written = write_plots({**r, "model": "m.h5", "images": 1, "split": "test"}, tmp_path)
    assert [p.name for p in written] == ["pr_curves.png", "confusion_matrix.png"] and all(p.stat().st_size > 1000 for p in written)
