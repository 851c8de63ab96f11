"""From raw head outputs to detections in image pixels: decode, threshold, class-aware NMS.

numpy only: the Keras model, the TFLite interpreter and the edge runner all
end here, so they cannot disagree about post-processing.

Example::

    from yolo3.postprocess import HeadSpec, detect
    heads = [HeadSpec(anchors=((81, 82), (135, 169), (344, 319)), classes=80), ...]
    dets = detect(outputs, heads, (416, 416), letterbox_info, score_threshold=0.25)
    dets.boxes, dets.scores, dets.classes
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .preprocess import Letterbox


@dataclass(frozen=True)
class HeadSpec:
    """What decoding needs to know about one output: its anchors (input pixels) and class count."""

    anchors: tuple[tuple[float, float], ...]
    classes: int
    scale_xy: float = 1.0  # [yolo] scale_x_y: centres reach (s - 1) / 2 cells beyond their cell (YOLOv4)


@dataclass
class Detections:
    """Detections of one image: (n, 4) x1, y1, x2, y2 boxes in image pixels, scores, class ids."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    @staticmethod
    def empty() -> Detections:
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def to_json(self, names: Sequence[str] | None = None) -> list[dict]:
        out = []
        for box, score, cls in zip(self.boxes.tolist(), self.scores.tolist(), self.classes.tolist()):
            item = {"class_id": int(cls), "score": round(float(score), 5), "box": [round(v, 2) for v in box]}
            if names is not None and 0 <= cls < len(names):
                item["class"] = names[cls]
            out.append(item)
        return out


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)  # stable for large |x|


