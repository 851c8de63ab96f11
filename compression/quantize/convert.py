"""``convert.py``: a model from a config (or any model file) to a ``.tflite``, with a report."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from yolo3.errors import UserError

from ..outputs import check_output, fresh_run_dir
from .ranges import METHODS as RANGE_METHODS
from .tflite_export import FORMATS, ExportOptions, calibration_images, export_tflite


def default_output(model_path: Path | None, fmt: str, config_folder: Path, nms: bool = False) -> Path:
    stem = model_path.stem if model_path is not None else "model"
    folder = model_path.parent if model_path is not None else config_folder
    return folder / f"{stem}-{fmt}{'-nms' if nms else ''}.tflite"


@dataclass(frozen=True)
class QatOptions:
    """Quantization-aware training before an int8 conversion: epochs (default ``quantization.qat_epochs``),
    the run folder (default: beside the output), the learning rate (default ``quantization.qat_learning_rate``)."""

    epochs: int | None = None
    run_dir: str | Path | None = None
    learning_rate: float | None = None


def convert_config(config, model_path: str | None = None, fmt: str = "int8", *, samples: int = 200, out: str | None = None,
                   force: bool = False, seed: int = 0, qat: QatOptions | None = None, progress: bool = True,
                   float_layers: str | None = None, debug: bool = False, calibration: str | None = None,
                   nms: bool = False, input_type: str = "int8", repair: str = "none") -> dict:  # fmt: skip
    """Load the config's model (or ``model_path``), convert it to ``fmt``, verify it loads, and report.

    int8 is calibrated on ``samples`` images chosen with ``seed`` — from the
    training split, or from the folder ``calibration`` (labelled or not). With
    ``qat`` the model is first fine-tuned with quantization-aware training
    (:mod:`compression.quantize.qat`) and the int8 file is converted from the QAT model.
    ``float_layers`` ("conv_0,conv_15", or "auto:N" for the N layers with the
    largest int8 error) stay float; ``debug`` adds the per-layer int8 error
    report (:func:`~compression.quantize.quant_debug.int8_error_report`) under ``report["debug"]``.
    ``nms`` puts decode and NMS into the graph (:mod:`compression.quantize.tflite_nms`) with
    the config's ``valid.score_threshold``, ``valid.nms_iou`` and ``valid.max_detections``;
    ``input_type`` "uint8" makes an int8 model take a camera's bytes as they are.
    ``repair`` ("none", "auto" or steps such as "cle") converts the model as it
    is and after each repair step, scores every int8 file on the validation
    split, keeps the best (:func:`repair_candidates`) and reports them all under
    ``report["repair"]``.

    Example::

        report = convert_config(config, "best.h5", "int8", out="best-int8.tflite", qat=QatOptions(epochs=2))
    """
    from yolo3.datasets import read_dataset
    from yolo3.evaluation import load_for_config
    from yolo3.models import compression_info, save_model

    if qat is not None and fmt != "int8":
        raise UserError(f"--qat makes an int8 model; --format {fmt} does not go with it")
    steps = parse_repair(repair)
    if steps and (fmt not in ("int8", "int16x8") or qat is not None or float_layers):
        raise UserError("--repair is for a plain int8 / int16x8 conversion (not with --qat or --float-layers)")
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if samples < 1:
        raise UserError("--samples must be at least 1")
    source = Path(model_path) if model_path else config.model.weights
    if source is not None and source.suffix.lower() == ".tflite":
        raise UserError("the model is already a .tflite; convert the .h5 or .weights it came from", source)
    options = ExportOptions(input_type=input_type, nms=nms, score_threshold=config.valid.score_threshold,
                            nms_iou=config.valid.nms_iou, max_detections=config.valid.max_detections,
                            nms_classes_per_box=config.quantization.nms_classes_per_box)  # fmt: skip
    options.check(fmt)
    out_path = check_output(Path(out) if out else default_output(source, fmt, config.folder, nms), ".tflite", force)
    loaded = load_for_config(config, model_path)
    if (float_layers or debug) and fmt != "int8":
        raise UserError(f"--float-layers and --debug are for int8; --format {fmt} does not go with them")
    images = []
    if fmt in ("int8", "int16x8"):
        if calibration:
            images = folder_images(calibration, samples, seed)
        else:
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
            qat_job = trained["conversion"]
        debug_report = None
        if debug or (float_layers and float_layers.startswith("auto:")):
            from .quant_debug import int8_error_report

            debug_report = int8_error_report(h5, images[:DEBUG_IMAGES], config.model.input_size)
        chosen = resolve_float_layers(float_layers, loaded.spec, debug_report)
        if steps:
            report = repair_candidates(config, loaded, h5, out_path, fmt, images, options, steps, info, Path(tmp), progress)
        else:
            report = export_tflite(h5, out_path, fmt, images, config.labels, config.model.input_size, loaded.spec, qat=qat_job,
                                   float_layers=chosen, options=options)  # fmt: skip
        if debug_report is not None:
            report["debug"] = debug_report
    if qat is not None:
        report["qat"] = {k: v for k, v in trained.items() if k != "weights"}
    report["source"] = loaded.source
    report.update(loaded.summary())
    if fmt == "int8":
        from .edgetpu import edge_tpu_report

        report["edge_tpu"] = edge_tpu_report(out_path)
    return report


DEBUG_IMAGES = 16  # calibration images the int8 debugger compares float and int8 on

REPAIR_STEPS = ("cle", "bias", "ranges", "adaround", "qat")  # in the order --repair auto tries them, each on top of the best so far
ADAROUND_IMAGES = 64  # calibration images AdaRound samples each layer's input patches from


def parse_repair(text: str | None) -> list[str]:
    """``none`` -> [], ``auto`` -> every step, ``cle,...`` -> those steps (checked); a bad name ends in one line."""
    text = (text or "none").strip().lower()
    if text == "none":
        return []
    if text == "auto":
        return list(REPAIR_STEPS)
    steps = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in steps if t not in REPAIR_STEPS]
    if unknown or not steps:
        raise UserError(f"--repair: unknown step {unknown[0] if unknown else text!r} (use none, auto or a list of: {', '.join(REPAIR_STEPS)})")
    return steps


def repair_candidates(config, loaded, h5: Path, out_path: Path, fmt: str, images: list[str], options, steps: list[str], info: dict,
                      tmp: Path, progress: bool) -> dict:  # fmt: skip
    """The repair ladder: the int8 model as converted, then each step on top of the best so far, scored on the validation split.

    ``cle`` equalises the float weights (:mod:`compression.quantize.equalize`), and
    beside that the activation tensor before each depthwise convolution (measured
    on the calibration images); the better is judged;
    ``bias`` corrects each convolution's int8 bias to the float model's mean
    output, on the best model so far and on it with its high biases absorbed
    into the next layer (:mod:`compression.quantize.bias`); the better is judged;
    ``ranges`` converts the best model so far with each inner activation's range
    refitted (:mod:`compression.quantize.ranges`: by quantization error, and to the
    mean of per-image extremes), and the unrepaired model too when the best so far
    is another step's (steps need not stack); the best of these is judged;
    ``adaround`` chooses the int8 rounding of the best model's weights
    (:mod:`compression.quantize.adaround`) and converts it as the best so far was;
    ``qat`` fine-tunes the best model with simulated int8
    (``quantization.qat_epochs``), its activation ranges starting where the
    best so far had them (refitted or min/max). A step is
    kept only if it beats the best so far with ``quantization.repair_confidence``
    (paired bootstrap over the validation images; on BCCD's 87 images QAT's
    +0.1 point over the refitted ranges was noise: 0.8 points worse on test);
    the best file is copied to ``out_path``. A step that would undo what the model is (CLE rescales every kernel channel by channel, so a clustered
    model would lose its shared values) is skipped and says why.
    """
    import dataclasses
    import shutil

    from compression.budget.latency_model import time_models
    from yolo3.evaluation import detect_split
    from yolo3.keras_model import build_model, get_darknet_weights, set_darknet_weights
    from yolo3.metrics import match_detections
    from yolo3.models import save_model
    from yolo3.resampling import keep_verdict, weighted_map50

    from .equalize import equalize
    from .tflite_export import export_tflite

    size = config.model.input_size
    rows, reports, files = [], {}, []

    confidence = config.quantization.repair_confidence

    def try_step(step: str, model_h5: Path, step_options, extra: dict, qat: dict | None = None) -> dict:
        file = tmp / f"repair-{step}.tflite"
        reports[step] = export_tflite(model_h5, file, fmt, images, config.labels, size, loaded.spec, qat=qat, options=step_options)
        run = detect_split(config, str(file), "valid")
        matches = match_detections(run.records, run.detections, len(config.labels))
        score = float(weighted_map50(matches, np.ones((1, len(run.records))))[0])
        row = {"step": step, "valid_mAP50": score, **extra}
        for key in ("activation_ranges", "bias_correction"):
            if reports[step].get(key):
                row[key] = reports[step][key]
        rows.append(row)
        files.append((step, file))
        return {"step": step, "h5": model_h5, "options": step_options, "mAP50": score, "matches": matches, "row": row}

    def save_weights(weights, path: Path) -> None:
        model = build_model(loaded.spec, size=size)
        set_darknet_weights(model, loaded.spec, weights)
        save_model(model, loaded.spec, path, info or None)

    def wins(tried: dict, best: dict) -> bool:
        """Whether ``tried`` beats ``best`` on validation with ``confidence`` (its gain's lower bootstrap quantile above 0)."""
        fields, better = keep_verdict(best["matches"], tried["matches"], best["mAP50"], tried["mAP50"], confidence, best["step"])
        tried["row"].update(fields)
        return better

    best = try_step("none", h5, options, {})
    for step in steps:
        if step == "cle":
            if "clustering" in info:
                rows.append({"step": "cle", "skipped": "the model is clustered: equalising would rescale its shared values channel by channel"})
                continue
            # CLE (weight ranges, every pair) and activation equalisation (the tensor before each depthwise convolution); the better is judged
            weights, done = equalize(loaded.spec, get_darknet_weights(loaded.model, loaded.spec))
            path = tmp / "model-cle.h5"
            save_weights(weights, path)
            tries = [try_step("cle", path, best["options"], {"on": best["step"], "pairs": len(done["pairs"]), "skipped_pairs": done["skipped"]})]
            path = tmp / "model-cle-activations.h5"
            done = activation_equalized(h5, loaded.spec, images, size, path, info)
            if done["pairs"]:
                tries.append(try_step("cle-activations", path, best["options"], {
                    "on": best["step"], "pairs": len(done["pairs"]), "skipped_pairs": done["skipped"],
                    "median_expansion": round(done["median_expansion"], 2), "largest_expansion": round(done["largest_expansion"], 1)}))  # fmt: skip
            tried = max(tries, key=lambda t: t["mAP50"])
        elif step == "bias":
            if fmt != "int8":
                rows.append({"step": "bias", "skipped": f"bias correction corrects int8 means, not {fmt}"})
                continue
            # the best so far with each convolution's int8 bias corrected; and, where a pair can absorb high biases, with them absorbed first
            corrected = dataclasses.replace(best["options"], bias_correction=True)
            tries = [try_step("bias", best["h5"], corrected, {"on": best["step"]})]
            path = tmp / f"model-absorbed-{best['step']}.h5"
            absorbed = bias_absorbed(best["h5"], loaded.spec, size, path, info)
            if absorbed["pairs"]:
                tries.append(try_step("bias-absorbed", path, corrected, {"on": best["step"], "absorbed_pairs": len(absorbed["pairs"]),
                                                                           "not_absorbed": absorbed["skipped"]}))  # fmt: skip
            tries[0]["row"]["not_absorbed"] = absorbed["skipped"]
            tried = max(tries, key=lambda t: t["mAP50"])
        elif step == "ranges":
            if fmt != "int8":
                rows.append({"step": "ranges", "skipped": f"activation ranges are chosen for int8 activations, not {fmt}"})
                continue
            # each refit method (least int8 error, mean of per-image extremes); on the best so far and, since the steps need not
            # stack (on BCCD's Yolo-Fastest ranges won 3 points alone, less after CLE), on the unrepaired model; the best goes on
            def ranges_name(method: str, alone: bool) -> str:  # "ranges" (mse), "ranges-mean", "ranges-alone", "ranges-mean-alone"
                return "ranges" + ("" if method == "mse" else f"-{method}") + ("-alone" if alone else "")

            tries = [try_step(ranges_name(m, False), best["h5"], dataclasses.replace(best["options"], activation_ranges=m), {"on": best["step"]})
                     for m in RANGE_METHODS]  # fmt: skip
            if best["step"] != "none":
                tries += [try_step(ranges_name(m, True), h5, dataclasses.replace(options, activation_ranges=m), {"on": "none"}) for m in RANGE_METHODS]
            tried = max(tries, key=lambda t: t["mAP50"])
        elif step == "adaround":
            if fmt != "int8":
                rows.append({"step": "adaround", "skipped": f"AdaRound rounds int8 weights, not {fmt}"})
                continue
            if "clustering" in info:
                rows.append({"step": "adaround", "skipped": "the model is clustered: rounding each weight on its own would undo the shared values"})
                continue
            path = tmp / f"model-adaround-{best['step']}.h5"
            done = adarounded(best["h5"], loaded.spec, images[:ADAROUND_IMAGES], size, config.quantization.adaround_iterations, path, info, progress)
            tried = try_step("adaround", path, best["options"], {"on": best["step"], "layers": done["improved"], "seconds": round(done["seconds"], 1)})
        elif step == "qat":
            if fmt != "int8":
                rows.append({"step": "qat", "skipped": f"quantization-aware training simulates int8, not {fmt}"})
                continue
            from yolo3.models import load_model

            from .qat import qat_finetune

            start = best["options"].activation_ranges  # the ladder's best ranges
            trained = qat_finetune(config, best["h5"], load_model(best["h5"]).model, tmp / "qat", None, progress, None, images[:64], start_ranges=start)
            tried = try_step("qat", best["h5"], dataclasses.replace(best["options"], activation_ranges="minmax", bias_correction=False),
                             {"on": best["step"], "scheme": trained["scheme"], "epochs": trained["epochs"], "start_ranges": trained["start_ranges"],
                              "ranges": trained["ranges"]}, qat=trained["conversion"])  # fmt: skip
        if wins(tried, best):
            best = tried
    latencies = time_models([f for _, f in files], config.compress.threads, rounds=5, runs=5, progress=False)
    for (step, _), ms in zip(files, latencies):
        next(r for r in rows if r["step"] == step)["latency_ms"] = ms
    shutil.copyfile(tmp / f"repair-{best['step']}.tflite", out_path)
    report = reports[best["step"]]
    report["path"] = str(out_path)
    report["repair"] = {"steps": rows, "kept": best["step"], "split": "valid", "confidence": confidence}
    return report


def bias_absorbed(h5: Path, spec, size: int, out: Path, info: dict | None) -> dict:
    """``h5`` with high biases absorbed into the next layer (:func:`compression.quantize.bias.absorb_biases`), saved as ``out`` if any was."""
    from yolo3.keras_model import get_darknet_weights, set_darknet_weights
    from yolo3.models import load_model, save_model

    from .bias import absorb_biases

    model = load_model(h5, size=size).model
    absorbed, report = absorb_biases(spec, get_darknet_weights(model, spec))
    if report["pairs"]:
        set_darknet_weights(model, spec, absorbed)
        save_model(model, spec, out, info or None)
    return report


def activation_equalized(h5: Path, spec, images: list[str], size: int, out: Path, info: dict | None) -> dict:
    """``h5`` with the activations before each depthwise convolution equalised on ``images``
    (:func:`compression.quantize.equalize.equalize_activations`), saved as ``out`` if it has such a pair."""
    from yolo3.keras_model import get_darknet_weights, set_darknet_weights
    from yolo3.models import load_model, save_model

    from .equalize import depthwise_reader_pairs, equalize_activations, measure_channel_ranges

    pairs = depthwise_reader_pairs(spec)
    if not pairs:
        return {"pairs": []}
    model = load_model(h5, size=size).model
    measured = measure_channel_ranges(model, spec, [a for a, _ in pairs], images, size)
    weights, report = equalize_activations(spec, get_darknet_weights(model, spec), measured)
    set_darknet_weights(model, spec, weights)
    save_model(model, spec, out, info or None)
    return report


def adarounded(h5: Path, spec, images: list[str], size: int, iterations: int, out: Path, info: dict | None, progress: bool) -> dict:
    """``h5`` with every convolution's int8 rounding chosen by AdaRound on ``images`` (:mod:`compression.quantize.adaround`), saved as ``out``."""
    from yolo3.keras_model import get_darknet_weights, set_darknet_weights
    from yolo3.models import load_model, save_model
    from yolo3.preprocess import letterboxed_images

    from .adaround import adaround

    model = load_model(h5, size=size).model
    batches = list(letterboxed_images(images, size)[:, None])
    weights, done = adaround(model, spec, get_darknet_weights(model, spec), batches, iterations, log=print if progress else None)
    set_darknet_weights(model, spec, weights)
    save_model(model, spec, out, info or None)
    return done


def folder_images(folder: str | Path, samples: int, seed: int = 0) -> list[str]:
    """``samples`` images of a folder (any images: labels are not needed to calibrate), chosen with a fixed seed."""
    from yolo3.preprocess import IMAGE_SUFFIXES

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError("--calibration: not a folder of images", folder)
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise UserError(f"--calibration: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder", folder)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(paths), size=min(samples, len(paths)), replace=False)
    return [str(paths[i]) for i in sorted(chosen)]


