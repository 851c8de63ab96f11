"""``convert.py``: a model from a config (or any model file) to a ``.tflite``, with a report."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from yolo3.errors import UserError

from .outputs import check_output, fresh_run_dir
from .tflite_export import FORMATS, calibration_images, export_tflite


def default_output(model_path: Path | None, fmt: str, config_folder: Path) -> Path:
    stem = model_path.stem if model_path is not None else "model"
    folder = model_path.parent if model_path is not None else config_folder
    return folder / f"{stem}-{fmt}.tflite"


@dataclass(frozen=True)
class QatOptions:
    """Quantization-aware training before an int8 conversion: epochs (default ``quantization.qat_epochs``),
    the run folder (default: beside the output), the learning rate (default ``quantization.qat_learning_rate``)."""

    epochs: int | None = None
    run_dir: str | Path | None = None
    learning_rate: float | None = None


def convert_config(config, model_path: str | None = None, fmt: str = "int8", *, samples: int = 200, out: str | None = None,
                   force: bool = False, seed: int = 0, qat: QatOptions | None = None, progress: bool = True) -> dict:  # fmt: skip
    """Load the config's model (or ``model_path``), convert it to ``fmt``, verify it loads, and report.

    int8 is calibrated on ``samples`` training images chosen with ``seed``. With
    ``qat`` the model is first fine-tuned with quantization-aware training
    (:mod:`compression.qat`) and the int8 file is converted from the QAT model.

    Example::

        report = convert_config(config, "best.h5", "int8", out="best-int8.tflite", qat=QatOptions(epochs=2))
    """
    from yolo3.datasets import read_dataset
    from yolo3.evaluation import load_for_config
    from yolo3.models import compression_info, save_model

    if qat is not None and fmt != "int8":
        raise UserError(f"--qat makes an int8 model; --format {fmt} does not go with it")
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if samples < 1:
        raise UserError("--samples must be at least 1")
    source = Path(model_path) if model_path else config.model.weights
    if source is not None and source.suffix.lower() == ".tflite":
        raise UserError("the model is already a .tflite; convert the .h5 or .weights it came from", source)
    out_path = check_output(Path(out) if out else default_output(source, fmt, config.folder), ".tflite", force)
    loaded = load_for_config(config, model_path)
    images = []
    if fmt in ("int8", "int16x8"):
        images = calibration_images(read_dataset(config.dataset("train"), config.labels).records, samples, seed)
    info = compression_info(source) if source is not None else {}
    with tempfile.TemporaryDirectory() as tmp:
        h5 = Path(tmp) / "model.h5"
        save_model(loaded.model, loaded.spec, h5, info or None)
        qat_job = None
        if qat is not None:
            from .qat import qat_finetune

            run_dir = Path(qat.run_dir) if qat.run_dir else fresh_run_dir(out_path, force)
            trained = qat_finetune(config, h5, loaded.model, run_dir, qat.epochs, progress, qat.learning_rate, images[:64])
            qat_job = {"scheme": trained["scheme"], "weights": trained["weights"]}
        report = export_tflite(h5, out_path, fmt, images, config.labels, config.model.input_size, loaded.spec, qat=qat_job)
    if qat is not None:
        report["qat"] = {k: v for k, v in trained.items() if k != "weights"}
    report["source"] = loaded.source
    report.update(loaded.summary())
    return report


def format_report(report: dict) -> str:
    def io(d):
        q = f", scale {d['scale']:.6g}, zero point {d['zero_point']}" if d["scale"] else ""
        return f"{d['dtype']} {d['shape']}{q}"

    lines = [
        f"wrote {report['path']} ({report['format']}): {report['bytes']:,} bytes, {report['gzip_bytes']:,} gzipped"
        + (f"; calibrated on {report['calibration_images']} training images" if report["calibration_images"] else ""),
        "input:  " + "; ".join(io(d) for d in report["inputs"]),
        "output: " + "; ".join(io(d) for d in report["outputs"]),
        "operators: " + ", ".join(f"{k} x{v}" for k, v in report["operators"].items()),
    ]
    if report.get("kernels"):
        k = report["kernels"]
        lines.append(f"convolution kernels: {k['layers']} x {k['dtype']}, {k['zero_fraction']:.1%} zeros, "
                     f"at most {k['max_distinct_per_channel']} distinct non-zero values in a channel")  # fmt: skip
    if report.get("qat"):
        q = report["qat"]
        lines.insert(0, f"quantization-aware training ({q['scheme']}, {q['epochs']} epoch{'' if q['epochs'] == 1 else 's'} at lr {q['learning_rate']:g}): "
                        f"simulated int8 mAP@0.5 {q['mAP50']:.4f}; run {q['run']}")  # fmt: skip
    return "\n".join(lines)
