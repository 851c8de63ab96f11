"""Dataset readers: PASCAL VOC xml, YOLO txt and COCO json, all into one :class:`Record` type.

Reading validates: boxes outside the image are clipped, boxes of zero area
dropped, files without a partner counted, unreadable files reported by name.
Nothing here raises for a problem inside one file; the problem is recorded in
:attr:`Dataset.problems` and reading goes on. Only a missing folder or an
unusable dataset as a whole raises :class:`UserError`.

Example::

    from yolo3.datasets import read_voc
    ds = read_voc("data/raccoon/images", "data/raccoon/annotations")
    print(len(ds.records), ds.box_counts(), ds.problems[:3])
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from defusedxml import ElementTree
from PIL import Image, UnidentifiedImageError

from .errors import UserError
from .fileio import read_user_text
from .preprocess import IMAGE_SUFFIXES

FORMATS = ("voc", "yolo", "coco")
CLIP_TOLERANCE = 1.0  # pixels a box may stick out (rounding of normalised labels) before clipping is reported


@dataclass(frozen=True)
class Record:
    """One image and its boxes: (n, 4) x1, y1, x2, y2 in pixels, class ids, and ignore flags.

    ``difficult`` marks boxes that neither count as missed nor make a detection
    a false positive (VOC ``difficult``, COCO ``iscrowd``).
    """

    image: Path
    width: int
    height: int
    boxes: np.ndarray
    classes: np.ndarray
    difficult: np.ndarray

    @staticmethod
    def make(
        image: Path, width: int, height: int, boxes: Sequence, classes: Sequence, difficult: Sequence | None = None
    ) -> Record:
        boxes_arr = np.asarray(boxes, np.float32).reshape(-1, 4)
        classes_arr = np.asarray(classes, np.int64).reshape(-1)
        diff = np.zeros(len(classes_arr), bool) if difficult is None else np.asarray(difficult, bool).reshape(-1)
        return Record(Path(image), int(width), int(height), boxes_arr, classes_arr, diff)


@dataclass(frozen=True)
class Problem:
    file: str
    kind: str  # a short category, e.g. "zero-area box", "unreadable image"
    detail: str

    def __str__(self) -> str:
        return f"{self.file}: {self.kind}: {self.detail}" if self.detail else f"{self.file}: {self.kind}"


@dataclass
class Dataset:
    """Records of one split, the class names, and every problem met while reading."""

    records: list[Record]
    names: list[str]
    source: str
    format: str
    problems: list[Problem] = field(default_factory=list)

    def box_counts(self) -> dict[str, int]:
        counts = Counter(int(c) for r in self.records for c in r.classes)
        return {name: counts.get(i, 0) for i, name in enumerate(self.names)}

    @property
    def num_boxes(self) -> int:
        return int(sum(len(r.classes) for r in self.records))

    def problem_counts(self) -> dict[str, int]:
        return dict(Counter(p.kind for p in self.problems))


class _Collector:
    """Validates boxes against the image and records what had to be fixed."""

    def __init__(self):
        self.problems: list[Problem] = []

    def add(self, file: Path | str, kind: str, detail: str = "") -> None:
        self.problems.append(Problem(str(file), kind, detail))

    def clean_boxes(self, file: Path, width: int, height: int, boxes: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
        """Clip boxes to the image; return the kept boxes and a mask of the input rows kept."""
        arr = np.asarray(boxes, np.float64).reshape(-1, 4)
        keep = np.ones(len(arr), bool)
        for i, (x1, y1, x2, y2) in enumerate(arr.tolist()):
            if not all(np.isfinite([x1, y1, x2, y2])):
                self.add(file, "invalid box", f"{[x1, y1, x2, y2]} is not finite")
                keep[i] = False
                continue
            cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
            cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
            if cx2 <= cx1 or cy2 <= cy1:
                self.add(file, "zero-area box", f"({x1:g}, {y1:g}, {x2:g}, {y2:g}) in a {width}x{height} image: dropped")
                keep[i] = False
                continue
            if max(abs(cx1 - x1), abs(cy1 - y1), abs(cx2 - x2), abs(cy2 - y2)) > CLIP_TOLERANCE:
                self.add(file, "box clipped", f"({x1:g}, {y1:g}, {x2:g}, {y2:g}) to the {width}x{height} image")
            arr[i] = (cx1, cy1, cx2, cy2)
        return arr[keep].astype(np.float32), keep


def inside(folder: Path, name: str) -> Path | None:
    """``folder / name`` when it stays inside ``folder`` (an annotation may not point at ``../../etc/passwd``), else None."""
    path = folder / name
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return None
    return path


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels; an image above the pixel limit is an OSError."""
    from .preprocess import MAX_IMAGE_PIXELS

    with Image.open(path) as img:
        width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        raise OSError(f"{width} x {height} pixels is more than the {MAX_IMAGE_PIXELS:,} accepted (YOLO3_MAX_IMAGE_PIXELS)")
    return width, height


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise UserError(f"{what} folder does not exist" if not path.exists() else f"{what} is not a folder", path)
    return path


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def read_split(path: str | Path) -> set[str]:
    """Image stems listed in a split file: one id or file name per line, or a CSV with a ``filename`` column."""
    path = Path(path)
    text = read_user_text(path, "split file")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if lines and "," in lines[0]:
        reader = csv.DictReader(lines)
        if "filename" not in (reader.fieldnames or []):
            raise UserError("a CSV split file needs a 'filename' column", path, 1)
        return {Path(row["filename"]).stem for row in reader}
    return {Path(ln.split()[0]).stem for ln in lines}