def resolve_float_layers(given: str | None, spec, debug_report: dict | None) -> list[int]:
    """``--float-layers`` as Spec indices: "conv_0,conv_15" (names or indices of convolutions) or "auto:N" (the N worst by int8 error)."""
    from yolo3.names import conv_index

    if not given:
        return []
    convs = set(spec.conv_indices())
    if given.startswith("auto:"):
        try:
            n = int(given[5:])
        except ValueError:
            raise UserError(f"--float-layers {given}: auto: takes a number of layers, e.g. auto:2") from None
        if not 1 <= n <= len(convs):
            raise UserError(f"--float-layers {given}: between 1 and {len(convs)} layers")
        worst = [name for name in debug_report["layers"] if name.startswith("conv_")][:n]
        return sorted(conv_index(name) for name in worst)
    chosen = []
    for item in (s.strip() for s in given.split(",") if s.strip()):
        try:
            index = conv_index(item)
        except ValueError:
            index = None
        if index not in convs:
            raise UserError(f"--float-layers: {item!r} is not a convolution of this model (they are conv_{min(convs)} .. conv_{max(convs)})")
        chosen.append(index)
    if not chosen:
        raise UserError("--float-layers: name at least one layer, e.g. conv_0,conv_15, or auto:N")
    return sorted(set(chosen))


