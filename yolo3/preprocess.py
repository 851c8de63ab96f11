"""Image decoding and letterboxing with numpy and Pillow only.

The same functions feed the Keras model, the TFLite interpreter, OpenCV DNN in
the tests and the edge runner, so a difference in their detections can only
come from the model.

Example::

    from yolo3.preprocess import load_image, letterbox
    image = load_image("dog.jpg")                 # uint8 RGB, (h, w, 3)
    tensor, box = letterbox(image, 416)          # float32 (416, 416, 3) in [0, 1]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import UserError

Image.MAX_IMAGE_PIXELS = None  # the limit below is ours (Pillow's warns at 89 M pixels and fails only at twice that)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")

FILL = 0.5  # Darknet fills the letterbox border with grey 0.5

# The largest image accepted, in pixels (width x height): a bigger one is refused before it is decoded, so a file
# whose header claims 20000 x 20000 (a "decompression bomb") costs nothing. Change it with YOLO3_MAX_IMAGE_PIXELS.
MAX_IMAGE_PIXELS = int(os.environ.get("YOLO3_MAX_IMAGE_PIXELS", 100_000_000))


def check_pixels(width: int, height: int, path) -> None:
    """Refuse an image larger than :data:`MAX_IMAGE_PIXELS` (one message naming the file and the limit)."""
    if width * height > MAX_IMAGE_PIXELS:
        raise UserError(f"{width} x {height} pixels is more than the {MAX_IMAGE_PIXELS:,} accepted "
                        "(raise YOLO3_MAX_IMAGE_PIXELS if it is a real image)", path)  # fmt: skip


@dataclass(frozen=True)
class Letterbox:
    """How an image was placed in the network input: ``input = image * scale + (pad_x, pad_y)``."""

    scale: float
    pad_x: float
    pad_y: float
    width: int  # original image size
    height: int

    def to_image(self, boxes: np.ndarray) -> np.ndarray:
        """Map (n, 4) x1, y1, x2, y2 boxes from input pixels back to image pixels, clipped."""
        out = np.empty_like(boxes, dtype=np.float32)
        out[:, [0, 2]] = (boxes[:, [0, 2]] - self.pad_x) / self.scale
        out[:, [1, 3]] = (boxes[:, [1, 3]] - self.pad_y) / self.scale
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, self.width)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, self.height)
        return out

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        """Map (n, 4) boxes from image pixels to input pixels."""
        out = np.empty_like(boxes, dtype=np.float32)
        out[:, [0, 2]] = boxes[:, [0, 2]] * self.scale + self.pad_x
        out[:, [1, 3]] = boxes[:, [1, 3]] * self.scale + self.pad_y
        return out


def load_image(path: str | Path) -> np.ndarray:
    """Decode an image file (any format Pillow reads, whatever its extension) to uint8 RGB.

    A file that cannot be decoded (missing, truncated, not an image) raises
    :class:`UserError` naming it.
    """
    return _decode(Path(path), None)[0]


def _decode(path: Path, min_side: int | None) -> tuple[np.ndarray, float]:
    try:
        with Image.open(path) as img:
            check_pixels(img.width, img.height, path)
            width = img.width
            if min_side is not None and img.format == "JPEG":
                scale = min_side / max(img.width, img.height)
                if scale < 1:
                    img.draft("RGB", (max(1, int(img.width * scale)), max(1, int(img.height * scale))))
            img.load()
            image = np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise UserError("no such image", path) from None
    except UnidentifiedImageError:
        raise UserError("not an image Pillow can read", path) from None
    except Image.DecompressionBombError:
        raise UserError(f"more than the {MAX_IMAGE_PIXELS:,} pixels accepted (raise YOLO3_MAX_IMAGE_PIXELS if it is a real image)", path) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise UserError(f"cannot decode image: {err}", path) from None
    return image, image.shape[1] / width


def load_image_reduced(path: str | Path, min_side: int) -> tuple[np.ndarray, float]:
    """Decode an image at reduced size where the format allows it cheaply (JPEG DCT scaling).

    Returns the uint8 RGB image and its width relative to the file's (1.0 if
    not reduced); the image is reduced only as far as its longer side stays at
    least ``min_side`` pixels, what a letterbox of that size needs (JPEG scaling
    is by 1/2, 1/4 or 1/8, so usually more stays). A large JPEG decoded at 1/2, 1/4
    or 1/8 costs a fraction of a full decode, which is what keeps the training
    pipeline from starving the model on a 2-core machine.
    """
    return _decode(Path(path), min_side)


def letterbox_geometry(width: int, height: int, size: int | tuple[int, int]) -> tuple[int, int, Letterbox]:
    """The resized size and placement of a ``width`` x ``height`` image in a ``size`` input."""
    in_h, in_w = (size, size) if isinstance(size, int) else size
    scale = min(in_w / width, in_h / height)
    new_w = max(1, min(in_w, int(round(width * scale))))
    new_h = max(1, min(in_h, int(round(height * scale))))
    pad_x = (in_w - new_w) // 2
    pad_y = (in_h - new_h) // 2
    return new_w, new_h, Letterbox(scale, float(pad_x), float(pad_y), width, height)


def letterbox(image: np.ndarray, size: int | tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio (bilinear) and pad with grey to ``size``.

    Returns a float32 (h, w, 3) array in [0, 1] and the :class:`Letterbox`
    that maps boxes back to the image.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (h, w, 3) RGB image, got shape {image.shape}")
    height, width = image.shape[:2]
    new_w, new_h, box = letterbox_geometry(width, height, size)
    in_h, in_w = (size, size) if isinstance(size, int) else size
    if (new_w, new_h) != (width, height):
        resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    else:
        resized = image
    out = np.full((in_h, in_w, 3), FILL, dtype=np.float32)
    y, x = int(box.pad_y), int(box.pad_x)
    out[y : y + new_h, x : x + new_w] = resized.astype(np.float32) / 255.0
    return out, box


def letterboxed_images(paths, size: int | tuple[int, int]) -> np.ndarray:
    """The images at ``paths`` letterboxed to ``size`` and stacked, float32 (n, h, w, 3).

    Calibration, range measurement, AdaRound and QAT all feed the model the
    images exactly as evaluation does; one function keeps them the same.
    """
    return np.stack([letterbox(load_image(path), size)[0] for path in paths]).astype(np.float32)
