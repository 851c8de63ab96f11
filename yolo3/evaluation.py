"""Evaluate a detector on a dataset: run it, post-process, score, time.

A predictor is anything with ``input_hw``, ``heads`` and ``__call__(batch) ->
list of head outputs``; :class:`KerasPredictor` wraps a Keras model. The
pre- and post-processing are the shared numpy functions, so a Keras model and
a ``.tflite`` file are scored by the very same code.

Example::

    from yolo3.models import load_model
    from yolo3.evaluation import KerasPredictor, evaluate
    report = evaluate(KerasPredictor(load_model("tiny.h5")), dataset, names)
    print(format_report(report))
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .datasets import Dataset, Problem, Record
from .errors import UserError
from .metrics import evaluate_detections
from .postprocess import Detections, HeadSpec, predictor_detections
from .preprocess import Letterbox, letterbox, load_image
from .spec import Spec, heads


def head_specs(spec: Spec) -> list[HeadSpec]:
    return [HeadSpec(h.anchors, h.classes, h.scale_xy) for h in heads(spec)]


class KerasPredictor:
    """Raw head outputs of a Keras model for a batch of letterboxed images (a compiled graph)."""

    runtime = "keras"
    in_model_nms = False  # the outputs are raw heads: decode and NMS in numpy

    def __init__(self, loaded):
        from .kerasenv import tf

        self.loaded = loaded
        self.model = loaded.model
        self.input_hw = loaded.input_hw
        self.heads = head_specs(loaded.spec)
        self.name = loaded.source
        self._forward = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        out = self._forward(batch)
        out = out if isinstance(out, (list, tuple)) else [out]
        return [np.asarray(o) for o in out]

    invoke = __call__


@dataclass
class DetectionRun:
    detections: list[Detections]
    records: list[Record]  # the records that could be read, aligned with detections
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0
    model_seconds: float = 0.0


def _prepare(record: Record, input_hw: tuple[int, int]) -> tuple[np.ndarray, Letterbox] | Problem:
    try:
        return letterbox(load_image(record.image), input_hw)
    except UserError as err:
        return Problem(str(record.image), "unreadable image", err.reason)


class PreparedImages:
    """A dataset's images letterboxed once for one input size, kept in memory.

    Compression decisions evaluate dozens of model variants on the same
    validation images; decoding and letterboxing them once saves most of the
    time of each evaluation but the model's.
    """

    def __init__(self, records: Sequence[Record], input_hw: tuple[int, int]):
        self.input_hw = tuple(input_hw)
        self.records: list[Record] = []
        self.tensors: list[np.ndarray] = []
        self.boxes: list[Letterbox] = []
        self.problems: list[Problem] = []
        with ThreadPoolExecutor(max_workers=2) as pool:
            for record, prepared in zip(records, pool.map(lambda r: _prepare(r, self.input_hw), records)):
                if isinstance(prepared, Problem):
                    self.problems.append(prepared)
                else:
                    self.records.append(record)
                    self.tensors.append(prepared[0])
                    self.boxes.append(prepared[1])


def run_detection(
    predictor,
    records: Sequence[Record],
    score_threshold: float = 0.005,
    nms_iou: float = 0.45,
    max_detections: int = 100,
    batch_size: int = 8,
    progress: bool = True,
    prepared: PreparedImages | None = None,
) -> DetectionRun:
    """Detect on every record; images are decoded in a background thread while the model runs (or taken from ``prepared``)."""
    run = DetectionRun([], [])
    start = time.perf_counter()
    if prepared is not None:
        if tuple(prepared.input_hw) != tuple(predictor.input_hw):
            raise ValueError(f"images prepared for {prepared.input_hw}, the model takes {predictor.input_hw}")
        records = prepared.records
        run.problems.extend(prepared.problems)
    batches = [records[i : i + batch_size] for i in range(0, len(records), batch_size)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(records), desc="evaluating", unit="img", leave=False)

    def load(k: int) -> list:
        if prepared is not None:
            return list(zip(prepared.tensors[k * batch_size : (k + 1) * batch_size], prepared.boxes[k * batch_size : (k + 1) * batch_size]))
        return [_prepare(r, predictor.input_hw) for r in batches[k]]

    with ThreadPoolExecutor(max_workers=2) as pool:
        pending = pool.map(load, range(len(batches)))
        for batch, prepared_batch in zip(batches, pending):
            good = [(r, p) for r, p in zip(batch, prepared_batch) if not isinstance(p, Problem)]
            run.problems.extend(p for p in prepared_batch if isinstance(p, Problem))
            if good:
                tensor = np.stack([p[0] for _, p in good])
                t0 = time.perf_counter()
                outputs = predictor(tensor)
                run.model_seconds += time.perf_counter() - t0
                for k, (record, (_, box)) in enumerate(good):
                    dets = predictor_detections(predictor, [o[k] for o in outputs], box, score_threshold, nms_iou, max_detections)
                    run.detections.append(dets)
                    run.records.append(record)
            if bar is not None:
                bar.update(len(batch))
    if bar is not None:
        bar.close()
    run.seconds = time.perf_counter() - start
    return run


def detect_dataset(
    predictor, dataset: Dataset, classes: int, score_threshold: float, nms_iou: float, max_detections: int, batch_size: int,
    progress: bool = False, prepared: PreparedImages | None = None, split: str = "validation",
) -> DetectionRun:  # fmt: skip
    """Every image of ``dataset`` through ``predictor``, after the checks a user's mistake can fail (class count, no images)."""
    if predictor.heads[0].classes != classes:
        raise UserError(f"the model predicts {predictor.heads[0].classes} classes but the dataset has {classes} names")
    if not dataset.records:
        raise UserError(f"the {split} split has no images", dataset.source)
    run = run_detection(predictor, dataset.records, score_threshold, nms_iou, max_detections, batch_size, progress, prepared)
    if not run.records:
        raise UserError(f"no image of the {split} split could be read", dataset.source)
    return run


