"""The int8 quantization debugger: which layers lose most when quantized, as JSON, markdown and a PNG.

``yolo3 convert --debug`` writes this report beside the ``.tflite``;
``--float-layers auto:N`` keeps the N worst layers of it in float.

Example::

    report = int8_error_report("best.h5", calibration_images[:16], 416)
    write_error_report(report, Path("best-int8-debug"))   # .json, .md, .png
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import numpy as np

from yolo3 import names
from yolo3.errors import UserError
from yolo3.fileio import atomic_write, atomic_write_text
from yolo3.names import conv_name, layer_name
from yolo3.reporting import write_json

LAYER_IN_TENSOR = re.compile(names.LAYER_IN_TENSOR)


def int8_error_report(h5: Path, images: list[str], input_size: int) -> dict:
    """Per layer, the int8 model's error against float, in quantization steps, the worst first (TFLite's ``QuantizationDebugger``, in a worker process).

    A layer's figure is the largest, over its ops, of RMSE / scale: about 0.29 is
    pure rounding of a well-fitted range; far above it the layer's range or
    its weights quantize badly, and keeping it in float (``--float-layers``)
    is where to start.
    """
    from ..subprocesses import failure_reason, run_module

    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp) / "job.json"
        out = Path(tmp) / "stats.json"
        job.write_text(json.dumps({"model": str(Path(h5).resolve()), "format": "debug", "out": str(out), "images": [str(Path(p).resolve()) for p in images],
                                   "input_size": input_size,
                                   "metadata": {}}))  # fmt: skip
        proc = run_module("compression.quantize.tflite_worker", str(job))
        if proc.returncode != 0:
            raise UserError(f"the int8 quantization debugger failed: {failure_reason(proc)}", h5)
        rows = json.loads(out.read_text())
    layers: dict[str, dict] = {}
    for row in rows:
        m = LAYER_IN_TENSOR.search(row["tensor_name"])
        if not m or not row.get("scale"):
            continue
        name = conv_name(m.group(1)) if row["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "LEAKY_RELU") else layer_name(row["op_name"].lower(), m.group(1))
        value = float(np.sqrt(max(row["mean_squared_error"], 0.0)) / row["scale"])
        entry = layers.setdefault(name, {"rmse_over_scale": 0.0, "ops": []})
        entry["ops"].append(row["op_name"])
        entry["rmse_over_scale"] = max(entry["rmse_over_scale"], value)
    return {"images": len(images), "layers": dict(sorted(layers.items(), key=lambda kv: -kv[1]["rmse_over_scale"]))}




def format_error_table(report: dict) -> str:
    rows = [f"int8 error per layer on {report['images']} calibration images (RMSE in quantization steps; ~0.29 is rounding alone):",
            "| layer | RMSE / scale | ops |", "|---|---|---|"]  # fmt: skip
    for name, e in report["layers"].items():
        rows.append(f"| {name} | {e['rmse_over_scale']:.3f} | {', '.join(sorted(set(e['ops'])))} |")
    return "\n".join(rows)


def write_error_report(report: dict, stem: Path) -> list[Path]:
    """``STEM.json``, ``STEM.md`` and ``STEM.png`` (the layers' errors, the worst first); the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem = Path(stem)
    write_json(stem.with_suffix(".json"), report)
    atomic_write_text(stem.with_suffix(".md"), format_error_table(report) + "\n")
    names = list(report["layers"])
    values = [report["layers"][n]["rmse_over_scale"] for n in names]
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(names) + 2), 3.6))
    ax.bar(range(len(names)), values, color="#3070b0")
    ax.axhline(0.29, color="0.5", lw=0.8, ls="--", label="rounding alone (~0.29)")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set(ylabel="RMSE / quantization step", title="int8 error per layer, the worst first")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(stem.with_suffix(".png"), lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return [stem.with_suffix(s) for s in (".json", ".md", ".png")]
