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
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .datasets import FORMATS, DatasetSource, read_names
from .errors import UserError

PATH = "path"  # a string resolved against the config's folder
OPT_PATH = "optional path"


@dataclass(frozen=True)
class Range:
    """The values a numeric key accepts: ``lo``..``hi``, each end closed unless ``*_open``; NaN never."""

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, value) -> bool:
        if value != value:  # NaN
            return False
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return above and below

    def __str__(self) -> str:
        def num(v):
            return "∞" if v == math.inf else f"{v:g}"

        return f"{'(' if self.lo_open else '['}{num(self.lo)}, {num(self.hi)}{')' if self.hi_open else ']'}"


EPOCHS = Range(0, 100_000)
AT_LEAST_ONE_EPOCH = Range(1, 100_000)
FRACTION = Range(0, 1, hi_open=True)  # [0, 1)
RATE = Range(0, 1, lo_open=True)  # learning rates: (0, 1]
WEIGHT = Range(0, 1000)  # loss weights
COUNT = Range(1, 100_000)
SEED = Range(0, 2**31 - 1)


@dataclass(frozen=True)
class Key:
    type: Any  # a Python type, a tuple of types, PATH or OPT_PATH
    default: Any
    help: str
    required: bool = False
    choices: tuple | None = None
    must_exist: bool = True
    range: Range | None = None  # numbers: the values accepted (shown in the configuration reference)


DATASET_FORMATS = (*FORMATS, "synthetic")
SPLITS = ("train", "valid", "test")
OPTIONAL_SECTIONS = ("test",)

