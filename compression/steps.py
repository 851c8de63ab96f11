"""The steps every compression flow shares, written once: fine-tune (keeping what compression did, with a teacher),
prune to a plan, and convert to int8 keeping the better of post-training and quantization-aware training.

The job runner (:mod:`compression.job`, behind ``yolo3 prune`` / ``cluster``),
the stages of ``compress`` (:mod:`compression.budget.stages`) and
``bench/chain.py`` call these functions; none of them assembles trainer
options or the int8 choice on its own.

Example::

    tuned = finetune(config, "pruned.h5", "runs/ft", epochs=10, learning_rate=1e-3, teacher="best.h5", distill_weight=1.0)
    prune_to_plan("baseline.h5", {4: 32, 7: 64}, 320, Path("pruned.h5"), config.pruning)
    int8_keep_better(config, Path("tuned.h5"), 320, images, Int8Files.beside(Path("out")), qat_epochs=2, score=valid_map)
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from yolo3.names import conv_name


def finetune_options(config, model_path: str | Path, *, epochs: int | None = None, run_dir: str | Path | None = None, progress: bool = True,
                     learning_rate: float | None = None, teacher: str | Path | None = None, distill_weight: float = 1.0, feature_weight: float = 0.0,
                     hooks: tuple = (), keep_record: bool = True, sparsity_l1: float = 0.0,
                     freeze_backbone_epochs: int | None = None, deadline: float | None = None):  # fmt: skip
    """:class:`~yolo3.training.RunOptions` that keep ``model_path``'s architecture and what compression did to it.

    With ``keep_record`` a clustered model stays on its centroids and a sparse
    one keeps its zeros (from the record in its ``.h5``); ``hooks`` come first
    (a method's own: TFMOT's schedule, masks); ``sparsity_l1`` adds network
    slimming's L1 step on BN scales; ``teacher`` adds knowledge distillation of
    the heads (``distill_weight``) and of the neck features near the objects
    (``feature_weight``); ``deadline`` (``time.time()``) shortens the run to
    the epochs that end before it.
    """
    from yolo3.errors import UserError
    from yolo3.training import RunOptions

    from .constraints import hooks_for

    hooks = list(hooks) + (list(hooks_for(model_path)) if keep_record else [])
    if sparsity_l1:
        from yolo3.models import spec_from_h5

        from .prune.sparse_training import SparseTraining

        spec = spec_from_h5(model_path)
        if spec is None:
            raise UserError("this .h5 carries no cfg; fine-tune a model written by this tool", model_path)
        hooks.append(SparseTraining(spec, sparsity_l1))
    if teacher is not None and (distill_weight or feature_weight):
        from .distillation import Distillation

        hooks.append(Distillation(teacher, distill_weight, feature_weight))
    return RunOptions(str(model_path), True, epochs, None if run_dir is None else str(run_dir), progress, learning_rate=learning_rate,
                      freeze_backbone_epochs=freeze_backbone_epochs, hooks=tuple(hooks), deadline=deadline)  # fmt: skip


def finetune(config, model_path: str | Path, run_dir: str | Path, epochs: int, **options) -> dict:
    """Fine-tune ``model_path`` in ``run_dir`` (resumes there) with :func:`finetune_options`; the trainer's summary (best model, mAP)."""
    from yolo3.training import train

    return train(config, finetune_options(config, model_path, epochs=epochs, run_dir=run_dir, **options))


