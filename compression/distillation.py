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

Example::

    per_image = distillation_loss(student_outputs, teacher_outputs, anchors_per_head=[3, 3])
    train(config, RunOptions("pruned.h5", True, hooks=(Distillation("best.h5", weight=1.0),)))
"""

from __future__ import annotations

import sys
from pathlib import Path

from yolo3.errors import UserError
from yolo3.hooks import TrainingContext, TrainingHook
from yolo3.kerasenv import tf
from yolo3.spec import Spec, heads


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


def check_teacher(student: Spec, teacher: Spec, source) -> None:
    """The teacher must predict what the student predicts: same heads, anchors and classes."""
    sh, th = heads(student), heads(teacher)
    same = len(sh) == len(th) and all(a.anchors == b.anchors and a.classes == b.classes for a, b in zip(sh, th))
    if not same:
        raise UserError("the teacher's detection heads (anchors, classes) differ from the student's; distil from the model it was pruned from", source)


class Distillation(TrainingHook):
    """The student also learns the raw heads of a frozen teacher (the model before pruning), weighted by ``weight``."""

    def __init__(self, teacher_path: str | Path, weight: float = 1.0):
        self.path = Path(teacher_path)
        self.weight = float(weight)
        self.teacher = None
        self.anchors_per_head: list[int] = []

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
        self.anchors_per_head = [len(h.anchors) for h in heads(context.spec)]
        print(f"distilling from {self.path}", file=sys.stderr, flush=True)

    def loss(self, images, outputs):
        taught = self.teacher(images, training=False)
        taught = taught if isinstance(taught, (list, tuple)) else [taught]
        return self.weight * distillation_loss(outputs, taught, self.anchors_per_head)
