"""A deterministic synthetic detection dataset, so the demo and most tests need nothing from outside.

Simple shapes (circle, square, triangle, diamond, cross) of random colour and
size on smooth textured backgrounds, written as JPEG + PASCAL VOC xml. The
same seed gives the same bytes on every machine (numpy's ``RandomState`` and
Pillow's drawing are deterministic).

Example::

    from yolo3.synthetic import generate
    generate("data/synthetic/valid", count=100, names=["circle", "square", "triangle"], seed=2)
    # -> data/synthetic/valid/images/*.jpg and data/synthetic/valid/annotations/*.xml
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageDraw

from .errors import UserError

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
SPLIT_SIZES = {"train": 400, "valid": 100, "test": 100}
SPLIT_SEEDS = {"train": 1, "valid": 2, "test": 3}
MARKER = ".synthetic-complete"


def _background(rng: np.random.RandomState, width: int, height: int) -> Image.Image:
    """Smooth colour noise plus stripes and grain: texture without objects."""
    coarse = rng.uniform(40, 215, size=(rng.randint(3, 9), rng.randint(3, 9), 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(6, 30)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    img += stripes[..., None] * rng.uniform(5, 20)
    img += rng.normal(0, 6, size=img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _polygon(kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if kind == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if kind == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if kind == "cross":
        t = r / 3
        return [
            (cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t), (cx + t, cy + t),
            (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t), (cx - r, cy - t), (cx - t, cy - t),
        ]  # fmt: skip
    raise ValueError(kind)


def _overlap(a: tuple, b: tuple) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def make_image(
    rng: np.random.RandomState, names: Sequence[str]
) -> tuple[Image.Image, list[tuple[str, tuple[int, int, int, int]]]]:
    """One image and its objects (class name, (xmin, ymin, xmax, ymax))."""
    width, height = int(rng.randint(224, 321)), int(rng.randint(224, 321))
    img = _background(rng, width, height)
    draw = ImageDraw.Draw(img)
    objects: list[tuple[str, tuple[int, int, int, int]]] = []
    for _ in range(rng.randint(1, 5)):
        for _attempt in range(20):
            r = rng.uniform(12, 50)
            cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
            box = (int(round(cx - r)), int(round(cy - r)), int(round(cx + r)), int(round(cy + r)))
            if all(_overlap(box, other) < 0.2 for _, other in objects):
                break
        else:
            continue
        cls = int(rng.randint(len(names)))
        kind = SHAPES[cls % len(SHAPES)]
        colour = tuple(int(v) for v in rng.randint(0, 256, 3))
        if max(abs(c - 128) for c in colour) < 70:  # keep shapes visible on mid-grey textures
            colour = tuple(255 - c if c > 128 else c // 3 for c in colour)
        outline = tuple(255 - c for c in colour)
        if kind == "circle":
            draw.ellipse(box, fill=colour, outline=outline, width=2)
        elif kind == "square":
            draw.rectangle(box, fill=colour, outline=outline, width=2)
        else:
            draw.polygon(_polygon(kind, cx, cy, r), fill=colour, outline=outline)
        objects.append((names[cls], box))
    return img, objects


def _voc_xml(filename: str, width: int, height: int, objects: list[tuple[str, tuple[int, int, int, int]]]) -> str:
    parts = [
        "<annotation>",
        "  <folder>images</folder>",
        f"  <filename>{escape(filename)}</filename>",
        f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
    ]
    for name, (x1, y1, x2, y2) in objects:
        parts += [
            "  <object>",
            f"    <name>{escape(name)}</name>",
            "    <difficult>0</difficult>",
            f"    <bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>",
            "  </object>",
        ]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def generate_into(images: Path, annotations: Path, count: int, names: Sequence[str], seed: int) -> None:
    """Write ``count`` images and xml files (folders must exist)."""
    rng = np.random.RandomState(seed)
    for k in range(count):
        img, objects = make_image(rng, names)
        filename = f"synth_{k:05d}.jpg"
        img.save(images / filename, quality=92)
        (annotations / f"synth_{k:05d}.xml").write_text(_voc_xml(filename, img.width, img.height, objects))


def generate(root: str | Path, count: int, names: Sequence[str], seed: int) -> None:
    """Generate a split into ``root/images`` and ``root/annotations``."""
    root = Path(root)
    ensure_folders(root / "images", root / "annotations", count, names, seed)


def ensure_folders(images: str | Path, annotations: str | Path, count: int, names: Sequence[str], seed: int) -> bool:
    """Generate the data unless a complete copy with the same recipe is there; True if generated.

    The folders are filled under temporary names and renamed at the end, so an
    interrupted run never leaves a half-written dataset that looks complete.
    """
    images, annotations = Path(images), Path(annotations)
    if len(names) > len(SHAPES):
        raise UserError(f"the synthetic data has {len(SHAPES)} shapes ({', '.join(SHAPES)}); {len(names)} labels are too many")
    recipe = f"count={count} seed={seed} names={','.join(names)}\n"
    marker = annotations / MARKER
    if marker.is_file() and marker.read_text() == recipe and images.is_dir():
        return False
    for folder in (images, annotations):
        if folder.exists() and any(folder.iterdir()) and not (annotations / MARKER).exists():
            raise UserError("exists and is not synthetic data this tool made; will not overwrite it", folder)
    images.parent.mkdir(parents=True, exist_ok=True)
    annotations.parent.mkdir(parents=True, exist_ok=True)
    tmp_images = Path(tempfile.mkdtemp(prefix=".images.", dir=images.parent))
    tmp_annots = Path(tempfile.mkdtemp(prefix=".annotations.", dir=annotations.parent))
    try:
        generate_into(tmp_images, tmp_annots, count, names, seed)
        (tmp_annots / MARKER).write_text(recipe)
        for folder in (images, annotations):
            if folder.exists():
                shutil.rmtree(folder)
        tmp_images.rename(images)
        tmp_annots.rename(annotations)
    finally:
        shutil.rmtree(tmp_images, ignore_errors=True)
        shutil.rmtree(tmp_annots, ignore_errors=True)
    return True


def ensure_split(images: str | Path, annotations: str | Path, split: str, names: Sequence[str]) -> bool:
    """The config's ``synthetic`` format: generate the ``train``, ``valid`` or ``test`` split on first use."""
    return ensure_folders(images, annotations, SPLIT_SIZES[split], names, SPLIT_SEEDS[split])
