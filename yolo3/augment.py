"""Training-time image augmentation in numpy + Pillow: random letterbox (scale, aspect, placement), flip, colour jitter.

Runs inside the tf.data pipeline through ``tf.numpy_function``; Pillow's
resize releases the GIL, so parallel map calls overlap.
With ``augment=None`` it is exactly the inference letterbox of
:mod:`yolo3.preprocess`.

Example::

    rng = np.random.default_rng(0)
    image, boxes = augment_example(load_image(path), record.boxes, record.classes, 416, AugmentSettings(), rng)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .preprocess import FILL, letterbox


@dataclass(frozen=True)
class AugmentSettings:
    """How strongly to distort a training image (Darknet's names where it has them)."""

    jitter: float = 0.3  # aspect-ratio change, as in keras-yolo3
    scale: tuple[float, float] = (0.5, 1.5)  # size of the image relative to the input
    flip: bool = True
    hue: float = 0.1  # fraction of the hue circle
    saturation: float = 1.5  # multiply by a factor in [1/s, s]
    exposure: float = 1.5
    min_box: float = 2.0  # boxes narrower than this (pixels) after augmentation are dropped


_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
_RGB = np.linalg.inv(_YIQ).astype(np.float32)


def colour_matrix(s: AugmentSettings, rng: np.random.Generator) -> np.ndarray | None:
    """A random 3x3 colour transform: hue rotation, saturation and exposure scaling, as one matrix.

    Hue is rotated and saturation scaled in YIQ space (a linear stand-in for
    HSV), exposure scales everything; one matrix product per pixel instead of
    two colour-space conversions keeps the training pipeline cheap.
    """
    if s.hue == 0 and s.saturation == 1 and s.exposure == 1:
        return None

    def factor(v: float) -> float:
        f = rng.uniform(1.0, v)
        return f if rng.random() < 0.5 else 1.0 / f

    angle = rng.uniform(-s.hue, s.hue) * 2 * np.pi
    sat = factor(s.saturation)
    exp = factor(s.exposure)
    c, si = np.cos(angle) * sat, np.sin(angle) * sat
    mix = np.array([[1, 0, 0], [0, c, -si], [0, si, c]], np.float32)
    return (exp * (_RGB @ mix @ _YIQ)).T.astype(np.float32)  # for row vectors: rgb @ M


def augment_example(
    image: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    size: int,
    settings: AugmentSettings | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """A float32 (size, size, 3) input and (n, 5) boxes x1, y1, x2, y2, class in input pixels."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    classes = np.asarray(classes, np.float32).reshape(-1, 1)
    if settings is None:
        tensor, box = letterbox(image, size)
        return tensor, np.hstack([box.to_input(boxes), classes]).astype(np.float32)
    h, w = image.shape[:2]
    colour = colour_matrix(settings, rng)
    aspect = w / h * rng.uniform(1 - settings.jitter, 1 + settings.jitter) / rng.uniform(1 - settings.jitter, 1 + settings.jitter)
    scale = rng.uniform(*settings.scale)
    if aspect < 1:
        nh = scale * size
        nw = nh * aspect
    else:
        nw = scale * size
        nh = nw / aspect
    nw, nh = max(1, int(nw)), max(1, int(nh))
    dx = int(rng.uniform(min(0, size - nw), max(0, size - nw)))
    dy = int(rng.uniform(min(0, size - nh), max(0, size - nh)))
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR), np.float32) / 255.0
    if colour is not None:
        resized = np.clip(resized @ colour, 0.0, 1.0)
    canvas = np.full((size, size, 3), FILL, np.float32)
    x0, y0 = max(dx, 0), max(dy, 0)
    x1, y1 = min(dx + nw, size), min(dy + nh, size)
    if x1 > x0 and y1 > y0:
        canvas[y0:y1, x0:x1] = resized[y0 - dy : y1 - dy, x0 - dx : x1 - dx]
    out = np.empty((len(boxes), 4), np.float32)
    out[:, [0, 2]] = boxes[:, [0, 2]] * (nw / w) + dx
    out[:, [1, 3]] = boxes[:, [1, 3]] * (nh / h) + dy
    if settings.flip and rng.random() < 0.5:
        canvas = canvas[:, ::-1]
        out[:, [0, 2]] = size - out[:, [2, 0]]
    out = np.clip(out, 0, size)
    keep = ((out[:, 2] - out[:, 0]) >= settings.min_box) & ((out[:, 3] - out[:, 1]) >= settings.min_box)
    return np.ascontiguousarray(canvas), np.hstack([out[keep], classes[keep]]).astype(np.float32)