def prune_to_plan(source_h5: Path, kept: dict[int, int], size: int, out: Path, pruning, levers=None) -> dict:
    """``source_h5`` pruned to ``kept`` channels per unit, levers applied, at input ``size``; written as ``out`` (.h5) with Darknet .cfg + .weights.

    ``pruning`` is a pruning config section (similarity weights, ``min_channels``,
    ``round_to``); ``levers`` (a :class:`~compression.budget.levers.Levers`) are
    the architecture changes beside channels (stride instead of max-pool, ReLU).
    """
    from yolo3.darknet import write_weights
    from yolo3.keras_model import build_model, get_darknet_weights, set_darknet_weights
    from yolo3.models import load_model, save_model
    from yolo3.spec import analyse, totals, with_size, write_cfg

    from .budget.planner import ChannelMap
    from .budget.sensitivity import prune_to_ratios

    loaded = load_model(source_h5)
    cmap = ChannelMap(loaded.spec)
    ratios = {u: (c - kept.get(u, c)) / c for u, c in cmap.units.items()}
    weights = get_darknet_weights(loaded.model, loaded.spec)
    spec, new_weights = prune_to_ratios(loaded.spec, weights, {u: r for u, r in ratios.items() if r > 0}, pruning)
    if levers is not None:
        spec, new_weights = levers.apply(spec, new_weights)
    spec = with_size(spec, size)
    model = build_model(spec, size=size)
    set_darknet_weights(model, spec, new_weights)
    save_model(model, spec, out)
    write_cfg(spec, out.with_suffix(".cfg"))
    write_weights(out.with_suffix(".weights"), spec, new_weights)
    t = totals(analyse(spec, size, size))
    return {"params": t.params, "macs": t.macs, "size": size, "filters": {conv_name(i): spec.layers[i].get_int("filters") for i in spec.conv_indices()}}


@dataclass(frozen=True)
class Int8Files:
    """Where :func:`int8_keep_better` writes: the post-training model, the QAT run folder and model, and the one kept."""

    ptq: Path
    qat_dir: Path
    qat: Path
    final: Path
    ranges: Path | None = None  # post-training int8 with activation ranges by quantization error
    adaround_h5: Path | None = None  # the model with AdaRound's int8 rounding written into its weights
    adaround: Path | None = None  # its post-training int8 model
    ranges_mean: Path | None = None  # post-training int8 with activation ranges at the mean of per-image extremes
    bias: Path | None = None  # post-training int8 with each convolution's bias corrected to the float mean (the ranges kept so far)
    equalized_h5: Path | None = None  # the model with the activations before each depthwise convolution equalised
    equalized: Path | None = None  # its post-training int8 model

    def ranges_for(self, method: str) -> Path | None:
        """The file of post-training int8 with activation ranges refitted by ``method`` (None: that refit is not asked for)."""
        return {"mse": self.ranges, "mean": self.ranges_mean}[method]

    @classmethod
    def beside(cls, folder: Path, prefix: str = "") -> Int8Files:
        return cls(folder / f"{prefix}ptq-int8.tflite", folder / f"{prefix}qat", folder / f"{prefix}qat-int8.tflite", folder / f"{prefix}final-int8.tflite",
                   folder / f"{prefix}ranges-int8.tflite", ranges_mean=folder / f"{prefix}ranges-mean-int8.tflite",
                   bias=folder / f"{prefix}bias-int8.tflite", equalized_h5=folder / f"{prefix}equalized.h5",
                   equalized=folder / f"{prefix}equalized-int8.tflite")  # fmt: skip


