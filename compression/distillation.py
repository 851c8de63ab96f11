"""Knowledge distillation for detection: the student learns the teacher's raw head outputs, cell by cell.

After pruning, a few hundred labelled images carry too little signal to
re-learn what the removed filters did: each image has a handful of boxes, so
the detection loss supervises a handful of anchor cells. The unpruned model
(the teacher) has an opinion about every cell of every image — where nothing
is, how sure it is, and what box it would draw — and the student can match
that everywhere. Per head and anchor cell, with ``p`` the teacher's
objectness probability::

    KL(sigmoid(t_obj) || sigmoid(s_obj))
    + p * ( |sigmoid(s_xy) - sigmoid(t_xy)|^2 + |s_wh - t_wh|^2 + sum_c KL(sigmoid(t_c) || sigmoid(s_c)) )

summed over cells like the YOLO loss (one value per image), so that a weight
of 1 puts it on the detection loss's scale. Box and class terms count only
where the teacher sees an object; objectness everywhere. Binary KL (cross
entropy minus the teacher's entropy) is 0 when the student agrees.

Fine-grained feature imitation (Wang et al., CVPR 2019) adds a second signal:
the neck feature maps (the inputs of the 1x1 convolutions the heads decode)
imitate the teacher's, but only near objects — where an anchor at that cell
overlaps a ground-truth box by more than ``psi`` (0.5) times that box's best
anchor overlap on that head. Background cells are left to the output term: most
of a feature map is background, and matching it everywhere drowns the few cells
that carry the objects. Per image and head, with ``M`` the masked cells::

    sum over M of mean_c (a(s) - t)^2  /  mean over M of mean_c t^2

i.e. the cells' relative squared error, summed over cells like the detection
loss (a weight of 1 puts a 20 % feature error on about the detection loss's
scale; the paper's absolute error would tie the weight to each model's
activation magnitudes). ``a`` is the identity where the widths agree (levers,
input size) and a learned 1x1 adapter where pruning narrowed the student's neck;
the adapter trains with its own Adam and is dropped with the teacher.

Example::

    per_image = distillation_loss(student_outputs, teacher_outputs, anchors_per_head=[3, 3])
    train(config, RunOptions("pruned.h5", True, hooks=(Distillation("best.h5", weight=1.0, feature_weight=1.0),)))
"""

from __future__ import annotations

import sys
from pathlib import Path

from yolo3.errors import UserError
from yolo3.hooks import TrainingContext, TrainingHook
from yolo3.kerasenv import keras, tf
from yolo3.names import conv_name, find_layer
from yolo3.spec import Spec, heads

IMITATION_PSI = 0.5  # Wang et al.'s threshold factor: cells whose anchor overlaps a box by more than psi x its best overlap
ADAPTER_LEARNING_RATE = 1e-3


def _binary_kl(teacher_logits, student_logits):
    p = tf.sigmoid(teacher_logits)
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=p, logits=student_logits)
    entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=p, logits=teacher_logits)
    return ce - entropy


def distillation_loss(student_outputs, teacher_outputs, anchors_per_head: list[int]):
    """Per-image distillation loss (B,) between raw heads (B, gh, gw, A*(5+C)) of student and teacher."""
    total = 0.0
    for s, t, na in zip(student_outputs, teacher_outputs, anchors_per_head):
        shape = tf.shape(s)
        s = tf.reshape(tf.cast(s, tf.float32), [shape[0], shape[1], shape[2], na, -1])
        t = tf.stop_gradient(tf.reshape(tf.cast(t, tf.float32), [shape[0], shape[1], shape[2], na, -1]))
        p = tf.sigmoid(t[..., 4])
        xy = tf.reduce_sum(tf.square(tf.sigmoid(s[..., 0:2]) - tf.sigmoid(t[..., 0:2])), axis=-1)
        wh = tf.reduce_sum(tf.square(s[..., 2:4] - t[..., 2:4]), axis=-1)
        cls = tf.reduce_sum(_binary_kl(t[..., 5:], s[..., 5:]), axis=-1)
        per_cell = _binary_kl(t[..., 4], s[..., 4]) + p * (xy + wh + cls)
        total += tf.reduce_sum(per_cell, axis=[1, 2, 3])
    return total