def decode(output: np.ndarray, head: HeadSpec, input_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode one head of one image, (h, w, anchors * (5 + classes)), as Darknet does.

    Returns boxes (n, 4) x1, y1, x2, y2 in input pixels, objectness (n,) and
    class probabilities (n, classes), with n = h * w * anchors.
    """
    gh, gw, depth = output.shape
    na = len(head.anchors)
    if depth != na * (5 + head.classes):
        raise ValueError(f"output depth {depth} does not fit {na} anchors x (5 + {head.classes} classes)")
    out = output.reshape(gh, gw, na, 5 + head.classes).astype(np.float32)
    in_h, in_w = input_hw
    gx = np.arange(gw, dtype=np.float32)[None, :, None]
    gy = np.arange(gh, dtype=np.float32)[:, None, None]
    anchors = np.asarray(head.anchors, np.float32)
    s = head.scale_xy
    cx = (s * sigmoid(out[..., 0]) - 0.5 * (s - 1.0) + gx) / gw * in_w
    cy = (s * sigmoid(out[..., 1]) - 0.5 * (s - 1.0) + gy) / gh * in_h
    bw = np.exp(np.minimum(out[..., 2], 20.0)) * anchors[:, 0]
    bh = np.exp(np.minimum(out[..., 3], 20.0)) * anchors[:, 1]
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=-1).reshape(-1, 4)
    objectness = sigmoid(out[..., 4]).reshape(-1)
    probs = sigmoid(out[..., 5:]).reshape(-1, head.classes)
    return boxes, objectness, probs


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float, max_detections: int) -> np.ndarray:
    """Greedy class-aware non-maximum suppression; returns the kept indices, best first.

    Boxes of different classes never suppress each other: each class is shifted
    to its own region of the plane, so one greedy pass serves all classes.
    """
    if len(scores) == 0:
        return np.zeros(0, np.int64)
    span = float(np.max(boxes[:, 2:]) - min(np.min(boxes[:, :2]), 0.0)) + 1.0
    shifted = boxes + (classes.astype(np.float32) * span)[:, None]
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < max_detections:
        best = order[0]
        keep.append(int(best))
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[iou_one_to_many(shifted[best], shifted[rest]) <= iou_threshold]
    return np.asarray(keep, np.int64)


def detect(
    outputs: Sequence[np.ndarray],
    heads: Sequence[HeadSpec],
    input_hw: tuple[int, int],
    box: Letterbox | None = None,
    score_threshold: float = 0.25,
    nms_iou: float = 0.45,
    max_detections: int = 100,
    max_candidates: int = 3000,
) -> Detections:
    """Detections of one image from its raw head outputs (each (h, w, depth), no batch axis).

    A box gets one candidate per class whose score ``objectness * p(class)``
    exceeds ``score_threshold`` (as Darknet does); at most ``max_candidates``
    best candidates enter NMS. Boxes map back to image pixels through ``box``
    (and are clipped to the image) after NMS: suppression sees the boxes the
    model predicted, as in Darknet and in a model with NMS in its graph.
    """
    if len(outputs) != len(heads):
        raise ValueError(f"{len(outputs)} outputs for {len(heads)} heads")
    all_boxes, all_scores, all_classes = [], [], []
    for output, head in zip(outputs, heads):
        boxes, obj, probs = decode(np.asarray(output), head, input_hw)
        scores = obj[:, None] * probs
        rows, cols = np.nonzero(scores > score_threshold)
        all_boxes.append(boxes[rows])
        all_scores.append(scores[rows, cols])
        all_classes.append(cols)
    boxes = np.concatenate(all_boxes).astype(np.float32)
    scores = np.concatenate(all_scores).astype(np.float32)
    classes = np.concatenate(all_classes).astype(np.int64)
    if len(scores) > max_candidates:
        top = np.argpartition(-scores, max_candidates)[:max_candidates]
        boxes, scores, classes = boxes[top], scores[top], classes[top]
    keep = nms(boxes, scores, classes, nms_iou, max_detections)  # on the unclipped boxes, as Darknet (and in-model NMS) do
    boxes = boxes[keep] if box is None else box.to_image(boxes[keep])
    return Detections(boxes, scores[keep], classes[keep])


def from_model_nms(
    outputs: Sequence[np.ndarray], input_hw: tuple[int, int], box: Letterbox | None = None, score_threshold: float = 0.25,
    max_detections: int = 100,
) -> Detections:
    """Detections of one image from a model that ran NMS itself: boxes (n, 4) as ymin, xmin, ymax, xmax in [0, 1]
    of the input, classes (n,), scores (n,) and the count of valid entries, as TFLite's detection post-processing
    writes them (several entries per box when it reports several classes per box). The best ``max_detections``
    entries above ``score_threshold`` are kept, best first."""
    boxes, classes, scores, count = (np.asarray(o) for o in outputs)
    n = min(int(np.reshape(count, -1)[0]), len(scores))
    in_h, in_w = input_hw
    keep = np.nonzero(scores[:n] > score_threshold)[0]
    keep = keep[np.argsort(-scores[keep], kind="stable")[:max_detections]]
    pixels = boxes[keep][:, [1, 0, 3, 2]].astype(np.float32) * np.asarray([in_w, in_h, in_w, in_h], np.float32)
    if box is not None:
        pixels = box.to_image(pixels)
    return Detections(pixels, scores[keep].astype(np.float32), classes[keep].astype(np.int64))


def predictor_detections(
    predictor, outputs: Sequence[np.ndarray], box: Letterbox | None = None, score_threshold: float = 0.25, nms_iou: float = 0.45,
    max_detections: int = 100,
) -> Detections:
    """Detections of one image from ``predictor``'s outputs for it (no batch axis): the one way every predictor ends.

    A predictor has ``heads`` (:class:`HeadSpec` per output), ``input_hw`` and
    ``in_model_nms``. A model with NMS in its graph (``in_model_nms`` true)
    already decoded and suppressed with its own IoU threshold; only the score
    threshold applies here.
    """
    if predictor.in_model_nms:
        return from_model_nms(outputs, predictor.input_hw, box, score_threshold, max_detections)
    return detect(outputs, predictor.heads, predictor.input_hw, box, score_threshold, nms_iou, max_detections)
