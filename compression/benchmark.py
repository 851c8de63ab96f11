"""One model in every format: converted, evaluated by the same code, and timed in one interleaved run.

``yolo3 benchmark`` prints one table (mAP@0.5, COCO AP, size, gzip, median
latency, speed-up against the first format) and writes it as JSON; with a
floor on mAP@0.5 it is a check for a user's CI.

Example::

    report = run_benchmark(config, "best.h5", ["keras", "float32", "int8"], Path("runs/benchmark"))
    print(format_table(report))
"""

from __future__ import annotations

from pathlib import Path

from yolo3.errors import UserError
from yolo3.fileio import file_sizes

from .tflite_export import FORMATS as TFLITE_FORMATS

FORMATS = ("keras", "float32", "float16", "dynamic", "int8", "int16x8")
assert set(FORMATS) == {"keras", *TFLITE_FORMATS}


def parse_formats(text: str) -> list[str]:
    """``"keras,int8"`` -> ``["keras", "int8"]``; an unknown or repeated name ends in one message."""
    formats = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UserError(f"--formats: {bad[0] if bad else 'nothing given'} is not a format (choose from {', '.join(FORMATS)})")
    if len(set(formats)) != len(formats):
        raise UserError(f"--formats: a format is named twice in {text!r}")
    return formats


def run_benchmark(config, model_path: str | None, formats: list[str], folder: Path, samples: int = 200, threads: int = 2,
                  rounds: int = 10, runs: int = 5, split: str = "test", progress: bool = True) -> dict:  # fmt: skip
    """Convert ``model_path`` (default ``model.weights``) to every format in ``folder``, evaluate each on ``split``, time all together."""
    from yolo3.datasets import read_dataset
    from yolo3.evaluation import evaluate, make_predictor
    from yolo3.lite import interleaved_latency

    from .convert import convert_config

    source = Path(model_path) if model_path else config.model.weights
    if source is None:
        raise UserError("nothing to benchmark: give --model or set model.weights in the config")
    if not source.is_file():
        raise UserError("model file does not exist" if not source.exists() else "is not a file", source)
    if source.suffix.lower() == ".tflite":
        raise UserError("benchmark the .h5 or .weights the .tflite came from: every format is converted from it", source)
    folder.mkdir(parents=True, exist_ok=True)
    dataset = read_dataset(config.dataset(split), config.labels)
    rows, predictors = [], []
    for fmt in formats:
        if fmt == "keras":
            file = source
            sizes = file_sizes(source)
        else:
            file = folder / f"model-{fmt}.tflite"
            conv = convert_config(config, model_path, fmt, samples=samples, out=str(file), force=True, progress=False)
            sizes = {"bytes": conv["bytes"], "gzip_bytes": conv["gzip_bytes"]}
        predictor, _ = make_predictor(config, str(file) if fmt != "keras" else model_path, threads=threads)
        v = config.valid
        scored = evaluate(predictor, dataset, config.labels, v.score_threshold, v.nms_iou, v.max_detections, v.batch_size, progress)
        rows.append({"format": fmt, "file": str(file), "mAP50": scored["mAP50"], "coco_AP": scored["coco"]["AP"], **sizes})
        predictors.append(predictor)
    import numpy as np

    tensors = [np.full((1, *p.input_hw, 3), 0.5, np.float32) for p in predictors]
    timed = interleaved_latency([p.invoke for p in predictors], tensors, rounds, runs)
    for row, t in zip(rows, timed):
        row["latency_ms"] = t["median_ms"]
        row["speedup"] = timed[0]["median_ms"] / t["median_ms"]
    return {"model": str(source), "split": split, "images": len(dataset.records), "input_size": config.model.input_size,
            "threads": threads, "timing": {"rounds": rounds, "runs_per_round": runs, "statistic": "median, formats interleaved"},
            "rows": rows}  # fmt: skip


def format_table(report: dict) -> str:
    first = report["rows"][0]["format"]
    lines = [
        f"{report['images']} {report['split']} images at {report['input_size']}; latency: median of {report['timing']['rounds']} x "
        f"{report['timing']['runs_per_round']} runs at batch 1, formats interleaved, {report['threads']} LiteRT threads",
        f"{'format':<9s} {'mAP@0.5':>8s} {'COCO AP':>8s} {'size':>10s} {'gzip':>10s} {'latency':>10s} {'vs ' + first:>12s}",
    ]
    for r in report["rows"]:
        size = f"{r['bytes'] / 1e6:.2f} MB" if r.get("bytes") else "-"
        gz = f"{r['gzip_bytes'] / 1e6:.2f} MB" if r.get("gzip_bytes") else "-"
        lines.append(f"{r['format']:<9s} {r['mAP50']:8.4f} {r['coco_AP']:8.4f} {size:>10s} {gz:>10s} {r['latency_ms']:8.2f}ms {r['speedup']:11.2f}x")
    return "\n".join(lines)


def below_floor(report: dict, floor: float | None) -> list[str]:
    """The formats whose mAP@0.5 is below ``floor`` (none when no floor is given)."""
    if floor is None:
        return []
    return [r["format"] for r in report["rows"] if r["mAP50"] < floor]
