"""Sensitivity analysis: how much mAP each layer loses to pruning, to clustering and to int8 — alone, without fine-tuning.

- **Pruning**: every prunable unit (a single convolution, or the layers a
  shortcut ties into one channel group) is pruned alone at a few ratios and
  the network is scored on the validation split. Single layers lose filters
  by similarity (with compensation: a removed filter's consumers read its
  twin), shortcut groups by mean |BN scale|, as :func:`prune_to_ratios` does
  for a whole plan. The measured counts are the ones pruning would keep
  (``min_channels``, multiples of ``round_to``).
- **Input size**: the unpruned network scored at every candidate input size
  (the model is fully convolutional; smaller inputs are a compression too).
- **Clustering**: every convolution's kernel alone onto k shared values.
- **int8**: TensorFlow Lite's ``QuantizationDebugger`` compares every tensor
  of the int8 model with its float value on validation images; per layer,
  the root-mean-square error in units of the tensor's quantization step
  (``rmse / scale``; about 0.29 is pure rounding of a well-fitted range).

Scores are on the validation split (never the test split): these numbers
decide the plan. Variants are scored with the validation images letterboxed
once (:class:`~yolo3.evaluation.PreparedImages`).

Example::

    scorer = Scorer(config, progress=True)
    table = pruning_sensitivity(loaded, scorer, ratios=(0.25, 0.5, 0.75), p=config.pruning)
    table["conv_12"]["points"]   # [{"ratio": 0.25, "kept": 768, "mAP50": ...}, ...]
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from yolo3.errors import UserError
from yolo3.names import conv_name
from yolo3.spec import Spec

from ..prune.surgery import channel_groups


@dataclass(frozen=True)
class Unit:
    """What the planner prunes as one: a channel group (one convolution, or the layers a shortcut ties)."""

    id: int
    name: str
    members: tuple[int, ...]
    channels: int


def pruning_units(spec: Spec) -> list[Unit]:
    """Every prunable channel group of ``spec`` (heads and the input are not)."""
    return [Unit(g.id, conv_name(g.id), tuple(g.members), g.channels) for g in channel_groups(spec) if g.prunable]


def prune_to_ratios(spec: Spec, weights, ratios: dict[int, float], pruning) -> tuple[Spec, object]:
    """Prune every unit named in ``ratios`` (group id -> fraction removed) at once; (new spec, new weights).

    ``pruning`` is the config's pruning section (similarity weights, ``min_channels``, ``round_to``).
    """
    from ..prune.pruning import group_masks, similarity_masks
    from ..prune.surgery import prune_channels

    ratios = {u: r for u, r in ratios.items() if r > 0}
    if not ratios:
        return spec, weights
    plan = similarity_masks(spec, weights, pruning.similarity_w1, pruning.similarity_w2, None, None, (), pruning.min_channels,
                            pruning.round_to, None, ratios)  # fmt: skip
    masks = dict(plan.masks)
    masks.update(group_masks(spec, weights, ratios, pruning.min_channels, pruning.round_to))
    result = prune_channels(spec, weights, masks, plan.merges)
    return result.spec, result.weights


def kept_count(channels: int, ratio: float, pruning) -> int:
    """Channels a unit keeps at ``ratio`` (what :func:`prune_to_ratios` leaves, carriers aside)."""
    from ..prune.pruning import _layer_budget

    return _layer_budget(channels, ratio, pruning.min_channels, pruning.round_to)


class BnRecalibration:
    """Adaptive batch normalisation (EagleEye, Li et al., ECCV 2020): BN statistics re-estimated on training images.

    A network with channels removed (or fed a smaller image) still normalises
    with the statistics of the network it was: its score without fine-tuning
    then says more about the stale statistics than about what the channels
    were worth, and ranks candidates poorly against what fine-tuning makes of
    them. Re-estimating every BN layer's moving mean and variance on a few
    hundred training images — forward passes in training mode, no weight
    changes — is what EagleEye showed makes the untrained score of a pruned
    network track its fine-tuned accuracy. The moving averages become exact
    means over the batches (momentum k / (k + 1) at batch k).
    """

    def __init__(self, images: list[str], batch_size: int = 16):
        self.images = list(images)
        self.batch_size = batch_size
        self._tensors: dict[tuple[int, int], np.ndarray] = {}

    def __call__(self, model, input_hw: tuple[int, int]) -> None:
        from yolo3.kerasenv import keras

        hw = tuple(input_hw)
        if hw not in self._tensors:
            from yolo3.preprocess import letterboxed_images

            self._tensors[hw] = letterboxed_images(self.images, hw)
        tensors = self._tensors[hw]
        bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
        momenta = [bn.momentum for bn in bns]
        try:
            for k, start in enumerate(range(0, len(tensors), self.batch_size)):
                for bn in bns:
                    bn.momentum = k / (k + 1)
                model(tensors[start : start + self.batch_size], training=True)
        finally:
            for bn, m in zip(bns, momenta):
                bn.momentum = m


class Scorer:
    """mAP@0.5 of model variants on the validation split; the images are letterboxed once per input size.

    With ``recalibration`` (a :class:`BnRecalibration`), ``score(..., recalibrate=True)``
    first re-estimates the variant's BN statistics on training images.
    """

    def __init__(self, config, split: str = "valid", progress: bool = False, recalibration: BnRecalibration | None = None):
        from yolo3.datasets import read_dataset

        self.config = config
        self.progress = progress
        self.dataset = read_dataset(config.dataset(split), config.labels)
        if not self.dataset.records:
            raise UserError(f"the {split} split has no images", config.path)
        self.recalibration = recalibration
        self._prepared: dict[tuple[int, int], object] = {}

    def score(self, model, spec: Spec, details: bool = False, recalibrate: bool = False):
        """mAP@0.5 of a Keras model built from ``spec`` (or the whole report with ``details``); BN statistics re-estimated first with ``recalibrate``."""
        from yolo3.evaluation import KerasPredictor, PreparedImages, evaluate
        from yolo3.models import LoadedModel

        predictor = KerasPredictor(LoadedModel(model, spec, "variant"))
        hw = tuple(predictor.input_hw)
        if recalibrate and self.recalibration is not None:
            self.recalibration(model, hw)
        if hw not in self._prepared:
            self._prepared[hw] = PreparedImages(self.dataset.records, hw)
        v = self.config.valid
        report = evaluate(predictor, self.dataset, self.config.labels, v.score_threshold, v.nms_iou, v.max_detections, v.batch_size,
                          progress=False, prepared=self._prepared[hw])  # fmt: skip
        return report if details else report["mAP50"]


def _bar(total: int, desc: str, progress: bool):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="variant", leave=False)


def pruning_sensitivity(loaded, scorer: Scorer, ratios, pruning, progress: bool = True, base_map: float | None = None) -> dict:
    """For every unit and ratio: channels kept and validation mAP@0.5 after pruning that unit alone (no fine-tuning)."""
    from yolo3.keras_model import build_model, get_darknet_weights, set_darknet_weights

    spec = loaded.spec
    weights = get_darknet_weights(loaded.model, spec)
    base = recalibrated_base(loaded, scorer) if base_map is None else base_map
    units = pruning_units(spec)
    plans = []
    for u in units:
        seen = set()
        for r in sorted(ratios):
            kept = kept_count(u.channels, r, pruning)
            if kept < u.channels and kept not in seen:
                seen.add(kept)
                plans.append((u, r, kept))
    table = {u.name: {"group": u.id, "members": list(u.members), "channels": u.channels, "points": []} for u in units}
    bar = _bar(len(plans), "pruning sensitivity", progress)
    size = loaded.input_hw
    for u, r, kept in plans:
        new_spec, new_weights = prune_to_ratios(spec, weights, {u.id: r}, pruning)
        model = build_model(new_spec, size=size)
        set_darknet_weights(model, new_spec, new_weights)
        score = scorer.score(model, new_spec, recalibrate=True)
        table[u.name]["points"].append({"ratio": r, "kept": kept, "mAP50": score, "loss": base - score})
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return {"base_mAP50": base, "ratios": list(ratios), "units": table}


def recalibrated_base(loaded, scorer: Scorer) -> float:
    """The unpruned model's score after the same BN re-estimation the variants get (on a copy: the model stays as it is)."""
    from yolo3.keras_model import build_model

    if scorer.recalibration is None:
        return scorer.score(loaded.model, loaded.spec)
    model = build_model(loaded.spec, size=loaded.input_hw)
    model.set_weights(loaded.model.get_weights())
    return scorer.score(model, loaded.spec, recalibrate=True)