def int8_keep_better(config, model_h5: Path, size: int, calibration: list[str], files: Int8Files, *, qat_epochs: int,
                     score: Callable[[Path], float], progress: bool = True, ranges: bool = False, adaround_iterations: int = 0,
                     matches: Callable[[Path], list] | None = None, confidence: float = 0.5, bias_correction: bool = False,
                     equalization: bool = False) -> dict:  # fmt: skip
    """Post-training int8, with ``equalization`` also of the model with the activations before each depthwise convolution
    equalised channel by channel (:func:`compression.quantize.equalize.equalize_activations`; the later steps start from
    that model when it is kept), with ``ranges`` also with refitted activation ranges (by quantization error and by the mean of
    per-image extremes, the better of the two on ``score``), with ``bias_correction`` also with each convolution's
    int8 bias corrected to the float mean (:mod:`compression.quantize.bias`; with the ranges kept so far), with ``adaround_iterations``
    also with AdaRound's rounding of the weights, and with ``qat_epochs`` quantization-aware training; the best on ``score``
    (the validation split) is copied to ``files.final``.

    Each is tried in that order and kept only if it beats the best so far: by
    :func:`yolo3.resampling.sure_gain` with ``confidence`` when ``matches``
    gives each file's matched detections (the repair ladder's rule), else by
    any gain in ``score``; ties keep the plain post-training model.
    ``config`` is the run's config at input ``size``; QAT keeps the zeros and
    clusters the model's record names; AdaRound is converted with the refitted
    ranges and the bias correction, and QAT starts from the ranges, when those were kept; AdaRound is not
    tried on a clustered model (it would undo the shared values), nor is equalisation (it rescales kernels).
    """
    from yolo3.models import compression_info, load_model
    from yolo3.resampling import keep_verdict

    from .quantize.convert import ADAROUND_IMAGES, activation_equalized, adarounded
    from .quantize.qat import qat_finetune
    from .quantize.ranges import METHODS as RANGE_METHODS
    from .quantize.tflite_export import ExportOptions, export_tflite

    loaded = load_model(model_h5)
    results: dict[str, dict] = {}
    paths = {"ptq": files.ptq, "qat": files.qat, "ranges": files.ranges, "adaround": files.adaround, "bias": files.bias, "equalized": files.equalized}
    best = "ptq"

    def judge(name: str, extra: dict) -> None:
        nonlocal best
        results[name] = {"valid": score(paths[name]), "file": paths[name].name, **extra}
        if name == "ptq":
            return
        new, old = results[name], results[best]
        if matches is not None:
            fields, better = keep_verdict(matches(paths[best]), matches(paths[name]), old["valid"], new["valid"], confidence, best)
        else:  # scores alone: any gain
            fields, better = keep_verdict([], [], old["valid"], new["valid"], 0.5, best)
        new.update(fields)
        if better:
            best = name

    export_tflite(model_h5, files.ptq, "int8", calibration, config.labels, size, loaded.spec)
    judge("ptq", {})
    info = compression_info(model_h5)
    if equalization and files.equalized is not None and "clustering" not in info:
        done = activation_equalized(model_h5, loaded.spec, calibration, size, files.equalized_h5, info)
        if done["pairs"]:
            export_tflite(files.equalized_h5, files.equalized, "int8", calibration, config.labels, size, loaded.spec)
            judge("equalized", {"pairs": len(done["pairs"]), "median_expansion": round(done["median_expansion"], 2)})
            if best == "equalized":  # the later steps start from the equalised model
                model_h5 = files.equalized_h5
                loaded = load_model(model_h5)
    method = "minmax"
    if ranges and files.ranges is not None:  # each refit (least error, mean of per-image extremes); the better one is judged
        refits = {}
        for m in RANGE_METHODS:
            path = files.ranges_for(m)
            if path is None:
                continue
            report = export_tflite(model_h5, path, "int8", calibration, config.labels, size, loaded.spec, options=ExportOptions(activation_ranges=m))
            refits[m] = (score(path), path, report["activation_ranges"])
        better = max(refits, key=lambda m: refits[m][0])
        paths["ranges"] = refits[better][1]
        judge("ranges", {"activation_ranges": refits[better][2], "tried": {m: r[0] for m, r in refits.items()}})
    if best == "ranges":
        method = better
    if bias_correction and files.bias is not None:
        report = export_tflite(model_h5, files.bias, "int8", calibration, config.labels, size, loaded.spec,
                               options=ExportOptions(activation_ranges=method, bias_correction=True))  # fmt: skip
        judge("bias", {"ranges": method, "bias_correction": report["bias_correction"]})
    corrected = best == "bias"
    if adaround_iterations and files.adaround is not None and "clustering" not in info:
        done = adarounded(model_h5, loaded.spec, calibration[:ADAROUND_IMAGES], size, adaround_iterations, files.adaround_h5, info, progress)
        export_tflite(files.adaround_h5, files.adaround, "int8", calibration, config.labels, size, loaded.spec,
                      options=ExportOptions(activation_ranges=method, bias_correction=corrected))  # fmt: skip
        judge("adaround", {"ranges": method, "bias_correction": corrected, "layers_improved": done["improved"], "seconds": done["seconds"]})
    if qat_epochs:
        trained = qat_finetune(config, model_h5, loaded.model, files.qat_dir, qat_epochs, progress, None, calibration[:64], start_ranges=method)
        export_tflite(model_h5, files.qat, "int8", calibration, config.labels, size, loaded.spec,
                      qat=trained["conversion"])  # fmt: skip
        judge("qat", {"scheme": trained["scheme"], "start_ranges": trained["start_ranges"], "ranges": trained["ranges"]})
    shutil.copyfile(paths[best], files.final)
    return {"results": results, "chosen": best, "calibration_images": len(calibration), "confidence": confidence if matches is not None else 0.5}
