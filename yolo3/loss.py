"""The YOLOv3 loss, as keras-yolo3 (experiencor) defines it, on raw head outputs.

Per head and anchor cell, with ``obj`` = 1 where a box was assigned (see
:mod:`yolo3.targets`):

- box: ``xywh_scale * obj * (2 - w*h / input area) * (|s * sigmoid(t_xy) - (s - 1) / 2 - offset|^2 + |t_wh - log(wh / anchor)|^2)``
  (``s`` is the head's ``scale_x_y``, 1 in YOLOv3)
- objectness: ``obj_scale * obj * BCE(1, p) + noobj_scale * (1 - obj) * ignore * BCE(0, p)``, where
  ``ignore`` is 0 for predictions whose best IoU with any ground-truth box
  exceeds ``ignore_thresh`` (a good box that was not assigned is not punished)
- class: ``class_scale * obj * sum BCE(one-hot, p(class))``

Each head's sum is multiplied by its ``grid_scales`` entry. The result is one
loss per image, so that a distribution strategy can divide by the global batch.

Example::

    per_image, parts = yolo_loss(outputs, targets, gt_boxes, layout, LossSettings(), input_hw=(416, 416))
"""

from __future__ import annotations

from dataclasses import dataclass

from .kerasenv import tf
from .targets import HeadLayout


@dataclass(frozen=True)
class LossSettings:
    ignore_thresh: float = 0.5
    grid_scales: tuple[float, ...] = (1.0, 1.0, 1.0)
    obj_scale: float = 5.0
    noobj_scale: float = 1.0
    xywh_scale: float = 1.0
    class_scale: float = 1.0


def _bce(labels, logits):
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)


def _iou(pred, gt):
    """pred (B, N, 4), gt (B, M, 4), both x1, y1, x2, y2 -> (B, N, M)."""
    p = pred[:, :, None, :]
    g = gt[:, None, :, :]
    iw = tf.maximum(tf.minimum(p[..., 2], g[..., 2]) - tf.maximum(p[..., 0], g[..., 0]), 0.0)
    ih = tf.maximum(tf.minimum(p[..., 3], g[..., 3]) - tf.maximum(p[..., 1], g[..., 1]), 0.0)
    inter = iw * ih
    area_p = (p[..., 2] - p[..., 0]) * (p[..., 3] - p[..., 1])
    area_g = (g[..., 2] - g[..., 0]) * (g[..., 3] - g[..., 1])
    return inter / tf.maximum(area_p + area_g - inter, 1e-9)


def yolo_loss(outputs, targets, gt_boxes, layout: HeadLayout, settings: LossSettings, input_hw):
    """Per-image loss (B,) and a dict of per-image components (box, objectness, class).

    ``outputs``: raw heads (B, gh, gw, A*(5+C)); ``targets``: from
    :func:`~yolo3.targets.encode_targets`; ``gt_boxes``: (B, M, 4) x1, y1, x2, y2
    in input pixels, zero rows for padding.
    """
    dtype = outputs[0].dtype if outputs[0].dtype in (tf.float32, tf.float64) else tf.float32
    in_h = tf.cast(input_hw[0], dtype)
    in_w = tf.cast(input_hw[1], dtype)
    parts = {"box": 0.0, "objectness": 0.0, "class": 0.0}
    gt_boxes = tf.cast(gt_boxes, dtype)
    for i, (raw, target) in enumerate(zip(outputs, targets)):
        anchors = tf.constant(layout.anchors[i], dtype)
        na = len(layout.anchors[i])
        shape = tf.shape(raw)
        batch, gh, gw = shape[0], shape[1], shape[2]
        raw = tf.reshape(tf.cast(raw, dtype), [batch, gh, gw, na, -1])
        target = tf.cast(target, dtype)
        stride = tf.cast(layout.strides[i], dtype)
        gx = tf.cast(tf.range(gw), dtype)[None, None, :, None]
        gy = tf.cast(tf.range(gh), dtype)[None, :, None, None]
        grid = tf.stack([tf.broadcast_to(gx, [1, gh, gw, 1]), tf.broadcast_to(gy, [1, gh, gw, 1])], axis=-1)

        s = layout.scale_xy(i)  # [yolo] scale_x_y: the offset reaches (s - 1) / 2 beyond the cell
        pred_xy_offset = s * tf.sigmoid(raw[..., 0:2]) - 0.5 * (s - 1.0)
        pred_wh_raw = raw[..., 2:4]
        pred_centre = (pred_xy_offset + grid) * stride
        pred_wh = tf.exp(tf.minimum(pred_wh_raw, 10.0)) * anchors
        pred_box = tf.concat([pred_centre - pred_wh / 2, pred_centre + pred_wh / 2], axis=-1)

        obj = target[..., 4]
        true_centre = target[..., 0:2]
        true_wh = target[..., 2:4]
        true_offset = true_centre / stride - grid
        true_wh_raw = tf.where(obj[..., None] > 0, tf.math.log(tf.maximum(true_wh, 1e-9) / anchors), 0.0)

        best_iou = tf.reduce_max(_iou(tf.reshape(pred_box, [batch, -1, 4]), gt_boxes), axis=-1)
        ignore = tf.reshape(tf.cast(best_iou < settings.ignore_thresh, dtype), [batch, gh, gw, na])

        box_scale = 2.0 - true_wh[..., 0] * true_wh[..., 1] / (in_h * in_w)
        xy_loss = tf.reduce_sum(tf.square(pred_xy_offset - true_offset), axis=-1)
        wh_loss = tf.reduce_sum(tf.square(pred_wh_raw - true_wh_raw), axis=-1)
        box = settings.xywh_scale * obj * box_scale * (xy_loss + wh_loss)
        objectness = settings.obj_scale * obj * _bce(obj, raw[..., 4]) + settings.noobj_scale * (1 - obj) * ignore * _bce(
            obj, raw[..., 4]
        )
        cls = settings.class_scale * obj * tf.reduce_sum(_bce(target[..., 5:], raw[..., 5:]), axis=-1)

        scale = settings.grid_scales[i] if i < len(settings.grid_scales) else 1.0
        parts["box"] += scale * tf.reduce_sum(box, axis=[1, 2, 3])
        parts["objectness"] += scale * tf.reduce_sum(objectness, axis=[1, 2, 3])
        parts["class"] += scale * tf.reduce_sum(cls, axis=[1, 2, 3])
    total = parts["box"] + parts["objectness"] + parts["class"]
    return total, parts