def format_repair(repair: dict) -> str:
    """The repair ladder: each step's validation mAP@0.5 and int8 latency, and which was kept."""
    lines = ["int8 repair (validation split): " + "; ".join(
        f"{r['step']}: skipped ({r['skipped']})" if "skipped" in r else
        f"{r['step']}{' on ' + r['on'] if r.get('on') not in (None, 'none') else ''}: mAP@0.5 {r['valid_mAP50']:.4f}, {r['latency_ms']:.2f} ms"
        for r in repair["steps"]) + f"; kept: {repair['kept']}"
        + (f" (a rung is kept only if it wins with {100 * repair['confidence']:.0f} % confidence)" if repair.get("confidence", 0.5) > 0.5 else "")]  # fmt: skip
    return "\n".join(lines)


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
    if report.get("edge_tpu"):
        from .edgetpu import format_edge_tpu

        lines.append(format_edge_tpu(report["edge_tpu"]))
    if report.get("in_model_nms"):
        n = report["in_model_nms"]
        lines.append(f"in-model NMS (TFLite_Detection_PostProcess): scores above {n['score_threshold']:g}, IoU {n['nms_iou']:g}, "
                     f"at most {n['max_detections']} boxes, {n.get('classes_per_box', 1)} classes each; outputs {', '.join(n['outputs'])} (boxes ymin, xmin, ymax, xmax in [0, 1])")  # fmt: skip
    if report.get("float_layers"):
        lines.append(f"kept in float: {', '.join(report['float_layers'])} (every other operator int8)")
    if report.get("kernels"):
        k = report["kernels"]
        lines.append(f"convolution kernels: {k['layers']} x {k['dtype']}, {k['zero_fraction']:.1%} zeros, "
                     f"at most {k['max_distinct_per_channel']} distinct non-zero values in a channel")  # fmt: skip
    if report.get("qat"):
        q = report["qat"]
        lines.insert(0, f"quantization-aware training ({q['scheme']}, {q['epochs']} epoch{'' if q['epochs'] == 1 else 's'} at lr {q['learning_rate']:g}): "
                        f"simulated int8 mAP@0.5 {q['mAP50']:.4f}; run {q['run']}")  # fmt: skip
    if report.get("repair"):
        lines.append(format_repair(report["repair"]))
    return "\n".join(lines)