def _apply_split(records: list[Record], split: str | Path | None, collector: _Collector) -> list[Record]:
    if split is None:
        return records
    wanted = read_split(split)
    # problems met in files of other splits are not this split's: keep those of the files it lists
    per_file = {*IMAGE_SUFFIXES, ".xml", ".txt"}
    collector.problems = [p for p in collector.problems if Path(p.file).stem in wanted or Path(p.file).suffix.lower() not in per_file]
    kept = [r for r in records if r.image.stem in wanted]
    found = {r.image.stem for r in kept}
    for stem in sorted(wanted - found):
        collector.add(split, "listed image not found", stem)
    return kept


def _class_index(names: list[str] | None, fixed: bool, name: str) -> int | None:
    if name in names:
        return names.index(name)
    if fixed:
        return None
    names.append(name)
    return len(names) - 1


# ---------------------------------------------------------------------------
# PASCAL VOC
# ---------------------------------------------------------------------------


def read_voc(
    image_folder: str | Path,
    annot_folder: str | Path,
    names: Sequence[str] | None = None,
    split: str | Path | None = None,
) -> Dataset:
    """Read PASCAL VOC xml annotations (parsed with defusedxml).

    ``names`` fixes the classes and their order (objects of other classes are
    reported and skipped); without it the classes found are sorted by name.
    """
    images_dir = _require_dir(Path(image_folder), "image")
    annot_dir = _require_dir(Path(annot_folder), "annotation")
    col = _Collector()
    fixed = names is not None
    class_names = list(names) if fixed else []
    raw: list[tuple[Path, int, int, list, list[str], list[bool]]] = []
    images = {p.stem: p for p in _images_in(images_dir)}
    used: set[str] = set()
    for xml_path in sorted(annot_dir.glob("*.xml")):
        try:
            root = ElementTree.parse(xml_path).getroot()
        except Exception as err:  # defusedxml raises ParseError and its own DefusedXmlException
            col.add(xml_path, "unreadable annotation", str(err))
            continue
        filename = (root.findtext("filename") or "").strip()
        named = inside(images_dir, filename) if filename else None
        stem = Path(filename).stem if filename else xml_path.stem
        image = named if named is not None and named.is_file() else images.get(stem) or images.get(xml_path.stem)
        if image is None:
            col.add(xml_path, "annotation without image", filename or xml_path.stem)
            continue
        used.add(image.stem)
        try:
            width, height = image_size(image)
        except (OSError, UnidentifiedImageError) as err:
            col.add(image, "unreadable image", str(err))
            continue
        boxes, labels, difficult = [], [], []
        for obj in root.iter("object"):
            label = (obj.findtext("name") or "").strip()
            bnd = obj.find("bndbox")
            try:
                coords = [float(bnd.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
            except (AttributeError, TypeError, ValueError):
                col.add(xml_path, "invalid box", f"object {label!r} has no numeric bndbox")
                continue
            boxes.append(coords)
            labels.append(label)
            difficult.append((obj.findtext("difficult") or "0").strip() == "1")
        raw.append((image, width, height, boxes, labels, difficult))
    for stem, image in images.items():
        if stem not in used:
            col.add(image, "image without annotation", "")
    if not fixed:
        class_names = sorted({lab for *_, labels, _ in raw for lab in labels})
    records = []
    for image, width, height, boxes, labels, difficult in raw:
        idx = []
        for lab in labels:
            i = _class_index(class_names, True, lab)
            if i is None:
                col.add(image, "unknown class", f"{lab!r} is not in the class list: skipped")
            idx.append(i)
        keep_known = [i is not None for i in idx]
        boxes = [b for b, k in zip(boxes, keep_known) if k]
        difficult = [d for d, k in zip(difficult, keep_known) if k]
        idx = [i for i in idx if i is not None]
        clean, keep = col.clean_boxes(image, width, height, boxes)
        records.append(
            Record.make(image, width, height, clean, np.asarray(idx, np.int64)[keep], np.asarray(difficult, bool)[keep])
        )
    records = _apply_split(records, split, col)
    return Dataset(records, class_names, str(annot_dir), "voc", col.problems)


# ---------------------------------------------------------------------------
# YOLO txt
# ---------------------------------------------------------------------------


def read_names(path: str | Path) -> list[str]:
    """Class names, one per line (a Darknet ``.names`` file)."""
    path = Path(path)
    names = [ln.strip() for ln in read_user_text(path, "names file").splitlines() if ln.strip()]
    if not names:
        raise UserError("names file lists no class", path)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"names {', '.join(map(repr, twice))} more than once: each class once", path)
    return names


def read_yolo(
    image_folder: str | Path,
    label_folder: str | Path,
    names: Sequence[str],
    split: str | Path | None = None,
) -> Dataset:
    """Read YOLO txt labels (``class cx cy w h``, normalised to the image size).

    An image without a label file is kept as an image with no objects (as the
    YOLO tools do) and counted; a label file without an image is counted.
    """
    images_dir = _require_dir(Path(image_folder), "image")
    label_dir = _require_dir(Path(label_folder), "label")
    col = _Collector()
    names = list(names)
    labels = {p.stem: p for p in label_dir.glob("*.txt")}
    records = []
    for image in _images_in(images_dir):
        try:
            width, height = image_size(image)
        except (OSError, UnidentifiedImageError) as err:
            col.add(image, "unreadable image", str(err))
            continue
        label = labels.pop(image.stem, None)
        boxes, classes = [], []
        text = None
        if label is not None:
            try:
                text = label.read_text(encoding="utf-8", errors="replace")
            except OSError as err:
                col.add(label, "unreadable label file", f"{err.strerror}: the image is skipped")
                continue
        if label is None:
            col.add(image, "image without label file", "kept as an image with no objects")
        else:
            for lineno, line in enumerate(text.splitlines(), 1):
                parts = line.split()
                if not parts:
                    continue
                try:
                    cls = int(parts[0])
                    cx, cy, bw, bh = (float(v) for v in parts[1:5])
                    if len(parts) < 5:
                        raise ValueError
                except ValueError:
                    col.add(f"{label}:{lineno}", "invalid label line", repr(line.strip()))
                    continue
                if not 0 <= cls < len(names):
                    col.add(f"{label}:{lineno}", "unknown class", f"class id {cls} is outside 0..{len(names) - 1}: skipped")
                    continue
                boxes.append([(cx - bw / 2) * width, (cy - bh / 2) * height, (cx + bw / 2) * width, (cy + bh / 2) * height])
                classes.append(cls)
        clean, keep = col.clean_boxes(label or image, width, height, boxes)
        records.append(Record.make(image, width, height, clean, np.asarray(classes, np.int64)[keep]))
    for _stem, label in sorted(labels.items()):
        col.add(label, "label file without image", "")
    records = _apply_split(records, split, col)
    return Dataset(records, names, str(label_dir), "yolo", col.problems)


# ---------------------------------------------------------------------------
# COCO json
# ---------------------------------------------------------------------------


def read_coco(
    image_folder: str | Path, json_path: str | Path, names: Sequence[str] | None = None, split: str | Path | None = None
) -> Dataset:
    """Read a COCO ``instances_*.json``: boxes [x, y, w, h] in pixels, ``iscrowd`` boxes ignored in scoring.

    Category ids map to class indices in ascending id order (80 COCO classes
    become 0..79), so the names are the json's category names unless
    ``names`` is given, in which case categories are matched by name.
    """
    images_dir = _require_dir(Path(image_folder), "image")
    json_path = Path(json_path)
    try:
        data = json.loads(read_user_text(json_path, "COCO json"))
    except json.JSONDecodeError as err:
        raise UserError(f"invalid JSON: {err.msg}", json_path, err.lineno) from None
    if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations", "categories")):
        raise UserError("a COCO json needs 'images', 'annotations' and 'categories'", json_path)
    col = _Collector()
    cats = data["categories"]
    if not isinstance(cats, list) or not all(isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str) for c in cats):
        raise UserError("'categories' must be a list of objects with an integer 'id' and a 'name'", json_path)
    if not isinstance(data["images"], list) or not isinstance(data["annotations"], list):
        raise UserError("'images' and 'annotations' must be lists", json_path)
    cats = sorted(cats, key=lambda c: c["id"])
    if names is None:
        class_names = [c["name"] for c in cats]
        cat_index = {c["id"]: i for i, c in enumerate(cats)}
    else:
        class_names = list(names)
        cat_index = {c["id"]: class_names.index(c["name"]) for c in cats if c["name"] in class_names}
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        if isinstance(ann, dict):
            by_image.setdefault(ann.get("image_id"), []).append(ann)
        else:
            col.add(json_path, "invalid annotation", f"{str(ann)[:60]!r} is not an object: skipped")
    records = []
    listed = set()
    for info in data["images"]:
        if not isinstance(info, dict) or "id" not in info or not isinstance(info.get("file_name"), str):
            col.add(json_path, "invalid image entry", f"{str(info)[:80]} needs an 'id' and a 'file_name': skipped")
            continue
        image = inside(images_dir, info["file_name"])
        if image is None:
            col.add(json_path, "image outside the image folder", f"{info['file_name']!r}: skipped")
            continue
        listed.add(image.name)
        if not image.is_file():
            col.add(json_path, "annotation without image", info["file_name"])
            continue
        try:
            width, height = int(info.get("width", 0)), int(info.get("height", 0))
        except (TypeError, ValueError):
            width = height = 0
        if width <= 0 or height <= 0:
            try:
                width, height = image_size(image)
            except (OSError, UnidentifiedImageError) as err:
                col.add(image, "unreadable image", str(err))
                continue
        boxes, classes, crowd = [], [], []
        for ann in by_image.get(info["id"], []):
            if ann.get("category_id") not in cat_index:
                col.add(json_path, "unknown class", f"category {ann.get('category_id')} of annotation {ann.get('id')}: skipped")
                continue
            bbox = ann.get("bbox")
            if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
                col.add(json_path, "invalid box", f"annotation {ann.get('id')}: bbox {str(bbox)[:40]} is not [x, y, w, h]: skipped")
                continue
            x, y, w, h = (float(v) for v in bbox)
            boxes.append([x, y, x + w, y + h])
            classes.append(cat_index[ann["category_id"]])
            crowd.append(bool(ann.get("iscrowd", 0)))
        clean, keep = col.clean_boxes(image, width, height, boxes)
        records.append(
            Record.make(image, width, height, clean, np.asarray(classes, np.int64)[keep], np.asarray(crowd, bool)[keep])
        )
    for image in _images_in(images_dir):
        if image.name not in listed:
            col.add(image, "image without annotation", "not listed in the json")
    records = _apply_split(records, split, col)
    return Dataset(records, class_names, str(json_path), "coco", col.problems)