def evaluate(
    predictor,
    dataset: Dataset,
    names: Sequence[str] | None = None,
    score_threshold: float = 0.005,
    nms_iou: float = 0.45,
    max_detections: int = 100,
    batch_size: int = 8,
    progress: bool = True,
    prepared: PreparedImages | None = None,
    curves: bool = False,
    split: str = "validation",
) -> dict:
    """Metrics, counts and timing of ``predictor`` on ``dataset`` (the ``split`` its messages name) as one JSON-ready dict.

    ``prepared`` (the dataset's images already letterboxed for the predictor's
    input size) skips decoding them again; ``curves`` adds the precision–recall
    curves and the confusion matrix (for :func:`yolo3.plots.write_plots`).
    """
    names = list(names if names is not None else dataset.names)
    run = detect_dataset(predictor, dataset, len(names), score_threshold, nms_iou, max_detections, batch_size, progress, prepared, split)
    report = evaluate_detections(run.records, run.detections, names, curves=curves)
    n = len(run.records)
    report.update(
        images=n,
        skipped_images=[str(p) for p in run.problems],
        detections=int(sum(len(d) for d in run.detections)),
        seconds_per_image=run.seconds / n,
        model_seconds_per_image=run.model_seconds / n,
        images_per_second=n / run.seconds if run.seconds else None,
        input_size=list(predictor.input_hw),
        settings={"score_threshold": score_threshold, "nms_iou": nms_iou, "max_detections": max_detections},
    )
    return report


def format_report(report: dict) -> str:
    """The terminal table: one row per class, then the totals."""
    rows = [f"{'class':<20s} {'AP50':>7s} {'GT':>6s} {'dets':>7s} {'TP':>6s} {'FP':>7s}"]
    for name, v in report["per_class"].items():
        ap = "   -   " if v["ap"] is None else f"{v['ap']:7.4f}"
        rows.append(
            f"{name[:20]:<20s} {ap} {v['ground_truth']:6d} {v['detections']:7d} {v['true_positives']:6d} {v['false_positives']:7d}"
        )
    coco = report["coco"]
    rows.append(f"mAP@0.5 {report['mAP50']:.4f}   COCO AP {coco['AP']:.4f}  AP50 {coco['AP50']:.4f}  AP75 {coco['AP75']:.4f}")
    if coco.get("AR100") is not None:
        sized = "  ".join(f"{k} {coco[k]:.4f}" if coco.get(k) is not None else f"{k} -" for k in ("APs", "APm", "APl"))
        rows.append(f"COCO {sized}  AR@100 {coco['AR100']:.4f}  (small < 32², medium < 96² pixels, large above)")
    extra = []
    if "params" in report:
        extra.append(f"parameters {report['params']:,}")
    if "macs" in report:
        extra.append(f"MACs {report['macs'] / 1e9:.3f} G")
    extra.append(f"images {report['images']}" + (f" ({report['split']} split)" if "split" in report else ""))
    extra.append(f"{report['images_per_second']:.2f} img/s ({report['model_seconds_per_image'] * 1000:.1f} ms/img in the model)")
    if "latency" in report:
        extra.append(f"latency {report['latency']['median_ms']:.1f} ms (median of {report['latency']['runs']}, batch 1)")
    rows.append("   ".join(extra))
    if report.get("peak_activation_bytes"):
        rows.append(f"flash {report['bytes'] / 1024:,.0f} KiB   RAM: peak activation memory {report['peak_activation_bytes'] / 1024:,.0f} KiB "
                    f"(LiteRT's arena spans {report['arena_span_bytes'] / 1024:,.0f} KiB)")  # fmt: skip
    if report.get("skipped_images"):
        rows.append(f"skipped {len(report['skipped_images'])} unreadable image(s): " + "; ".join(report["skipped_images"][:5]))
    return "\n".join(rows)