def _anchor_boxes(grid_h, grid_w, stride_h, stride_w, anchors):
    """(gh * gw * A, 4) x1, y1, x2, y2 of every anchor centred on every cell, in input pixels."""
    cy = (tf.range(grid_h, dtype=tf.float32) + 0.5) * stride_h
    cx = (tf.range(grid_w, dtype=tf.float32) + 0.5) * stride_w
    cy, cx = tf.meshgrid(cy, cx, indexing="ij")  # (gh, gw)
    centre = tf.stack([cx, cy], axis=-1)[:, :, None, :]  # (gh, gw, 1, 2)
    half = tf.constant(anchors, tf.float32)[None, None] / 2.0  # (1, 1, A, 2)
    return tf.reshape(tf.concat([centre - half, centre + half], axis=-1), [-1, 4])


def imitation_mask(gt_boxes, input_hw, grid_hw, anchors, psi: float = IMITATION_PSI):
    """(B, gh, gw) float: 1 on the cells whose anchors overlap a ground-truth box by more than ``psi`` x that box's best overlap on this head.

    ``gt_boxes`` (B, M, 4) x1, y1, x2, y2 in input pixels with zero rows for
    padding; ``anchors`` the head's (w, h) in pixels. An image without boxes has
    an empty mask.
    """
    gt = tf.cast(gt_boxes, tf.float32)
    gh, gw = grid_hw
    stride_h = tf.cast(input_hw[0], tf.float32) / tf.cast(gh, tf.float32)
    stride_w = tf.cast(input_hw[1], tf.float32) / tf.cast(gw, tf.float32)
    boxes = _anchor_boxes(gh, gw, stride_h, stride_w, anchors)  # (N, 4)
    lo = tf.maximum(boxes[None, :, None, :2], gt[:, None, :, :2])
    hi = tf.minimum(boxes[None, :, None, 2:], gt[:, None, :, 2:])
    inter = tf.reduce_prod(tf.maximum(hi - lo, 0.0), axis=-1)  # (B, N, M)
    area_a = tf.reduce_prod(boxes[:, 2:] - boxes[:, :2], axis=-1)[None, :, None]
    area_g = tf.reduce_prod(tf.maximum(gt[..., 2:] - gt[..., :2], 0.0), axis=-1)[:, None, :]
    iou = inter / tf.maximum(area_a + area_g - inter, 1e-9)
    best = tf.reduce_max(iou, axis=1, keepdims=True)  # (B, 1, M): each box's best anchor
    hit = tf.logical_and(iou > psi * best, best > 0.0)  # padding rows have best 0
    per_anchor = tf.reduce_any(hit, axis=-1)  # (B, N)
    per_cell = tf.reduce_any(tf.reshape(per_anchor, [tf.shape(gt)[0], gh, gw, len(anchors)]), axis=-1)
    return tf.cast(per_cell, tf.float32)


def feature_imitation_loss(student_features, teacher_features, masks):
    """Per-image (B,) relative squared error of the masked cells, summed over cells and heads (see the module docstring)."""
    total = 0.0
    for s, t, m in zip(student_features, teacher_features, masks):
        t = tf.stop_gradient(tf.cast(t, tf.float32))
        per_cell = tf.reduce_mean(tf.square(tf.cast(s, tf.float32) - t), axis=-1)  # (B, gh, gw)
        cells = tf.reduce_sum(m, axis=[1, 2])
        energy = tf.reduce_sum(m * tf.reduce_mean(tf.square(t), axis=-1), axis=[1, 2]) / tf.maximum(cells, 1.0)
        total += tf.reduce_sum(m * per_cell, axis=[1, 2]) / tf.maximum(tf.stop_gradient(energy), 1e-6)
    return total


