"""A ``.tflite`` whose graph also decodes the boxes and runs NMS, with the outputs detection apps expect.

The decode is mapped onto TFLite's own post-processing operator,
``TFLite_Detection_PostProcess`` (the one SSD models carry, run by every LiteRT
build and by the usual Android / iOS detection apps). Its outputs are boxes
(1, N, 4) as ymin, xmin, ymax, xmax normalised to [0, 1] of the model input,
classes (1, N), scores (1, N) and the count (1,), in float, whatever the
precision of the graph before it.

That operator decodes SSD box encodings against anchors::

    ycenter = y / y_scale * anchor_h + anchor_y      h = exp(h_enc / h_scale) * anchor_h

A YOLO head decodes as ``ycenter = (sigmoid(ty) + cell_y) / grid_h`` and
``h = exp(th) * prior_h / input_h``. With one "anchor" per cell and prior
(centre of the cell, prior size / input size) and y_scale = x_scale = 1, the encodings
are ``y = (sigmoid(ty) - 0.5) * stride / prior_h`` and ``h = th * h_scale``: no exp in the
graph, and the values the int8 tensor must hold are offsets relative to the
prior's size, so the quantization error of a box scales with the box (a
centre in [0, 1] would carry an error of ~1 pixel in every box). Scores
(objectness x class probability) travel in a tensor of their own: one scale
shared by pixel boxes and scores would round every score to 0.

Example::

    serve = nms_function(keras_model, metadata, score_threshold=0.005, iou=0.45, max_detections=100)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], keras_model)
"""

from __future__ import annotations

import numpy as np

OUTPUT_NAMES = ("boxes", "classes", "scores", "count")  # the operator's outputs, in its order
# h_enc = th * SIZE_SCALE: a multiplication of its own gives the encodings a quantization scale of
# their own (tied to the raw head output, the head's logits would be clipped to the encodings' range)
SIZE_SCALE = 0.25
# The int8 encodings' range must hold every size a test image may ask for, not only those the
# calibration images did: an extra prior with zero score carries these encodings, which pins the
# range to th in [-4.5, 4] (a box from 1/90 to 55x its prior; 3 % steps in size).
RANGE_PIN = (-4.5 * SIZE_SCALE, 4.0 * SIZE_SCALE)


def priors(metadata: dict) -> tuple[np.ndarray, np.ndarray]:
    """The operator's anchors (N + 1, 4: y, x, h, w normalised) and the offset multipliers (N, 2: for y, x) of every head cell and prior.

    N runs over heads in output order, then rows, columns and priors, as the
    raw outputs are laid out (and as :func:`yolo3.postprocess.decode` reads them);
    the last anchor is the range pin's (never detected: its score is 0).
    """
    in_h, in_w = metadata["input_size"]
    anchors, multipliers = [], []
    for head, (gh, gw, _) in zip(metadata["heads"], metadata["output_shapes"]):
        prior = np.asarray(head["anchors"], np.float64)  # (na, 2): w, h in input pixels
        gy, gx, a = np.meshgrid(np.arange(gh), np.arange(gw), np.arange(len(prior)), indexing="ij")
        gy, gx, a = gy.ravel(), gx.ravel(), a.ravel()
        ph, pw = prior[a, 1], prior[a, 0]
        anchors.append(np.stack([(gy + 0.5) / gh, (gx + 0.5) / gw, ph / in_h, pw / in_w], axis=1))
        s = float(head.get("scale_xy", 1.0))  # the centre is s * (sigmoid - 0.5) cells from the cell's centre
        multipliers.append(np.stack([s * in_h / gh / ph, s * in_w / gw / pw], axis=1))
    anchors.append(np.asarray([[0.5, 0.5, 1.0, 1.0]]))
    return np.concatenate(anchors).astype(np.float32), np.concatenate(multipliers).astype(np.float32)


