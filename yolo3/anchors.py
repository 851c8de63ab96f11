"""Anchors by IoU k-means on the training boxes (as in the YOLOv2/v3 papers), numpy only.

Boxes are compared by shape alone (both centred at the origin), with distance
``1 - IoU``, so large and small boxes are clustered fairly. Box sizes are taken
after letterboxing to the network input, since that is what the anchors match.

Example::

    from yolo3.anchors import kmeans_anchors, box_sizes
    wh = box_sizes(dataset.records, 416)
    anchors, mean_iou = kmeans_anchors(wh, k=9)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .datasets import Record


def box_sizes(records: Sequence[Record], input_size: int) -> np.ndarray:
    """(n, 2) widths and heights of every box, in input pixels after letterboxing."""
    sizes = []
    for r in records:
        if len(r.boxes):
            scale = min(input_size / r.width, input_size / r.height)
            sizes.append((r.boxes[:, 2:] - r.boxes[:, :2]) * scale)
    return np.concatenate(sizes).astype(np.float64) if sizes else np.zeros((0, 2))


def shape_iou(wh: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """IoU of boxes and centroids aligned at one corner: (n, k)."""
    inter = np.minimum(wh[:, None, 0], centroids[None, :, 0]) * np.minimum(wh[:, None, 1], centroids[None, :, 1])
    union = wh[:, None, 0] * wh[:, None, 1] + centroids[None, :, 0] * centroids[None, :, 1] - inter
    return inter / union


def kmeans_anchors(wh: np.ndarray, k: int = 9, seed: int = 0, iterations: int = 300) -> tuple[np.ndarray, float]:
    """k anchors sorted by area, and the mean best IoU of the boxes with them.

    k-means++ seeding with distance 1 - IoU, then Lloyd iterations with the
    median of each cluster (robust to a few huge boxes), until assignments settle.
    """
    wh = np.asarray(wh, np.float64)
    if len(wh) < k:
        raise ValueError(f"{len(wh)} boxes are too few for {k} anchors")
    rng = np.random.RandomState(seed)
    centroids = [wh[rng.randint(len(wh))]]
    for _ in range(1, k):
        d = 1 - shape_iou(wh, np.array(centroids)).max(axis=1)
        p = d**2 / (d**2).sum() if d.sum() > 0 else None
        centroids.append(wh[rng.choice(len(wh), p=p)])
    centroids = np.array(centroids)
    assign = None
    for _ in range(iterations):
        new = shape_iou(wh, centroids).argmax(axis=1)
        if assign is not None and np.array_equal(new, assign):
            break
        assign = new
        for j in range(k):
            if np.any(assign == j):
                centroids[j] = np.median(wh[assign == j], axis=0)
    order = np.argsort(centroids.prod(axis=1))
    centroids = centroids[order]
    mean_iou = float(shape_iou(wh, centroids).max(axis=1).mean())
    return centroids, mean_iou
