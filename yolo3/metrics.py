"""Detection metrics: VOC AP at IoU 0.5 (all-point interpolation) and COCO AP through pycocotools.

VOC AP is written here because it is a few lines and its conventions need
stating: IoU without the old devkit's +1 pixel, ``difficult`` ground truth
neither counted as missed nor penalising a detection that matches it, mAP the
mean over classes that have ground truth. COCO AP, AP50 and AP75 come from
pycocotools' ``COCOeval``, not from our own code.

Example::

    from yolo3.metrics import evaluate_detections
    result = evaluate_detections(records, detections, names)
    result["mAP50"], result["coco"]["AP"], result["per_class"]["raccoon"]["ap"]
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .datasets import Record
from .postprocess import Detections


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (n, 4) with every box in ``b`` (m, 4), x1, y1, x2, y2."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float64)
    a = a.astype(np.float64)[:, None, :]
    b = b.astype(np.float64)[None, :, :]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / np.maximum(area_a + area_b - inter, 1e-12)


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope (VOC 2010+ all-point interpolation)."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


@dataclass(frozen=True)
class ClassMatches:
    """One class's detections in score order, each a hit, a false alarm or neither (matched a difficult box), and its ground truth per image.

    The matching of a detection depends only on its own image's boxes and the
    higher-scored detections of that image, so these flags hold for any
    re-weighting of the images — what :mod:`yolo3.resampling` relies on.
    """

    scores: np.ndarray  # (D,), descending
    image: np.ndarray  # (D,) image index of each detection
    hit: np.ndarray  # (D,) 1.0 for a true positive
    false_alarm: np.ndarray  # (D,) 1.0 for a false positive
    ground_truth: np.ndarray  # (N,) boxes of this class per image, difficult ones not counted


def match_detections(
    records: Sequence[Record], detections: Sequence[Detections], num_classes: int, iou_threshold: float = 0.5
) -> list[ClassMatches]:
    """Every class's detections matched to ground truth the VOC way (in score order, each box at most once)."""
    if len(records) != len(detections):
        raise ValueError(f"{len(records)} images but {len(detections)} detection lists")
    out = []
    for cls in range(num_classes):
        gts, n_gt = [], np.zeros(len(records))
        for k, r in enumerate(records):
            sel = r.classes == cls
            gts.append((r.boxes[sel], r.difficult[sel], np.zeros(int(sel.sum()), bool)))
            n_gt[k] = int((~r.difficult[sel]).sum())
        scores, image_ids, boxes = [], [], []
        for k, d in enumerate(detections):
            sel = d.classes == cls
            scores.append(d.scores[sel])
            boxes.append(d.boxes[sel])
            image_ids.append(np.full(int(sel.sum()), k))
        scores = np.concatenate(scores) if scores else np.zeros(0)
        boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4))
        image_ids = np.concatenate(image_ids) if image_ids else np.zeros(0, int)
        order = np.argsort(-scores, kind="stable")
        tp = np.zeros(len(order))
        fp = np.zeros(len(order))
        for rank, j in enumerate(order):
            gt_boxes, gt_difficult, matched = gts[image_ids[j]]
            if len(gt_boxes) == 0:
                fp[rank] = 1
                continue
            ious = iou_matrix(boxes[j : j + 1], gt_boxes)[0]
            best = int(np.argmax(ious))
            if ious[best] >= iou_threshold:
                if gt_difficult[best]:
                    continue  # neither a hit nor a false alarm
                if not matched[best]:
                    matched[best] = True
                    tp[rank] = 1
                else:
                    fp[rank] = 1
            else:
                fp[rank] = 1
        out.append(ClassMatches(scores[order], image_ids[order].astype(int), tp, fp, n_gt))
    return out


def voc_evaluation(
    records: Sequence[Record], detections: Sequence[Detections], num_classes: int, iou_threshold: float = 0.5, curves: bool = False,
    matches: Sequence[ClassMatches] | None = None,
) -> dict[int, dict]:  # fmt: skip
    """Per class: AP, ground-truth count (without difficult), detections, true and false positives.

    With ``curves`` each class also gets its precision–recall curve (``recall``,
    ``precision``, ``score`` at every detection in score order, at most
    :data:`CURVE_POINTS` points) for plotting. ``matches``: the detections
    already matched at ``iou_threshold`` (:func:`match_detections`), not matched again.
    """
    result = {}
    for cls, m in enumerate(matches if matches is not None else match_detections(records, detections, num_classes, iou_threshold)):
        n_gt = int(m.ground_truth.sum())
        ctp, cfp = np.cumsum(m.hit), np.cumsum(m.false_alarm)
        if n_gt:
            recall = ctp / n_gt
            precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
            ap = average_precision(recall, precision) if len(m.scores) else 0.0
        else:
            ap = float("nan")
        result[cls] = {
            "ap": ap,
            "ground_truth": n_gt,
            "detections": int(len(m.scores)),
            "true_positives": int(m.hit.sum()),
            "false_positives": int(m.false_alarm.sum()),
        }
        if curves and n_gt and len(m.scores):
            keep = np.unique(np.linspace(0, len(m.scores) - 1, min(len(m.scores), CURVE_POINTS)).astype(int))
            result[cls]["curve"] = {"recall": recall[keep].tolist(), "precision": precision[keep].tolist(),
                                    "score": m.scores[keep].tolist()}  # fmt: skip
    return result