def load_for_config(config, model_path=None, architecture=None):
    """The model a config describes (or ``model_path`` instead of ``model.weights``), at the config's size."""
    from .models import load_model

    path = model_path if model_path is not None else config.model.weights
    try:
        return load_model(path, architecture=architecture or config.model.architecture, classes=len(config.labels),
                          size=config.model.input_size, anchors=config.model.anchors)  # fmt: skip
    except UserError as err:
        if "anchors are too few" in err.reason:
            raise UserError(f"model.anchors: {err.reason}", config.path) from None
        raise


def make_predictor(config, model_path=None, architecture=None, threads: int = 2):
    """A predictor for the config's model or ``model_path``: Keras (.weights, .h5) or LiteRT (.tflite).

    Returns the predictor and a summary (params, trainable_params, macs) of its architecture.
    """
    from pathlib import Path

    from .spec import analyse, parse_cfg, totals

    path = Path(model_path) if model_path is not None else config.model.weights
    if path is not None and path.suffix.lower() == ".tflite":
        from .lite import TFLitePredictor

        predictor = TFLitePredictor(path, threads=threads)
        if predictor.heads[0].classes != len(config.labels):
            raise UserError(f"the model predicts {predictor.heads[0].classes} classes but the config has {len(config.labels)} labels", path)
        summary = {}
        if "cfg" in predictor.metadata:
            spec = parse_cfg(predictor.metadata["cfg"], source=f"{path} (embedded cfg)")
            t = totals(analyse(spec, *predictor.input_hw))
            summary = {"params": t.params, "trainable_params": t.trainable_params, "macs": t.macs}
        return predictor, summary
    loaded = load_for_config(config, model_path, architecture)
    return KerasPredictor(loaded), loaded.summary()


def detect_split(config, model_path, split: str = "valid", threads: int = 2, progress: bool = False) -> DetectionRun:
    """Every image of a split through a model file, with the config's evaluation settings: the detections to compare models image by image."""
    from .datasets import read_dataset

    dataset = read_dataset(config.dataset(split), config.labels)
    predictor, _ = make_predictor(config, model_path, None, threads)
    v = config.valid
    return detect_dataset(predictor, dataset, len(config.labels), v.score_threshold, v.nms_iou, v.max_detections, v.batch_size, progress, split=split)


def model_file_sizes(path) -> dict:
    """``bytes`` and ``gzip_bytes`` of a model file (nothing for a model built in memory); for a .tflite also its RAM (peak activation memory)."""
    from pathlib import Path

    from .fileio import file_sizes
    from .tflite_memory import ram_figures

    if path is None or not Path(path).is_file():
        return {}
    return {**file_sizes(path), **ram_figures(path)}


def measure_model_latency(predictor, runs: int = 20) -> dict:
    """Median latency of one forward pass at batch 1, pre- and post-processing excluded."""
    import numpy as np

    from .lite import measure_latency

    tensor = np.full((1, *predictor.input_hw, 3), 0.5, np.float32)
    return measure_latency(predictor.invoke, tensor, runs=runs)


def evaluate_config(
    config, model_path=None, architecture=None, progress: bool = True, threads: int = 2, latency_runs: int = 20, split: str = "test",
    curves: bool = False,
) -> dict:
    """``evaluate.py -p 1``: evaluate the config's model (Keras or TFLite) on its test split (or ``split``).

    Without a separate test split in the config, ``test`` and ``valid`` are the same images.
    """
    from .datasets import read_dataset

    dataset = read_dataset(config.dataset(split), config.labels)
    predictor, summary = make_predictor(config, model_path, architecture, threads)
    report = evaluate(
        predictor,
        dataset,
        config.labels,
        config.valid.score_threshold,
        config.valid.nms_iou,
        config.valid.max_detections,
        config.valid.batch_size,
        progress,
        curves=curves,
        split=split,
    )
    report.update(summary)
    report["model"] = predictor.name
    report["split"] = split
    report["split_images_seen_by_decisions"] = split == "valid" or not config.has_test_split
    report.update(model_file_sizes(model_path if model_path is not None else config.model.weights))
    report["runtime"] = predictor.runtime
    if latency_runs:
        report["latency"] = measure_model_latency(predictor, latency_runs)
        report["latency"]["threads"] = threads if report["runtime"] == "litert" else None
    report["dataset_problems"] = [str(p) for p in dataset.problems]
    return report
