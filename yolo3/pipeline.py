"""The tf.data training pipeline: decode, augment, letterbox, encode targets, batch, prefetch.

Per image (in parallel map calls): decode with Pillow, augment
(:mod:`yolo3.augment`) or plain letterbox. Per batch: encode targets for every
head (:mod:`yolo3.targets`). With multi-scale training every batch gets its own
input size (a multiple of 32), drawn before the epoch starts so batches stay
uniform. Each element is ``(images, targets, gt_boxes)``.

Example::

    ds = make_dataset(records, layout, classes=3, settings=PipelineSettings(batch_size=8, input_size=416), epoch=0)
    for images, targets, gt_boxes in ds: ...
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .augment import AugmentSettings, augment_example
from .datasets import Record
from .errors import UserError
from .kerasenv import tf
from .preprocess import FILL, load_image_reduced
from .targets import HeadLayout, encode_targets


@dataclass(frozen=True)
class PipelineSettings:
    batch_size: int = 8
    input_size: int = 416
    multi_scale: tuple[int, int] | None = None  # (smallest, largest) input size, multiples of 32
    augment: AugmentSettings | None = AugmentSettings()
    shuffle: bool = True
    seed: int = 0
    max_boxes: int = 100
    drop_remainder: bool = True
    threads: int = 2  # private thread pool of the input pipeline


def batch_sizes_for_epoch(settings: PipelineSettings, batches: int, epoch: int) -> np.ndarray:
    """The input size of each batch of an epoch (all equal unless multi-scale)."""
    if settings.multi_scale is None:
        return np.full(batches, settings.input_size, np.int32)
    lo, hi = settings.multi_scale
    choices = np.arange(lo, hi + 1, 32, dtype=np.int32)
    return np.random.default_rng([settings.seed, epoch, 7]).choice(choices, batches)


class _ImageCache:
    """Decoded (reduced) training images kept in memory across epochs, up to a byte budget.

    Decoding is the largest per-image cost left in the pipeline; on the small
    datasets this tool fine-tunes on, every image fits.
    """

    def __init__(self, max_bytes: int = 1 << 30):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.items: dict[tuple[str, int], tuple[np.ndarray, float]] = {}

    def get(self, path, min_side: int) -> tuple[np.ndarray, float]:
        key = (str(path), min_side)
        hit = self.items.get(key)
        if hit is not None:
            return hit
        image, factor = load_image_reduced(path, min_side)
        if self.bytes + image.nbytes <= self.max_bytes:
            self.items[key] = (image, factor)
            self.bytes += image.nbytes
        return image, factor


IMAGE_CACHE = _ImageCache()


class _Loader:
    """Loads and augments one record; a picklable callable for tf.numpy_function."""

    def __init__(self, records: Sequence[Record], settings: PipelineSettings):
        self.records = records
        self.settings = settings
        self.warned: set[str] = set()

    def __call__(self, index, size, seed):
        record = self.records[int(index)]
        size = int(size)
        rng = np.random.default_rng(int(seed))
        try:
            # the largest size augmentation can ask for: the input times the top of the scale range
            top = self.settings.augment.scale[1] if self.settings.augment is not None else 1.0
            image, factor = IMAGE_CACHE.get(record.image, int(np.ceil(size * max(1.0, top))))
        except UserError as err:
            if str(record.image) not in self.warned:
                self.warned.add(str(record.image))
                print(f"warning: {err.message}; using a blank image instead", file=sys.stderr)
            image = None
        if image is None:
            tensor, boxes = np.full((size, size, 3), FILL, np.float32), np.zeros((0, 5), np.float32)
        else:
            tensor, boxes = augment_example(image, record.boxes * factor, record.classes, size, self.settings.augment, rng)
        padded = np.zeros((self.settings.max_boxes, 5), np.float32)
        padded[:, 4] = -1
        n = min(len(boxes), self.settings.max_boxes)
        padded[:n] = boxes[:n]
        return tensor.astype(np.float32), padded


def make_dataset(
    records: Sequence[Record], layout: HeadLayout, classes: int, settings: PipelineSettings, epoch: int = 0
) -> tf.data.Dataset:
    """One epoch of training batches ``(images, targets_tuple, gt_boxes)``."""
    n = len(records)
    if n == 0:
        raise UserError("the training set has no images")
    if settings.drop_remainder and n < settings.batch_size:
        raise UserError(f"the training set has {n} images, fewer than one batch of {settings.batch_size}")
    rng = np.random.default_rng([settings.seed, epoch])
    order = rng.permutation(n) if settings.shuffle else np.arange(n)
    batches = n // settings.batch_size if settings.drop_remainder else -(-n // settings.batch_size)
    sizes = np.repeat(batch_sizes_for_epoch(settings, batches, epoch), settings.batch_size)[:n]
    order = order[: len(sizes)]
    seeds = rng.integers(0, 2**31 - 1, len(order))
    loader = _Loader(records, settings)
    na = [len(a) for a in layout.anchors]

    def load(index, size, seed):
        image, boxes = tf.numpy_function(loader, [index, size, seed], [tf.float32, tf.float32])
        image.set_shape([None, None, 3])
        boxes.set_shape([settings.max_boxes, 5])
        return image, boxes

    def encode(images, boxes):
        def fn(images_np, boxes_np):
            hw = images_np.shape[1:3]
            kept = [b[b[:, 4] >= 0] for b in boxes_np]
            targets = encode_targets(kept, layout, hw, classes)
            return (*targets, boxes_np[..., :4].astype(np.float32))

        out = tf.numpy_function(fn, [images, boxes], [tf.float32] * (len(na) + 1))
        targets = []
        for t, a in zip(out[:-1], na):
            t.set_shape([None, None, None, a, 5 + classes])
            targets.append(t)
        gt = out[-1]
        gt.set_shape([None, settings.max_boxes, 4])
        return images, tuple(targets), gt

    ds = tf.data.Dataset.from_tensor_slices((order.astype(np.int64), sizes.astype(np.int32), seeds.astype(np.int64)))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(settings.batch_size, drop_remainder=settings.drop_remainder)
    ds = ds.map(encode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    # The input work is small next to a training step; two private threads keep it ahead without
    # competing with the model's own thread pools on a small machine.
    options.threading.private_threadpool_size = settings.threads
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)