# ---------------------------------------------------------------------------
# One entry point and discovery
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset lives: its format, images, annotations, and optionally names and split."""

    format: str
    images: Path
    annotations: Path
    names: Path | tuple[str, ...] | None = None
    split: Path | None = None
    label: str = ""
    holdout: tuple[float, bool] | None = None  # (fraction, True = the held-out images / False = the rest)


def holdout_mask(images: Sequence[Path], fraction: float) -> np.ndarray:
    """Which images a hold-out of ``fraction`` takes: chosen by a hash of the file name, so the same every run.

    Hashing the name (rather than shuffling the list) keeps an image on its
    side of the split when other images are added or removed. At least one
    image is held out and at least one kept when there are two or more.
    """
    n = len(images)
    mask = np.zeros(n, bool)
    if n < 2 or fraction <= 0:
        return mask
    count = min(n - 1, max(1, int(round(fraction * n))))
    keys = [hashlib.sha1(Path(p).name.encode("utf-8")).hexdigest() for p in images]
    mask[np.argsort(keys, kind="stable")[:count]] = True
    return mask


def read_dataset(source: DatasetSource, names: Sequence[str] | None = None) -> Dataset:
    """Read any supported format. ``names`` (e.g. from the config) overrides the source's names."""
    if names is None and source.names is not None:
        names = read_names(source.names) if isinstance(source.names, Path) else list(source.names)
    if source.format == "voc":
        dataset = read_voc(source.images, source.annotations, names, source.split)
    elif source.format == "yolo":
        if names is None:
            raise UserError("YOLO txt labels need class names (a .names file or the config's labels)", source.annotations)
        dataset = read_yolo(source.images, source.annotations, names, source.split)
    elif source.format == "coco":
        dataset = read_coco(source.images, source.annotations, names, source.split)
    else:
        raise UserError(f"unknown annotation format {source.format!r} (use {', '.join(FORMATS)})")
    if source.holdout is not None:
        fraction, held_out = source.holdout
        mask = holdout_mask([r.image for r in dataset.records], fraction)
        dataset.records = [r for r, m in zip(dataset.records, mask) if m == held_out]
        dataset.source = f"{dataset.source} ({'held out' if held_out else 'without the held-out'} {fraction:.0%})"
    return dataset