def size_sensitivity(loaded, scorer: Scorer, sizes, progress: bool = True) -> dict:
    """Validation mAP@0.5 of the unpruned model at every input size (the weights and BN statistics unchanged).

    The BN statistics are not re-estimated here: the channels compute what they
    did, only over fewer pixels, and re-estimated statistics scored far worse
    (BCCD's YOLOv3-tiny at 288: 0.617 against 0.837 with the trained ones, while
    three epochs of fine-tuning at 288 took a pruned model of it to 0.79), so
    they would rank the sizes wrongly.
    """
    from yolo3.keras_model import build_model

    out = {}
    bar = _bar(len(sizes), "input-size sensitivity", progress)
    for size in sorted(sizes, reverse=True):
        model = build_model(loaded.spec, size=size)
        model.set_weights(loaded.model.get_weights())
        out[str(size)] = scorer.score(model, loaded.spec)  # the trained statistics: see the docstring
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return out


def clustering_sensitivity(loaded, scorer: Scorer, clusters: int = 32, progress: bool = True, base_map: float | None = None, seed: int = 0) -> dict:
    """For every convolution: validation mAP@0.5 with only its kernel clustered into ``clusters`` values (per layer)."""
    from ..cluster.clustering import cluster_kernel

    base = scorer.score(loaded.model, loaded.spec) if base_map is None else base_map
    names = [conv_name(i) for i in loaded.spec.conv_indices()]
    out = {}
    bar = _bar(len(names), "clustering sensitivity", progress)
    for name in names:
        layer = loaded.model.get_layer(name)
        original = layer.get_weights()
        clustered, _ = cluster_kernel(original[0], clusters, False, seed)
        layer.set_weights([clustered, *original[1:]])
        try:
            score = scorer.score(loaded.model, loaded.spec)
        finally:
            layer.set_weights(original)
        out[name] = {"weights": int(original[0].size), "mAP50": score, "loss": base - score}
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return {"base_mAP50": base, "clusters": clusters, "layers": out}


