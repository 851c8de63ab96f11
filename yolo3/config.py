"""The one config loader: ``config.json`` in the keras-yolo3 layout (``model``, ``train``, ``valid``).

Every key is declared in :data:`SCHEMA` with its type, default and meaning
(the README table is generated from the same descriptions). Unknown keys,
wrong types and missing paths are rejected with the key's name. Relative
paths are resolved against the folder of the config file, so a config can
point at data beside it wherever the command is run from.

Example::

    from yolo3.config import load_config
    cfg = load_config("config.json")
    cfg.model.architecture, cfg.valid.dataset, cfg.labels
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .datasets import FORMATS, DatasetSource, read_names
from .errors import UserError

PATH = "path"  # a string resolved against the config's folder
OPT_PATH = "optional path"


@dataclass(frozen=True)
class Key:
    type: Any  # a Python type, a tuple of types, PATH or OPT_PATH
    default: Any
    help: str
    required: bool = False
    choices: tuple | None = None
    must_exist: bool = True


DATASET_FORMATS = (*FORMATS, "synthetic")

SCHEMA: dict[str, dict[str, Key]] = {
    "model": {
        "architecture": Key(
            str, "yolov3-tiny", "Built-in name (`yolov3`, `yolov3-spp`, `yolov3-tiny`) or a Darknet `.cfg` path."
        ),
        "weights": Key(
            OPT_PATH,
            None,
            "Model file to start from: Darknet `.weights` (read with `architecture`) or a Keras `.h5` written by this tool; `null` = random initialisation.",
            must_exist=False,
        ),
        "input_size": Key(int, 416, "Network input size in pixels (square, a multiple of 32)."),
        "labels": Key(list, None, "Class names in class-id order. Give this or `labels_file`."),
        "labels_file": Key(OPT_PATH, None, "A Darknet `.names` file (one class per line), instead of `labels`."),
        "anchors": Key(list, None, "Anchors as a flat list `w1, h1, w2, h2, ...` in input pixels; `null` = the architecture's."),
    },
    "train": {
        "annot_format": Key(
            str,
            "voc",
            "`voc` (xml), `yolo` (txt + names), `coco` (json) or `synthetic` (VOC data generated on first use).",
            choices=DATASET_FORMATS,
        ),
        "train_image_folder": Key(PATH, None, "Folder of training images.", required=True, must_exist=False),
        "train_annot_folder": Key(
            PATH, None, "Folder of xml / txt annotations, or the COCO json file.", required=True, must_exist=False
        ),
        "train_list": Key(
            OPT_PATH, None, "Optional split file: image ids or file names, one per line, or a CSV with a `filename` column."
        ),
    },
    "valid": {
        "annot_format": Key(str, "voc", "As `train.annot_format`.", choices=DATASET_FORMATS),
        "valid_image_folder": Key(PATH, None, "Folder of validation images.", required=True, must_exist=False),
        "valid_annot_folder": Key(
            PATH, None, "Folder of xml / txt annotations, or the COCO json file.", required=True, must_exist=False
        ),
        "valid_list": Key(OPT_PATH, None, "Optional split file, as `train.train_list`."),
        "score_threshold": Key(float, 0.005, "Lowest detection score kept for evaluation (objectness x class probability)."),
        "nms_iou": Key(float, 0.45, "IoU above which non-maximum suppression removes the lower-scored box of the same class."),
        "max_detections": Key(int, 100, "Detections kept per image after NMS (COCO AP counts at most 100)."),
        "batch_size": Key(int, 8, "Images per forward pass during evaluation."),
    },
}


@dataclass(frozen=True)
class Section:
    values: dict[str, Any]

    def __getattr__(self, key: str) -> Any:
        try:
            return self.values[key]
        except KeyError:
            raise AttributeError(key) from None


@dataclass(frozen=True)
class Config:
    """A validated config: sections as attribute bags, plus derived conveniences."""

    path: Path
    model: Section
    train: Section
    valid: Section
    raw: dict

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def labels(self) -> list[str]:
        if self.model.labels is not None:
            return list(self.model.labels)
        return read_names(self.model.labels_file)

    def dataset(self, split: str) -> DatasetSource:
        """The train or valid dataset source, generating the synthetic data on first use."""
        sec = self.train if split == "train" else self.valid
        images = sec.values[f"{split}_image_folder"]
        annots = sec.values[f"{split}_annot_folder"]
        listing = sec.values[f"{split}_list"]
        fmt = sec.annot_format
        if fmt == "synthetic":
            from .synthetic import ensure_split

            ensure_split(images, annots, split, self.labels)
            fmt = "voc"
        for key, value in ((f"{split}.{split}_image_folder", images), (f"{split}.{split}_annot_folder", annots)):
            if not Path(value).exists():
                raise UserError(f"{key}: {value} does not exist", self.path)
        return DatasetSource(fmt, Path(images), Path(annots), tuple(self.labels), listing, label=split)


def _check_type(section: str, key: str, spec: Key, value: Any, folder: Path, source: Path) -> Any:
    name = f"{section}.{key}"
    if value is None:
        if spec.required:
            raise UserError(f"{name} is required", source)
        return None
    if spec.type in (PATH, OPT_PATH):
        if not isinstance(value, str) or not value:
            raise UserError(f"{name} must be a path (a non-empty string), got {json.dumps(value)}", source)
        path = Path(value).expanduser()
        path = path if path.is_absolute() else (folder / path)
        path = Path(str(path))
        if spec.must_exist and not path.exists():
            raise UserError(f"{name}: {value} does not exist (resolved to {path})", source)
        return path
    expected = spec.type
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) and expected is not bool or not isinstance(value, expected):
        tname = expected.__name__ if isinstance(expected, type) else "/".join(t.__name__ for t in expected)
        raise UserError(f"{name} must be of type {tname}, got {json.dumps(value)}", source)
    if spec.choices and value not in spec.choices:
        raise UserError(f"{name} must be one of {', '.join(map(str, spec.choices))}, got {json.dumps(value)}", source)
    return value


def parse_config(raw: Any, path: Path) -> Config:
    """Validate a parsed JSON object against :data:`SCHEMA`."""
    if not isinstance(raw, dict):
        raise UserError("the config must be a JSON object with sections model, train, valid", path)
    for section in raw:
        if section not in SCHEMA:
            raise UserError(f"unknown section {section!r} (known: {', '.join(SCHEMA)})", path)
    sections = {}
    folder = path.parent
    for section, keys in SCHEMA.items():
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise UserError(f"section {section!r} must be a JSON object", path)
        for key in given:
            if key not in keys:
                raise UserError(f"unknown key {section}.{key} (known: {', '.join(keys)})", path)
        values = {k: _check_type(section, k, spec, given.get(k, spec.default), folder, path) for k, spec in keys.items()}
        sections[section] = Section(values)
    model = sections["model"].values
    if (model["labels"] is None) == (model["labels_file"] is None):
        raise UserError("give exactly one of model.labels and model.labels_file", path)
    if model["labels"] is not None:
        if not model["labels"] or not all(isinstance(v, str) and v for v in model["labels"]):
            raise UserError("model.labels must be a non-empty list of class names", path)
    if model["input_size"] <= 0 or model["input_size"] % 32:
        raise UserError(f"model.input_size must be a positive multiple of 32, got {model['input_size']}", path)
    anchors = model["anchors"]
    if anchors is not None and (len(anchors) % 2 or not all(isinstance(v, (int, float)) and v > 0 for v in anchors)):
        raise UserError("model.anchors must be a flat list of positive numbers w1, h1, w2, h2, ...", path)
    arch = model["architecture"]
    from .zoo import BUILTIN

    if arch not in BUILTIN:
        resolved = Path(arch).expanduser()
        resolved = resolved if resolved.is_absolute() else folder / resolved
        if not resolved.is_file():
            raise UserError(
                f"model.architecture: {arch} is neither a built-in name ({', '.join(BUILTIN)}) nor an existing .cfg "
                f"(resolved to {resolved})",
                path,
            )
        model["architecture"] = str(resolved)
    valid = sections["valid"].values
    if not 0 <= valid["score_threshold"] < 1:
        raise UserError("valid.score_threshold must be in [0, 1)", path)
    if not 0 < valid["nms_iou"] <= 1:
        raise UserError("valid.nms_iou must be in (0, 1]", path)
    if valid["max_detections"] < 1 or valid["batch_size"] < 1:
        raise UserError("valid.max_detections and valid.batch_size must be at least 1", path)
    return Config(path, sections["model"], sections["train"], sections["valid"], raw)


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; every mistake ends in one :class:`UserError` naming the key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError("config file does not exist", path) from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"invalid JSON: {err.msg} (column {err.colno})", path, err.lineno) from None
    return parse_config(raw, path)


def schema_markdown() -> str:
    """The README's table of config keys, from :data:`SCHEMA`."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for section, keys in SCHEMA.items():
        for key, spec in keys.items():
            t = spec.type if isinstance(spec.type, str) else spec.type.__name__
            default = "required" if spec.required else json.dumps(spec.default)
            rows.append(f"| `{section}.{key}` | {t} | {default} | {spec.help} |")
    return "\n".join(rows)