def check_teacher(student: Spec, teacher: Spec, source) -> None:
    """The teacher must predict what the student predicts: same heads, anchors and classes."""
    sh, th = heads(student), heads(teacher)
    same = len(sh) == len(th) and all(a.anchors == b.anchors and a.classes == b.classes for a, b in zip(sh, th))
    if not same:
        raise UserError("the teacher's detection heads (anchors, classes) differ from the student's; distil from the model it was pruned from", source)


class Distillation(TrainingHook):
    """The student also learns the raw heads of a frozen teacher (the model before pruning), weighted by ``weight``."""

    def __init__(self, teacher_path: str | Path, weight: float = 1.0, feature_weight: float = 0.0):
        self.path = Path(teacher_path)
        self.weight = float(weight)
        self.feature_weight = float(feature_weight)
        self.teacher = None
        self.anchors_per_head: list[int] = []
        self.anchors: list = []
        self.necks: tuple[str, ...] = ()  # the heads' 1x1 convolutions: their inputs are the imitated feature maps
        self.adapters: list = []  # per head: a 1x1 Conv2D where the widths differ, None where they agree
        self.optimizer = None

    def feature_layers(self) -> tuple[str, ...]:
        return self.necks

    def on_train_begin(self, context: TrainingContext) -> None:
        """Load the teacher, check it predicts what the student does, freeze it at the training input size."""
        from yolo3.keras_model import build_model
        from yolo3.models import load_model
        from yolo3.training import copy_weights

        if not self.path.exists():
            raise UserError("the distillation teacher does not exist", self.path)
        architecture = context.config.model.architecture if self.path.suffix.lower() == ".weights" else None
        loaded = load_model(self.path, architecture=architecture)
        check_teacher(context.spec, loaded.spec, self.path)
        self.teacher = build_model(loaded.spec, size=context.input_size)
        copy_weights(loaded.model, self.teacher)
        self.teacher.trainable = False
        student_heads = heads(context.spec)
        self.anchors_per_head = [len(h.anchors) for h in student_heads]
        self.anchors = [h.anchors for h in student_heads]
        what = "the heads"
        if self.feature_weight:
            self.necks = tuple(conv_name(h.conv) for h in student_heads)
            teacher_necks = [find_layer(self.teacher, conv_name(h.conv)).input for h in heads(loaded.spec)]
            self.teacher = keras.Model(self.teacher.input, list(self.teacher.outputs) + teacher_necks)
            self.teacher.trainable = False
            self.adapters = []
            for name, t in zip(self.necks, teacher_necks):
                width_s, width_t = int(find_layer(context.model, name).input.shape[-1]), int(t.shape[-1])
                adapter = None
                if width_s != width_t:
                    adapter = keras.layers.Conv2D(width_t, 1, use_bias=False, name=f"imitation_adapter_{name}")
                    adapter.build((None, None, None, width_s))
                self.adapters.append(adapter)
            self.optimizer = keras.optimizers.Adam(ADAPTER_LEARNING_RATE)
            adapted = sum(a is not None for a in self.adapters)
            what += f" and the neck features near the objects (weight {self.feature_weight:g}{f', {adapted} adapter(s)' if adapted else ''})"
        print(f"distilling {what} from {self.path}", file=sys.stderr, flush=True)

    def trainable_variables(self) -> list:
        return [v for a in self.adapters if a is not None for v in a.trainable_variables]

    def apply_gradients(self, grads_and_vars) -> None:
        if grads_and_vars:
            self.optimizer.apply_gradients(grads_and_vars)

    def loss(self, images, outputs, features=None, gt_boxes=None):
        taught = self.teacher(images, training=False)
        taught = list(taught) if isinstance(taught, (list, tuple)) else [taught]
        n = len(self.anchors_per_head)
        total = self.weight * distillation_loss(outputs, taught[:n], self.anchors_per_head)
        if features is not None and self.feature_weight:
            hw = tf.shape(images)[1:3]
            masks = [imitation_mask(gt_boxes, hw, (tf.shape(t)[1], tf.shape(t)[2]), a) for t, a in zip(taught[n:], self.anchors)]
            adapted = [f if a is None else a(f) for f, a in zip(features, self.adapters)]
            total += self.feature_weight * feature_imitation_loss(adapted, taught[n:], masks)
        return total