def int8_sensitivity(h5: Path, images: list[str], input_size: int) -> dict:
    """Per layer, the int8 model's error against float in quantization steps (:func:`compression.quantize.quant_debug.int8_error_report`)."""
    from ..quantize.quant_debug import int8_error_report

    return int8_error_report(h5, images, input_size)


def plot_sensitivity(result: dict, path: Path) -> None:
    """One PNG: pruning curves per unit, input size, clustering and int8 per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from yolo3.fileio import atomic_write

    panels = [k for k in ("pruning", "sizes", "clustering", "int8") if k in result]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), squeeze=False)
    for ax, key in zip(axes[0], panels):
        if key == "pruning":
            units = result["pruning"]["units"]
            base = result["pruning"]["base_mAP50"]
            for name, u in units.items():
                pts = [(0.0, base)] + [(1 - p["kept"] / u["channels"], p["mAP50"]) for p in u["points"]]
                ax.plot(*zip(*pts), marker="o", ms=3, label=name)
            ax.set(xlabel="fraction of the unit's channels removed", ylabel="validation mAP@0.5", title="pruning one unit")
            ax.legend(fontsize=6, ncol=2)
        elif key == "sizes":
            sizes = sorted(result["sizes"].items(), key=lambda kv: int(kv[0]))
            ax.plot([int(k) for k, _ in sizes], [v for _, v in sizes], marker="o")
            ax.set(xlabel="input size (px)", ylabel="validation mAP@0.5", title="input size, no retraining")
        elif key == "clustering":
            layers = result["clustering"]["layers"]
            ax.bar(range(len(layers)), [100 * v["loss"] for v in layers.values()])
            ax.set_xticks(range(len(layers)), list(layers), rotation=90, fontsize=7)
            ax.set(ylabel="mAP@0.5 lost (points)", title=f"clustering one layer into {result['clustering']['clusters']}")
        else:
            layers = result["int8"]["layers"]
            ax.bar(range(len(layers)), [v["rmse_over_scale"] for v in layers.values()])
            ax.set_xticks(range(len(layers)), list(layers), rotation=90, fontsize=7)
            ax.set(ylabel="RMSE / quantization step", title="int8 error per layer")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)


def run_sensitivity(loaded, config, sizes, ratios, clusters: int, calibration: list[str], int8: bool = True, progress: bool = True,
                    scorer: Scorer | None = None) -> dict:  # fmt: skip
    """Everything above for one model; a JSON-ready dict with the seconds each part took."""
    from yolo3.models import save_model

    scorer = scorer or Scorer(config, progress=progress)
    result: dict = {"model": loaded.source, "input_size": loaded.input_hw[0], "validation_images": len(scorer.dataset.records), "seconds": {}}
    t0 = time.perf_counter()
    base = scorer.score(loaded.model, loaded.spec)
    result["bn_recalibration_images"] = len(scorer.recalibration.images) if scorer.recalibration else 0
    result["pruning"] = pruning_sensitivity(loaded, scorer, ratios, config.pruning, progress, recalibrated_base(loaded, scorer))
    result["pruning"]["base_mAP50_as_trained"] = base
    result["seconds"]["pruning"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result["sizes"] = size_sensitivity(loaded, scorer, sizes, progress)
    result["seconds"]["sizes"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result["clustering"] = clustering_sensitivity(loaded, scorer, clusters, progress, base)
    result["seconds"]["clustering"] = time.perf_counter() - t0
    if int8:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            h5 = Path(tmp) / "model.h5"
            save_model(loaded.model, loaded.spec, h5)
            result["int8"] = int8_sensitivity(h5, calibration, loaded.input_hw[0])
        result["seconds"]["int8"] = time.perf_counter() - t0
    return result
