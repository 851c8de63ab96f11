"""Draw labelled detection boxes on an image (Pillow only, so the edge runner can use it)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .postprocess import Detections

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230)]


def draw_detections(image: np.ndarray, detections: Detections, names: Sequence[str] | None = None) -> Image.Image:
    """A copy of ``image`` (uint8 RGB) with one box and a 'name score' label per detection."""
    canvas = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(max(canvas.size) / 300))
    for box, score, cls in zip(detections.boxes.tolist(), detections.scores.tolist(), detections.classes.tolist()):
        colour = PALETTE[int(cls) % len(PALETTE)]
        name = names[cls] if names is not None and 0 <= cls < len(names) else str(cls)
        draw.rectangle(box, outline=colour, width=width)
        label = f"{name} {score:.2f}"
        left, top, right, bottom = draw.textbbox((box[0], box[1]), label)
        y = box[1] - (bottom - top) - 4 if box[1] - (bottom - top) - 4 >= 0 else box[1]
        draw.rectangle((box[0], y, box[0] + (right - left) + 4, y + (bottom - top) + 4), fill=colour)
        draw.text((box[0] + 2, y + 1), label, fill=(0, 0, 0))
    return canvas