SCHEMA: dict[str, dict[str, Key]] = {
    "model": {
        "architecture": Key(
            str, "yolov3-tiny", "Built-in name (`yolov3`, `yolov3-spp`, `yolov3-tiny`, `yolov3-tiny-relu`, `yolov4-tiny`, `yolo-fastest`, `yolov3-tiny-mobilenetv3-small`, `yolov3-mobilenetv3`) or a Darknet `.cfg` path."
        ),
        "weights": Key(
            OPT_PATH,
            None,
            "Model file to start from: Darknet `.weights` (read with `architecture`) or a Keras `.h5` written by this tool; `null` = random initialisation.",
            must_exist=False,
        ),
        "input_size": Key(int, 416, "Network input size in pixels (square, a multiple of 32).", range=Range(32, 4096)),
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
        "batch_size": Key(int, 8, "Images per training step (the global batch, split across devices).", range=Range(1, 1024)),
        "learning_rate": Key(float, 1e-3, "Peak learning rate (Adam).", range=RATE),
        "nb_epochs": Key(int, 30, "Epochs to train.", range=AT_LEAST_ONE_EPOCH),
        "warmup_epochs": Key(float, 1.0, "Epochs of linear learning-rate warm-up from 0.", range=Range(0, 1000)),
        "lr_schedule": Key(str, "cosine", "After warm-up: `cosine` decay to 1 % of the peak, `steps` (x0.1 at 80 % and 90 % of the epochs) or `constant`.", choices=("cosine", "steps", "constant")),
        "weight_decay": Key(float, 0.0, "Decoupled weight decay (AdamW); 0 = plain Adam.", range=Range(0, 1)),
        "ignore_thresh": Key(float, 0.5, "Predictions whose best IoU with a ground-truth box exceeds this are not punished as background.", range=Range(0, 1)),
        "grid_scales": Key(list, [1, 1, 1], "Loss weight of each head, in [yolo] order."),
        "obj_scale": Key(float, 5.0, "Loss weight of objectness where an object is.", range=WEIGHT),
        "noobj_scale": Key(float, 1.0, "Loss weight of objectness where no object is.", range=WEIGHT),
        "xywh_scale": Key(float, 1.0, "Loss weight of the box coordinates.", range=WEIGHT),
        "class_scale": Key(float, 1.0, "Loss weight of the class probabilities.", range=WEIGHT),
        "augment": Key(bool, True, "Augment training images (the keys below); false = plain letterbox."),
        "jitter": Key(float, 0.3, "Random aspect-ratio change (keras-yolo3's jitter).", range=Range(0, 1)),
        "scale_range": Key(list, [0.5, 1.5], "Random image size relative to the input, [min, max]."),
        "flip": Key(bool, True, "Random horizontal flip."),
        "hue": Key(float, 0.1, "Random hue shift, fraction of the colour circle.", range=Range(0, 1)),
        "saturation": Key(float, 1.5, "Random saturation factor in [1/s, s].", range=Range(1, 10)),
        "exposure": Key(float, 1.5, "Random brightness factor in [1/e, e].", range=Range(1, 10)),
        "multi_scale": Key(list, None, "Multi-scale training: [smallest, largest] input size (multiples of 32), a new size per batch; `null` = off."),
        "freeze_backbone_epochs": Key(int, 0, "Epochs at the start during which the layers all heads share (backbone and neck) are frozen.", range=EPOCHS),
        "run_dir": Key(PATH, "runs/train", "Run folder: checkpoints (resume), best model, TensorBoard logs, the config used.", must_exist=False),
        "saved_weights_name": Key(OPT_PATH, None, "Also copy the best model (by validation mAP@0.5) here (`.h5`); `null` = only `run_dir/best.h5`.", must_exist=False),
        "eval_every": Key(int, 1, "Evaluate on the validation set every this many epochs (and after the last).", range=COUNT),
        "strategy": Key(str, "default", "`default` (one device), `mirrored` (all local GPUs, or `devices`), `multi_worker` (machines in `TF_CONFIG`).", choices=("default", "mirrored", "multi_worker")),
        "devices": Key(list, None, "Devices for `mirrored`, e.g. `[\"/gpu:0\", \"/gpu:1\"]`; `null` = all GPUs."),
        "seed": Key(int, 0, "Seed of shuffling, augmentation and new layers.", range=SEED),
        "holdout_fraction": Key(float, 0.0, "For a dataset with only two splits: this fraction of the training images (chosen by file name, the same every run) is held out as the validation split that picks the best epoch and every compression decision, and the `valid` section becomes the test split that only reports; 0 = off (then the `valid` section serves both, unless a `test` section is given).", range=FRACTION),
    },
    "pruning": {
        "output": Key(OPT_PATH, None, "Where `evaluate.py -p 2..5` writes the pruned model (`.h5`; a Darknet `.cfg` + `.weights` beside it for -p 3..5); `null` = beside the input, NAME-pN.h5.", must_exist=False),
        "finetune_epochs": Key(int, 0, "Fine-tuning epochs after pruning (masks and removed channels stay removed); 0 = none.", range=EPOCHS),
        "finetune_learning_rate": Key(float, 1e-3, "Peak learning rate of that fine-tuning (removing channels needs re-training, not a nudge).", range=RATE),
        "distillation": Key(float, 0.0, "-p 2..5: weight of knowledge distillation from the unpruned model during every fine-tuning (the student matches the teacher's raw heads in every cell; 1 = the detection loss's scale); 0 = off.", range=WEIGHT),
        "feature_distillation": Key(float, 0.0, "-p 2..5: weight of fine-grained feature imitation from the unpruned model during every fine-tuning (the student's neck features match the teacher's near the objects, through a 1x1 adapter where pruning narrowed them; 1 = the detection loss's scale for a 20 % feature error); 0 = off.", range=WEIGHT),
        "rounds": Key(int, 1, "-p 3/4: prune in this many steps, each removing an equal share (compounding to the ratio / percent), with `round_epochs` of fine-tuning between steps; the fine-tuning of `finetune_epochs` follows the last.", range=Range(1, 100)),
        "round_epochs": Key(int, 5, "-p 3/4 with `rounds` > 1: fine-tuning epochs after each step but the last.", range=EPOCHS),
        "magnitude_sparsity": Key(float, 0.5, "-p 2: target fraction of zero weights in every convolution kernel.", range=FRACTION),
        "magnitude_mode": Key(str, "tfmot", "-p 2: `tfmot` (prune_low_magnitude, polynomial schedule during fine-tuning) or `oneshot` (per-layer percentile, no training).", choices=("tfmot", "oneshot")),
        "magnitude_end_fraction": Key(float, 0.7, "-p 2 tfmot: the schedule reaches the target after this fraction of the fine-tuning steps.", range=RATE),
        "similarity_w1": Key(float, 0.5, "-p 3: weight of the normalised Euclidean distance ||a-b|| / (||a|| + ||b||).", range=WEIGHT),
        "similarity_w2": Key(float, 0.5, "-p 3: weight of the cosine distance 1 - cos(a, b).", range=WEIGHT),
        "similarity_ratio": Key(float, 0.3, "-p 3: fraction of each layer's filters to remove (`null` = only the threshold).", range=FRACTION),
        "similarity_layer_ratios": Key(dict, {}, "-p 3: a ratio per layer, overriding `similarity_ratio` for the layers named, by index (`\"12\"`) or name (`\"conv_12\"`); 0 spares a layer; a named layer is pruned whatever its kernel size. Prune wide, late layers harder than early ones: on raccoon the same MACs cut trained to a higher mAP (README)."),
        "similarity_threshold": Key(float, None, "-p 3: stop when the most similar pair is farther apart than this (`null` = only the ratio).", range=Range(0, math.inf)),
        "similarity_kernels": Key(list, [1], "-p 3: kernel sizes considered: [1] (default) or [1, 3] (3x3 filters flattened)."),
        "slimming_percent": Key(float, 0.5, "-p 4: fraction of all prunable channels to remove, by global |BN scale| rank (ignored if `slimming_threshold` is set).", range=FRACTION),
        "slimming_threshold": Key(float, None, "-p 4: remove channels whose |BN scale| is at most this.", range=Range(0, math.inf)),
        "min_channels": Key(int, 8, "-p 3/4: channels every layer keeps at least.", range=COUNT),
        "min_channel_fraction": Key(float, 0.05, "-p 4: fraction of its channels every layer keeps at least.", range=Range(0, 1)),
        "round_to": Key(int, 1, "-p 3/4: round the kept channels of a layer up to a multiple of this (8 suits int8 kernels).", range=Range(1, 1024)),
        "layer_blocks": Key(int, 4, "-p 5: residual blocks to remove (lowest mean |BN scale| first).", range=Range(0, 1000)),
        "sparsity_l1": Key(float, 0.0, "Sparse training for network slimming in `finetune.py`: L1 strength s on BN scales, applied as a proximal step that shrinks every prunable scale by lr x s per step (s ~ 1 .. 10 for a few hundred steps at lr 1e-3); 0 = off.", range=Range(0, 1e6)),
    },
    "clustering": {
        "clusters": Key(int, 32, "Centroids per kernel (or per output channel with `per_channel`).", range=Range(2, 65536)),
        "per_channel": Key(bool, False, "Cluster every output channel of a kernel separately."),
        "exclude": Key(list, [], "Convolutions not to cluster, by index (`0`) or name (`\"conv_0\"`); the first layer and the heads are clustered unless listed."),
        "finetune_epochs": Key(int, 0, "Cluster-preserving fine-tuning epochs after clustering (0 = none).", range=EPOCHS),
        "finetune_learning_rate": Key(float, 1e-5, "Peak learning rate of that fine-tuning (1e-5 kept mAP, 1e-4 lost a point, measured on raccoon).", range=RATE),
        "seed": Key(int, 0, "Seed of the k-means++ initialisation.", range=SEED),
    },
    "quantization": {
        "qat_epochs": Key(int, 2, "Quantization-aware training epochs of `convert.py --qat` / `finetune.py --qat` (TFMOT; keeps zeros and clusters).", range=AT_LEAST_ONE_EPOCH),
        "nms_classes_per_box": Key(int, 5, "In-model NMS (`convert --nms`): each box it keeps reports its K best classes (at most the class count; `count` then counts box-class entries). 1 is the SSD models' one class per box, which loses the boxes' other classes: YOLOv3-tiny int8 on coco128's 80 classes lost 2.0 points of mAP@0.5 against the numpy path with 1, none with 5.", range=Range(1, 100)),
        "adaround_iterations": Key(int, 1000, "`convert --repair adaround`: optimisation steps per convolution of AdaRound (learned up/down rounding of the int8 weights against the layer's float output on the calibration images).", range=Range(10, 100_000)),
        "repair_confidence": Key(float, 0.9, "`convert --repair` and `compress`'s int8 stage: a rung is kept only if it beats the best so far on the validation split with this confidence (paired bootstrap over the images: its gain's lower quantile above 0); a gain the split cannot tell from noise keeps the simpler model. 0.5 = any measured gain.", range=Range(0.5, 1, hi_open=True)),
        "qat_learning_rate": Key(float, 1e-5, "Peak learning rate of quantization-aware training (a nudge around the rounding, not re-training).", range=RATE),
        "qat_range_learning_rate": Key(float, 0.0, "Quantization-aware training: above 0, the activation ranges are trained by the task loss (PACT-style gradients of TFMOT's fake quantization, a custom quantizer), each moving about this much per step; 0 = TFMOT's moving average of the observed min/max.", range=Range(0, 1)),
    },
    "test": {
        "annot_format": Key(str, "voc", "As `train.annot_format`. The whole section is optional: a test split that no decision sees (best epoch, compression plan); `evaluate.py` reports on it by default.", choices=DATASET_FORMATS),
        "test_image_folder": Key(PATH, None, "Folder of test images.", required=True, must_exist=False),
        "test_annot_folder": Key(PATH, None, "Folder of xml / txt annotations, or the COCO json file.", required=True, must_exist=False),
        "test_list": Key(OPT_PATH, None, "Optional split file, as `train.train_list`."),
    },
    "compress": {
        "sizes": Key(list, [416, 352, 320, 288], "`compress.py`: input sizes the planner may choose (multiples of 32); those above `model.input_size` are ignored, and `model.input_size` is always one."),
        "threads": Key(int, 2, "`compress.py`: LiteRT threads of the device the latency model is measured for (this machine).", range=Range(1, 256)),
        "xnnpack": Key(bool, True, "`compress.py` (`--no-xnnpack`): time every model with LiteRT's XNNPACK delegate (its default on x86 and ARM); false = its built-in kernels only, the runtime of builds without XNNPACK (some boards, microcontroller ports), where layers cost differently (depthwise convolutions far more)."),
        "sensitivity_ratios": Key(list, [0.25, 0.5, 0.75, 0.875], "`compress.py`: fractions of a unit's channels removed in the sensitivity analysis (each unit alone, no fine-tuning)."),
        "latency_levels": Key(list, [1.0, 0.5, 0.25, 0.125], "`compress.py`: channel fractions at which every block is timed as int8 for the latency model (input x output grid at the model's size; full and half at the other sizes)."),
        "round_to": Key(int, 8, "`compress.py`: channel counts the planner keeps are multiples of this (int8 kernels run fastest on multiples of 8).", range=Range(1, 1024)),
        "candidate_epochs": Key(int, 3, "`compress.py`: fine-tuning epochs (with distillation) of the plan found at each input size in the first round of successive halving, to choose among them on the validation split; a time budget may raise it, never lower it (it leaves plans out instead); 0 = choose by predicted loss.", range=EPOCHS),
        "finetune_epochs": Key(int, 60, "`compress.py`: fine-tuning epochs after pruning, distilling from the unpruned model.", range=EPOCHS),
        "distillation": Key(float, 1.0, "`compress.py`: weight of knowledge distillation from the unpruned model in every fine-tuning (0 = off).", range=WEIGHT),
        "feature_distillation": Key(float, 0.0, "`compress.py`: weight of fine-grained feature imitation (the neck features near the objects) from the unpruned model in every fine-tuning, beside `distillation`; 0 = off, the default: on BCCD it did not beat output distillation alone on the validation split (docs/results.md).", range=WEIGHT),
        "cluster": Key(bool, True, "`compress.py`: cluster the pruned model's kernels (`clustering.clusters` values) where the validation split allows; false = skip the step."),
        "cluster_budget": Key(float, 0.005, "`compress.py`: mAP@0.5 that clustering may cost on the validation split before fine-tuning (0.005 = half a point); the most sensitive layers stay unclustered until it holds.", range=FRACTION),
        "cluster_first_layer": Key(bool, False, "`compress.py`: also cluster the first convolution (few weights, channels of very different scales: clustering it costs the most and saves the least)."),
        "cluster_epochs": Key(int, 5, "`compress.py`: cluster-preserving fine-tuning epochs.", range=EPOCHS),
        "int8_ranges": Key(bool, True, "`compress.py`: also try post-training int8 with each inner activation's range chosen by quantization error on the calibration images (`convert --repair ranges`) and keep the best int8 model on the validation split."),
        "int8_equalization": Key(bool, True, "`compress.py`: also try post-training int8 of the model with the activations before each depthwise convolution equalised channel by channel on calibration images (`convert --repair cle`; free under int8's per-channel weights; nothing to do in a model without depthwise convolutions), start the later int8 steps from it if it wins, and keep the best int8 model on the validation split."),
        "int8_bias_correction": Key(bool, True, "`compress.py`: also try post-training int8 with each convolution's int8 bias corrected to the float model's mean output, layer by layer on calibration images (`convert --repair bias`, with the activation ranges kept so far), and keep the best int8 model on the validation split."),
        "int8_adaround": Key(bool, True, "`compress.py`: also try post-training int8 of the model with AdaRound's rounding of its weights (`convert --repair adaround`, `quantization.adaround_iterations` steps per layer; not for a clustered model, whose shared values it would undo) and keep the best int8 model on the validation split."),
        "qat": Key(bool, True, "`compress.py`: also try quantization-aware training (the scheme that keeps zeros and clusters) and keep the better int8 model on the validation split."),
        "holdout_fraction": Key(float, 0.2, "`compress.py` with a config that has no test split: the share of the training images held out as the validation split (`train.holdout_fraction`), the `valid` section becoming the test split.", range=Range(0, 1, lo_open=True, hi_open=True)),
        "calibration_samples": Key(int, 200, "`compress.py`: training images that calibrate int8 quantization.", range=COUNT),
        "bn_images": Key(int, 0, "`compress.py`: training images on which the sensitivity analysis re-estimates the BN statistics of every pruned variant before scoring it (adaptive BN, EagleEye); 0 = off, the default: on BCCD it made halving the first layer look cheap, and the plans that did it did not recover in fine-tuning (docs/compress.md).", range=Range(0, 100_000)),
        "debug_images": Key(int, 16, "`compress.py`: validation images the int8 quantization debugger compares float and int8 on.", range=COUNT),
        "small_boxes": Key(float, 10.0, "`compress.py`: percent of the training boxes whose shorter side may fall under one cell of the finest detection head at the smallest input size considered; smaller sizes are left out (100 = no floor from the boxes).", range=Range(0, 100, lo_open=True)),
        "time_budget": Key(float, 90.0, "`compress.py` (`--time-budget`): minutes the whole run may take; after the measurements the candidates' and the fine-tune's epochs are chosen to fill it (between 1 and 3x their configured epochs); 0 = the configured epochs as given.", range=Range(0, 10080)),
        "levers": Key(list, ["pool_stride", "relu"], "`compress.py` with a speed or MACs target: architecture levers it may use beside channels and input size: `pool_stride` (a 3x3 convolution + 2x2 max-pool becomes the convolution with stride 2), `relu` (ReLU instead of LeakyReLU); [] = channels and input size only."),
        "floor_confidence": Key(float, 0.9, "`compress.py`: how sure the accuracy floor must be: the delivered model's loss against the unpruned float model is judged at this quantile of a paired bootstrap over the validation images (0.9: at most `--max-loss` points with 90 % confidence); a small validation split then cannot pass a loss it cannot tell from noise. 0.5 = the loss as measured.", range=Range(0.5, 1, hi_open=True)),
        "lever_epochs": Key(int, 5, "`compress.py`: distilled fine-tuning epochs of each lever variant before its validation loss decides whether it is used.", range=EPOCHS),
    },
    "valid": {
        "annot_format": Key(str, "voc", "As `train.annot_format`.", choices=DATASET_FORMATS),
        "valid_image_folder": Key(PATH, None, "Folder of validation images.", required=True, must_exist=False),
        "valid_annot_folder": Key(
            PATH, None, "Folder of xml / txt annotations, or the COCO json file.", required=True, must_exist=False
        ),
        "valid_list": Key(OPT_PATH, None, "Optional split file, as `train.train_list`."),
        "score_threshold": Key(float, 0.005, "Lowest detection score kept for evaluation (objectness x class probability).", range=FRACTION),
        "nms_iou": Key(float, 0.45, "IoU above which non-maximum suppression removes the lower-scored box of the same class.", range=RATE),
        "max_detections": Key(int, 100, "Detections kept per image after NMS (COCO AP counts at most 100).", range=COUNT),
        "batch_size": Key(int, 8, "Images per forward pass during evaluation.", range=Range(1, 1024)),
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
    """A validated config: sections as attribute bags, plus derived conveniences.

    Three splits: ``train`` (fits the weights), ``valid`` (chooses: the best
    epoch, every compression decision) and ``test`` (only reports). The test
    split is the ``test`` section when given; with ``train.holdout_fraction``
    the validation split is that share of the training images and the
    ``valid`` section is the test split; with neither, ``valid`` and ``test``
    are the same images (:attr:`has_test_split` is False).
    """

    path: Path
    model: Section
    train: Section
    valid: Section
    clustering: Section
    pruning: Section
    quantization: Section
    raw: dict
    test: Section | None = None
    compress: Section | None = None

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def labels(self) -> list[str]:
        if self.model.labels is not None:
            return list(self.model.labels)
        return read_names(self.model.labels_file)

    @property
    def has_test_split(self) -> bool:
        """True when the test split holds images no decision sees (a ``test`` section, or a training hold-out)."""
        return self.test is not None or self.train.holdout_fraction > 0

    def with_anchors(self, spec):
        """``spec`` with ``model.anchors`` (when given); anchors that do not fit its heads end in one message naming the key."""
        from .spec import anchor_pairs, with_anchors

        if not self.model.anchors:
            return spec
        try:
            return with_anchors(spec, anchor_pairs(self.model.anchors))
        except UserError as err:
            raise UserError(f"model.anchors: {err.reason}", self.path) from None

    def dataset(self, split: str) -> DatasetSource:
        """The ``train``, ``valid`` or ``test`` dataset source (see the class docstring), generating synthetic data on first use."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} (use {', '.join(SPLITS)})")
        holdout = self.train.holdout_fraction
        if split == "test":
            return self._source(*(("test", self.test) if self.test is not None else ("valid", self.valid)), label="test")
        if holdout and split in ("train", "valid"):
            return replace(self._source("train", self.train, label=split), holdout=(holdout, split == "valid"))
        return self._source(split, self.train if split == "train" else self.valid, label=split)

    def _source(self, section: str, sec: Section, label: str) -> DatasetSource:
        images = sec.values[f"{section}_image_folder"]
        annots = sec.values[f"{section}_annot_folder"]
        listing = sec.values[f"{section}_list"]
        fmt = sec.annot_format
        if fmt == "synthetic":
            from .synthetic import ensure_split

            ensure_split(images, annots, section, self.labels)
            fmt = "voc"
        for key, value in ((f"{section}.{section}_image_folder", images), (f"{section}.{section}_annot_folder", annots)):
            if not Path(value).exists():
                raise UserError(f"{key}: {value} does not exist", self.path)
        return DatasetSource(fmt, Path(images), Path(annots), tuple(self.labels), listing, label=label)


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
    if spec.range is not None and value not in spec.range:
        raise UserError(f"{name} must be in {spec.range}, got {value!r}", source)
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
        if section in OPTIONAL_SECTIONS and section not in raw:
            sections[section] = None
            continue
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
    if model["labels_file"] is not None:
        read_names(model["labels_file"])  # a names file that cannot be used is reported now, not at first use
    if model["labels"] is not None:
        if not model["labels"] or not all(isinstance(v, str) and v.strip() for v in model["labels"]):
            raise UserError("model.labels must be a non-empty list of class names", path)
        twice = sorted({v for v in model["labels"] if model["labels"].count(v) > 1})
        if twice:
            raise UserError(f"model.labels names {', '.join(map(repr, twice))} more than once: each class once", path)
    train = sections["train"].values
    sr = train["scale_range"]
    if len(sr) != 2 or not all(isinstance(v, (int, float)) and v > 0 for v in sr) or sr[0] > sr[1]:
        raise UserError("train.scale_range must be [min, max] with 0 < min <= max", path)
    ms = train["multi_scale"]
    if ms is not None and (len(ms) != 2 or not all(isinstance(v, int) and v > 0 and v % 32 == 0 for v in ms) or ms[0] > ms[1]):
        raise UserError("train.multi_scale must be [smallest, largest], multiples of 32", path)
    if not all(isinstance(v, (int, float)) for v in train["grid_scales"]):
        raise UserError("train.grid_scales must be a list of numbers", path)

    if model["input_size"] % 32:
        raise UserError(f"model.input_size must be a multiple of 32, got {model['input_size']}", path)
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
    pr = sections["pruning"].values
    for layer, ratio in pr["similarity_layer_ratios"].items():
        if not re.fullmatch(r"(conv_)?\d+", layer):
            raise UserError(f"pruning.similarity_layer_ratios: {layer!r} is not a layer index (\"12\") or name (\"conv_12\")", path)
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
            raise UserError(f"pruning.similarity_layer_ratios.{layer} must be a number in [0, 1), got {json.dumps(ratio)}", path)
    if not set(pr["similarity_kernels"]) <= {1, 3} or not pr["similarity_kernels"]:
        raise UserError("pruning.similarity_kernels must be [1], [3] or [1, 3]", path)
    if train["holdout_fraction"] and sections["test"] is not None:
        raise UserError("give either a test section or train.holdout_fraction, not both (with a test section the valid section is the validation split)", path)
    co = sections["compress"].values
    if not co["sizes"] or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 and v % 32 == 0 for v in co["sizes"]):
        raise UserError("compress.sizes must be a non-empty list of positive multiples of 32", path)
    if not co["latency_levels"] or 1.0 not in co["latency_levels"] or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1 for v in co["latency_levels"]):
        raise UserError("compress.latency_levels must be a list of numbers in (0, 1] that includes 1", path)
    unknown = [v for v in co["levers"] if v not in ("pool_stride", "relu")]
    if unknown:
        raise UserError(f"compress.levers: unknown lever {unknown[0]!r} (use pool_stride, relu)", path)
    if not co["sensitivity_ratios"] or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1 for v in co["sensitivity_ratios"]):
        raise UserError("compress.sensitivity_ratios must be a non-empty list of numbers in (0, 1)", path)
    return Config(path, sections["model"], sections["train"], sections["valid"], sections["clustering"], sections["pruning"],
                  sections["quantization"], raw, sections["test"], sections["compress"])  # fmt: skip


def with_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """``config`` with dotted keys (``"model.input_size"``) set, validated as if the file said so.

    Paths in ``overrides`` resolve against the config's folder, like the file's.
    """
    raw = json.loads(json.dumps(config.raw))
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if section not in SCHEMA or key not in SCHEMA[section]:
            raise UserError(f"unknown key {dotted}", config.path)
        raw.setdefault(section, {})[key] = value
    return parse_config(raw, config.path)


def to_raw(config: Config, folder: Path) -> dict:
    """The config as JSON to be written in ``folder``: every key given, paths made relative to ``folder``.

    The file can be moved with the data it points at, and loads to the same
    settings from there.
    """
    import os

    out: dict = {}
    for section, keys in SCHEMA.items():
        sec = getattr(config, section)
        if sec is None or section not in config.raw:
            continue
        given = config.raw[section]
        out[section] = {}
        for key in given:
            value = sec.values[key]
            if keys[key].type in (PATH, OPT_PATH) and value is not None:
                value = os.path.relpath(Path(value).resolve(), Path(folder).resolve())
            elif key == "architecture" and value not in _builtin_names():
                value = os.path.relpath(Path(value).resolve(), Path(folder).resolve())
            out[section][key] = value
    return out


def _builtin_names() -> tuple:
    from .zoo import BUILTIN

    return tuple(BUILTIN)


def parse_overrides(items: list[str] | None, cwd: str | Path = ".") -> dict[str, Any]:
    """Command-line ``--set section.key=value`` items as a dict of dotted keys, checked against :data:`SCHEMA`.

    The value is read as JSON where it parses (``5``, ``true``, ``null``,
    ``[1, 3]``, ``{"conv_12": 0.5}``) and as a plain string otherwise. Paths
    given on the command line are relative to the current folder, as a user
    expects there (in the file they are relative to the file).

    Example::

        parse_overrides(["train.nb_epochs=5", "model.labels=[\"cat\", \"dog\"]"])
        # {"train.nb_epochs": 5, "model.labels": ["cat", "dog"]}
    """
    import difflib

    out: dict[str, Any] = {}
    every = [f"{s}.{k}" for s, keys in SCHEMA.items() for k in keys]
    for item in items or []:
        dotted, eq, text = item.partition("=")
        dotted = dotted.strip()
        if not eq or not dotted:
            raise UserError(f"--set {item!r}: write section.key=value, e.g. --set train.nb_epochs=5")
        section, _, key = dotted.partition(".")
        if section not in SCHEMA or key not in SCHEMA[section]:
            close = difflib.get_close_matches(dotted, every, n=1)
            raise UserError(f"--set {dotted}: unknown key" + (f" (did you mean {close[0]}?)" if close else "; every key: docs/configuration.md"))
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        if SCHEMA[section][key].type in (PATH, OPT_PATH) and isinstance(value, str):
            value = str((Path(cwd) / Path(value).expanduser()).resolve())
        out[dotted] = value
    return out


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read and validate a config file, with ``overrides`` (dotted keys) set; every mistake ends in one :class:`UserError` naming the key."""
    from .fileio import read_user_text

    path = Path(path)
    text = read_user_text(path, "config file")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"invalid JSON: {err.msg} (column {err.colno})", path, err.lineno) from None
    config = parse_config(raw, path)
    if not overrides:
        return config
    try:
        return with_overrides(config, overrides)
    except UserError as err:
        named = [k for k in overrides if k in err.reason]
        if named:
            raise UserError(f"{err.reason} (set by --set {named[0]})", err.file, err.place) from None
        raise


def schema_markdown() -> str:
    """The README's table of config keys, from :data:`SCHEMA`."""
    rows = ["| key | type | default | range | meaning |", "|---|---|---|---|---|"]
    for section, keys in SCHEMA.items():
        for key, spec in keys.items():
            t = spec.type if isinstance(spec.type, str) else spec.type.__name__
            default = ("required" + (" in the section" if section in OPTIONAL_SECTIONS else "")) if spec.required else json.dumps(spec.default)
            rows.append(f"| `{section}.{key}` | {t} | {default} | {spec.range or ''} | {spec.help} |")
    return "\n".join(rows)
