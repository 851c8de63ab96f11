"""One model in every format: converted, evaluated by the same code, and timed in one interleaved run.

``yolo3 benchmark`` prints one table (mAP@0.5, COCO AP, size, gzip, median
latency, speed-up against the first format) and writes it as JSON; with a
floor on mAP@0.5 it is a check for a user's CI.

Example::

    report = run_benchmark(config, "best.h5", ["keras", "float32", "int8"], Path("runs/benchmark"))
    print(format_table(report))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from yolo3.errors import UserError
from yolo3.fileio import file_sizes
from yolo3.tflite_memory import ram_figures

from .quantize.tflite_export import FORMATS as TFLITE_FORMATS

FORMATS = ("keras", "float32", "float16", "dynamic", "int8", "int16x8")
assert set(FORMATS) == {"keras", *TFLITE_FORMATS}
NMS_SUFFIX = "-nms"  # int8-nms: the int8 file whose graph also decodes and runs NMS


@dataclass(frozen=True)
class Variant:
    """One row of the table: a label, the format converted to, and further :func:`~compression.quantize.convert.convert_config` options."""

    label: str
    format: str
    options: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)  # config keys this row converts with, e.g. {"quantization.nms_classes_per_box": 1}


def parse_formats(text: str) -> list[Variant]:
    """``"keras,int8,int8-nms"`` -> the variants; an unknown or repeated name ends in one message."""
    labels = [f.strip() for f in text.split(",") if f.strip()]
    variants = []
    for label in labels:
        fmt = label.removesuffix(NMS_SUFFIX)
        nms = fmt != label
        if fmt not in FORMATS or (nms and fmt in ("keras", "int16x8")):
            with_nms = ", ".join(f + NMS_SUFFIX for f in TFLITE_FORMATS if f != "int16x8")
            raise UserError(f"--formats: {label} is not a format (choose from {', '.join(FORMATS)}, {with_nms})")
        variants.append(Variant(label, fmt, {"nms": True} if nms else {}))
    if not variants:
        raise UserError("--formats: nothing given (choose from " + ", ".join(FORMATS) + ")")
    if len(set(labels)) != len(labels):
        raise UserError(f"--formats: a format is named twice in {text!r}")
    return variants


def run_benchmark(config, model_path: str | None, variants: list[Variant], folder: Path, samples: int = 200, threads: int = 2,
                  rounds: int = 10, runs: int = 5, split: str = "test", progress: bool = True) -> dict:  # fmt: skip
    """Convert ``model_path`` (default ``model.weights``) to every variant in ``folder``, evaluate each on ``split``, time all together.

    Two latencies per row, both at batch 1 on the split's first image: the
    model alone, and the model with the post-processing that makes its
    detections (decode and NMS in numpy, or nothing more for an in-model NMS)
    at the config's score threshold, so that in-graph and numpy NMS compare.
    """

    from yolo3.config import with_overrides
    from yolo3.datasets import read_dataset
    from yolo3.evaluation import evaluate, make_predictor
    from yolo3.lite import interleaved_latency
    from yolo3.preprocess import letterbox, load_image

    from .quantize.convert import convert_config

    source = Path(model_path) if model_path else config.model.weights
    if source is None:
        raise UserError("nothing to benchmark: give --model or set model.weights in the config")
    if not source.is_file():
        raise UserError("model file does not exist" if not source.exists() else "is not a file", source)
    if source.suffix.lower() == ".tflite":
        raise UserError("benchmark the .h5 or .weights the .tflite came from: every format is converted from it", source)
    folder.mkdir(parents=True, exist_ok=True)
    dataset = read_dataset(config.dataset(split), config.labels)
    v = config.valid
    rows, predictors = [], []
    for variant in variants:
        if variant.format == "keras":
            file = source
            sizes = file_sizes(source)
        else:
            file = folder / f"model-{variant.label.replace(':', '')}.tflite"
            conv = convert_config(with_overrides(config, variant.overrides), model_path, variant.format, samples=samples, out=str(file), force=True, progress=False, **variant.options)
            sizes = {"bytes": conv["bytes"], "gzip_bytes": conv["gzip_bytes"], **ram_figures(file), **({"repair": conv["repair"]} if "repair" in conv else {})}
        predictor, _ = make_predictor(config, str(file) if variant.format != "keras" else model_path, threads=threads)
        scored = evaluate(predictor, dataset, config.labels, v.score_threshold, v.nms_iou, v.max_detections, v.batch_size, progress)
        rows.append({"format": variant.label, "file": str(file), "mAP50": scored["mAP50"], "coco_AP": scored["coco"]["AP"], **sizes})
        predictors.append(predictor)

    image = load_image(dataset.records[0].image)
    prepared = [letterbox(image, p.input_hw) for p in predictors]
    tensors = [t[None] for t, _ in prepared]
    calls = [p.invoke for p in predictors] + [detections_call(p, box, v) for p, (_, box) in zip(predictors, prepared)]
    timed = interleaved_latency(calls, tensors + tensors, rounds, runs)
    n = len(rows)
    for row, model_t, full_t in zip(rows, timed[:n], timed[n:]):
        row["latency_ms"] = model_t["median_ms"]
        row["speedup"] = timed[0]["median_ms"] / model_t["median_ms"]
        row["latency_with_postprocess_ms"] = full_t["median_ms"]
    return {"model": str(source), "split": split, "images": len(dataset.records), "input_size": config.model.input_size,
            "threads": threads, "timing": {"rounds": rounds, "runs_per_round": runs, "image": str(dataset.records[0].image),
                                           "statistic": "median, formats interleaved"},
            "rows": rows}  # fmt: skip


def detections_call(predictor, box, valid):
    """``tensor -> detections``: the model and the post-processing that makes its detections (what a latency "with decode and NMS" times)."""
    from yolo3.postprocess import predictor_detections

    def run(tensor):
        outputs = predictor.invoke(tensor)
        return predictor_detections(predictor, [o[0] for o in outputs], box, valid.score_threshold, valid.nms_iou, valid.max_detections)

    return run


def format_table(report: dict) -> str:
    first = report["rows"][0]["format"]
    lines = [
        f"{report['images']} {report['split']} images at {report['input_size']}; latency: median of {report['timing']['rounds']} x "
        f"{report['timing']['runs_per_round']} runs at batch 1, formats interleaved, {report['threads']} LiteRT threads; "
        "+ post: with decode and NMS (numpy, or in the model); RAM: peak activation memory of a .tflite (yolo3 info FILE.tflite)",
        f"{'format':<12s} {'mAP@0.5':>8s} {'COCO AP':>8s} {'size':>10s} {'gzip':>10s} {'RAM':>10s} {'latency':>10s} {'vs ' + first:>12s} {'+ post':>10s}",
    ]
    for r in report["rows"]:
        size = f"{r['bytes'] / 1e6:.2f} MB" if r.get("bytes") else "-"
        gz = f"{r['gzip_bytes'] / 1e6:.2f} MB" if r.get("gzip_bytes") else "-"
        ram = f"{r['peak_activation_bytes'] / 1024:,.0f} KiB" if r.get("peak_activation_bytes") else "-"
        lines.append(f"{r['format']:<12s} {r['mAP50']:8.4f} {r['coco_AP']:8.4f} {size:>10s} {gz:>10s} {ram:>10s} {r['latency_ms']:8.2f}ms "
                     f"{r['speedup']:11.2f}x {r['latency_with_postprocess_ms']:8.2f}ms")  # fmt: skip
    return "\n".join(lines)


def below_floor(report: dict, floor: float | None) -> list[str]:
    """The formats whose mAP@0.5 is below ``floor`` (none when no floor is given)."""
    if floor is None:
        return []
    return [r["format"] for r in report["rows"] if r["mAP50"] < floor]