def discover(folder: str | Path) -> list[DatasetSource]:
    """Find the datasets in a folder laid out as VOC (images/ + annotations/*.xml), YOLO (images/X + labels/X) or COCO json."""
    root = _require_dir(Path(folder), "dataset")
    found: list[DatasetSource] = []
    names_files = sorted(root.glob("*.names"))
    names = names_files[0] if names_files else None
    images = root / "images"
    if (root / "annotations").is_dir() and any((root / "annotations").glob("*.xml")):
        found.append(
            DatasetSource("voc", images if images.is_dir() else root / "annotations", root / "annotations", label=root.name)
        )
    labels = root / "labels"
    if labels.is_dir():
        if any(labels.glob("*.txt")):
            found.append(DatasetSource("yolo", images, labels, names, label=root.name))
        for sub in sorted(p for p in labels.iterdir() if p.is_dir()):
            found.append(DatasetSource("yolo", images / sub.name, sub, names, label=f"{root.name}/{sub.name}"))
    for js in sorted(root.rglob("*.json")):
        split = js.stem.split("_")[-1]
        img_dir = images / split if (images / split).is_dir() else images
        found.append(DatasetSource("coco", img_dir, js, None, label=f"{root.name}/{split} (COCO json)"))
    if not found:
        raise UserError("no dataset found (expected annotations/*.xml, labels/*.txt or a COCO json)", root)
    return found


def check_images(records: Iterable[Record], progress: bool = True) -> list[Problem]:
    """Decode every image fully and report the ones that fail (a truncated JPEG, say)."""
    from .preprocess import load_image

    problems = []
    items = list(records)
    iterator = items
    if progress:
        from tqdm import tqdm

        iterator = tqdm(items, desc="decoding images", unit="img", leave=False)
    for record in iterator:
        try:
            load_image(record.image)
        except UserError as err:
            problems.append(Problem(str(record.image), "unreadable image", err.reason))
    return problems