def implements_signature(classes: int, score_threshold: float, iou: float, max_detections: int, classes_per_box: int = 1) -> str:
    """The ``experimental_implements`` text that makes the converter emit ``TFLite_Detection_PostProcess``.

    The operator's "fast" NMS: boxes ranked by their best class score and
    suppressed across classes, each kept box reported with its
    ``classes_per_box`` best classes (box-major: a box's classes follow each
    other, best first). Its per-class ("regular") NMS would match
    :func:`yolo3.postprocess.nms`, but LiteRT 2.3 loses every detection of class
    T when it runs with T threads (T < classes; tensorflow/tensorflow#56058,
    reproduced in ``tests/test_tflite.py``), and an app chooses its threads.
    With one class per box (SSD models' default) an 80-class model loses the
    boxes' other classes: 2.0 points of mAP@0.5 on coco128 for YOLOv3-tiny int8
    against the numpy path; with 3 0.3, with 5 none (bench/results/nms-classes-coco128.md).
    """
    attrs = {
        "max_detections": ("i", max_detections),
        "max_classes_per_detection": ("i", classes_per_box),
        "detections_per_class": ("i", max_detections),
        "use_regular_nms": ("b", "false"),
        "nms_score_threshold": ("f", score_threshold),
        "nms_iou_threshold": ("f", iou),
        "num_classes": ("i", classes),
        "y_scale": ("f", 1.0),
        "x_scale": ("f", 1.0),
        "h_scale": ("f", SIZE_SCALE),
        "w_scale": ("f", SIZE_SCALE),
    }
    parts = ['name: "TFLite_Detection_PostProcess"']
    parts += [f'attr {{ key: "{k}" value {{ {t}: {v} }} }}' for k, (t, v) in attrs.items()]
    return " ".join(parts)


def nms_function(model, metadata: dict, score_threshold: float, iou: float, max_detections: int, classes_per_box: int = 1):
    """A ``tf.function`` (image (1, h, w, 3) in [0, 1] -> boxes, classes, scores, count) around ``model``.

    ``count`` counts entries (kept boxes x classes per box), not boxes as the
    operator does, so an app that reads ``count`` entries sees every class of
    every kept box (and filters them by score, as it does anyway).
    """
    from yolo3.kerasenv import tf

    in_h, in_w = metadata["input_size"]
    classes = int(metadata["heads"][0]["classes"])
    per_box = max(1, min(classes_per_box, classes))
    entries = max_detections * per_box
    anchor_table, multiplier_table = priors(metadata)
    anchors = tf.constant(anchor_table)
    shapes = [(gh * gw * len(h["anchors"]), 5 + int(h["classes"])) for h, (gh, gw, _) in zip(metadata["heads"], metadata["output_shapes"])]

    @tf.function(experimental_implements=implements_signature(classes, score_threshold, iou, max_detections, per_box))
    def postprocess(box_encodings, class_predictions, anchor_boxes):  # replaced by the operator in the converted model
        del box_encodings, class_predictions, anchor_boxes
        return (tf.zeros([1, entries, 4]), tf.zeros([1, entries]), tf.zeros([1, entries]), tf.zeros([1]))

    @tf.function(input_signature=[tf.TensorSpec([1, in_h, in_w, 3], tf.float32, name="image")])
    def serve(image):
        outputs = model(image, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        encodings, scores, start = [], [], 0
        for output, (n, depth) in zip(outputs, shapes):
            # one slice per value, put in the operator's y, x, h, w order by the concatenation (which requantizes
            # its inputs; a reversal would not: TFLite's int8 REVERSE_V2 copies bytes under a new scale)
            t = tf.reshape(output, [1, n, depth])  # slices, not a split: the Edge TPU runs STRIDED_SLICE but not SPLIT_V
            tx, ty, tw, th, objectness, class_logits = (t[:, :, a:b] for a, b in ((0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, depth)))
            multipliers = multiplier_table[None, start : start + n]
            y = (tf.sigmoid(ty) - 0.5) * multipliers[..., 0:1]
            x = (tf.sigmoid(tx) - 0.5) * multipliers[..., 1:2]
            encodings.append(tf.concat([y, x, th * SIZE_SCALE, tw * SIZE_SCALE], axis=2))
            scores.append(tf.sigmoid(objectness) * tf.sigmoid(class_logits))
            start += n
        low, high = RANGE_PIN
        encodings.append(tf.constant([[[low, high, low, high]]], tf.float32))
        scores.append(tf.zeros([1, 1, classes]))
        boxes, labels, confidences, count = postprocess(tf.concat(encodings, axis=1), tf.concat(scores, axis=1), anchors)
        if per_box > 1:
            # the operator counts boxes; its outputs hold per_box entries for each. In int32: a float product
            # would be quantized by the int8 converter (and a count of 500 rounded to its int8 steps)
            count = tf.cast(tf.cast(count, tf.int32) * per_box, tf.float32)
        return dict(zip(OUTPUT_NAMES, (boxes, labels, confidences, count)))

    return serve
