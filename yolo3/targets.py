"""Training targets: each ground-truth box goes to the anchor (over all heads) whose shape fits it best.

numpy only; the tf.data pipeline calls it once per batch. For head ``i`` the
target array is (batch, grid_h, grid_w, anchors_i, 5 + classes) holding the box
centre and size in input pixels, objectness 1 and the one-hot class at the
cell containing the box centre; everything else is 0. This is keras-yolo3's
assignment (one anchor per box, the best by shape IoU).

Example::

    targets = encode_targets(batch_boxes, layout, (416, 416), classes=3)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .anchors import shape_iou


@dataclass(frozen=True)
class HeadLayout:
    """Where each head sits: its stride (input pixels per cell) and anchors (pixels)."""

    strides: tuple[int, ...]
    anchors: tuple[tuple[tuple[float, float], ...], ...]
    scales_xy: tuple[float, ...] = ()  # [yolo] scale_x_y per head (1 when empty)

    def scale_xy(self, head: int) -> float:
        return self.scales_xy[head] if head < len(self.scales_xy) else 1.0

    @property
    def all_anchors(self) -> np.ndarray:
        return np.array([a for head in self.anchors for a in head], np.float64)


def head_layout(spec) -> HeadLayout:
    """Strides and anchors of a Spec's heads (strides from shape inference at the cfg size)."""
    from .spec import analyse, heads

    infos = analyse(spec)
    hs = heads(spec)
    strides = tuple(int(round(spec.height / infos[h.conv].out_shape[0])) for h in hs)
    return HeadLayout(strides, tuple(h.anchors for h in hs), tuple(h.scale_xy for h in hs))


def encode_targets(
    boxes: Sequence[np.ndarray], layout: HeadLayout, input_hw: tuple[int, int], classes: int
) -> list[np.ndarray]:
    """Targets for a batch; ``boxes[b]`` is (n, 5) x1, y1, x2, y2, class in input pixels."""
    in_h, in_w = input_hw
    all_anchors = layout.all_anchors
    owner = np.concatenate([[i] * len(a) for i, a in enumerate(layout.anchors)])
    slot = np.concatenate([np.arange(len(a)) for a in layout.anchors])
    out = [
        np.zeros((len(boxes), in_h // s, in_w // s, len(a), 5 + classes), np.float32)
        for s, a in zip(layout.strides, layout.anchors)
    ]
    for b, bx in enumerate(boxes):
        bx = np.asarray(bx, np.float32).reshape(-1, 5)
        if not len(bx):
            continue
        wh = np.stack([bx[:, 2] - bx[:, 0], bx[:, 3] - bx[:, 1]], axis=1)
        best = shape_iou(np.maximum(wh, 1e-3), all_anchors).argmax(axis=1)
        for (x1, y1, x2, y2, c), k in zip(bx, best):
            head, a = owner[k], slot[k]
            stride = layout.strides[head]
            target = out[head]
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            gx = min(int(cx // stride), target.shape[2] - 1)
            gy = min(int(cy // stride), target.shape[1] - 1)
            cell = target[b, gy, gx, a]
            cell[:] = 0
            cell[:4] = (cx, cy, x2 - x1, y2 - y1)
            cell[4] = 1.0
            cell[5 + int(c)] = 1.0
    return out