CURVE_POINTS = 200


def confusion_matrix(
    records: Sequence[Record], detections: Sequence[Detections], num_classes: int, iou_threshold: float = 0.5, score_threshold: float = 0.25
) -> np.ndarray:
    """(C + 1) x (C + 1) counts: row = predicted class (last row: nothing predicted), column = true class (last: background).

    Detections below ``score_threshold`` are ignored (as a deployed detector
    would); each ground-truth box is matched to at most one detection, the
    pairs taken by IoU (at least ``iou_threshold``) from the best down, as
    ultralytics does. A ground-truth box no detection matches counts in the last
    row (missed), a detection matching no box in the last column (false alarm).
    Difficult boxes take no part.
    """
    m = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    for r, d in zip(records, detections):
        keep_gt = ~r.difficult
        gt_boxes, gt_classes = r.boxes[keep_gt], r.classes[keep_gt]
        sel = d.scores >= score_threshold
        boxes, classes = d.boxes[sel], d.classes[sel]
        matched_gt, matched_det = set(), set()
        if len(gt_boxes) and len(boxes):
            ious = iou_matrix(boxes, gt_boxes)
            pairs = np.argwhere(ious >= iou_threshold)
            for j, g in sorted(pairs.tolist(), key=lambda p: -ious[p[0], p[1]]):
                if j in matched_det or g in matched_gt:
                    continue
                matched_det.add(j)
                matched_gt.add(g)
                m[int(classes[j]), int(gt_classes[g])] += 1
        for g in range(len(gt_boxes)):
            if g not in matched_gt:
                m[num_classes, int(gt_classes[g])] += 1
        for j in range(len(boxes)):
            if j not in matched_det:
                m[int(classes[j]), num_classes] += 1
    return m


def coco_ground_truth(records: Sequence[Record], names: Sequence[str]) -> dict:
    """Records as a COCO ground-truth dict (image ids are list positions, category ids class + 1)."""
    images, annotations = [], []
    for k, r in enumerate(records):
        images.append({"id": k, "width": r.width, "height": r.height, "file_name": r.image.name})
        for box, cls, crowd in zip(r.boxes.tolist(), r.classes.tolist(), r.difficult.tolist()):
            x1, y1, x2, y2 = box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": k,
                    "category_id": int(cls) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": int(crowd),
                }
            )
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_detections(detections: Sequence[Detections]) -> list[dict]:
    out = []
    for k, d in enumerate(detections):
        for box, score, cls in zip(d.boxes.tolist(), d.scores.tolist(), d.classes.tolist()):
            x1, y1, x2, y2 = box
            out.append({"image_id": k, "category_id": int(cls) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    return out


def coco_evaluation(records: Sequence[Record], detections: Sequence[Detections], names: Sequence[str]) -> dict[str, float]:
    """COCO AP (IoU .50:.95), AP50 and AP75 from pycocotools' COCOeval (max 100 detections per image)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dets = coco_detections(detections)
    if not dets or not any(len(r.classes) for r in records):
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, **dict.fromkeys(COCO_STATS[3:])}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = coco_ground_truth(records, names)
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(v) for v in ev.stats]  # -1 means "no ground truth" (of that size)
    named = dict(zip(COCO_STATS, stats))
    out = {k: max(named[k], 0.0) for k in ("AP", "AP50", "AP75")}
    out.update({k: (None if named[k] < 0 else named[k]) for k in COCO_STATS[3:]})
    return out


# pycocotools' 12 summary numbers: AP at IoU .50:.95, .50, .75; AP for small / medium / large objects; AR with 1, 10, 100
# detections per image; AR for small / medium / large objects
COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def evaluate_detections(
    records: Sequence[Record], detections: Sequence[Detections], names: Sequence[str], iou_threshold: float = 0.5, curves: bool = False,
    matches: Sequence[ClassMatches] | None = None,
) -> dict:  # fmt: skip
    """VOC mAP@0.5 with a per-class table, and COCO AP (with small / medium / large and AR), as one JSON-ready dict.

    With ``curves``: every class's precision–recall curve and the confusion matrix (``confusion``) too.
    ``matches``: the VOC matching already done (:func:`match_detections`), reused.
    """
    per = voc_evaluation(records, detections, len(names), iou_threshold, curves, matches)
    with_gt = [v["ap"] for v in per.values() if v["ground_truth"] > 0]
    return {
        "mAP50": float(np.mean(with_gt)) if with_gt else 0.0,
        "classes_with_ground_truth": len(with_gt),
        "per_class": {names[c]: {**v, "ap": None if np.isnan(v["ap"]) else v["ap"]} for c, v in per.items()},
        "coco": coco_evaluation(records, detections, names),
        **({"confusion": {"labels": [*names, "background"], "matrix": confusion_matrix(records, detections, len(names), iou_threshold).tolist(),
                          "rows": "predicted", "columns": "true", "score_threshold": 0.25}} if curves else {}),
    }
