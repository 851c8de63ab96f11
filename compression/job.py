"""One compression job: load → transform → report → fine-tune → save, the same for every method registered by name.

A method (:class:`Method`) says only what is its own: how it transforms the
model, what fine-tuning must keep afterwards (trainer hooks), which learning
rate suits it, and whether a fine-tuned result replaces the transformed one.
:func:`run_job` does the rest for all of them: it resolves the source model,
checks the output before any work, scores the model on the validation split
before and after, writes the result (``.h5``, and Darknet ``.cfg`` +
``.weights`` when the architecture changed), fine-tunes it in a run folder
beside the output (distilling from the source when ``pruning.distillation``
is set) and reports sizes in one schema (``bytes``, ``gzip_bytes``).

Methods: ``magnitude`` (TFMOT or one-shot), ``similarity``, ``slimming``,
``layers`` (:mod:`compression.prune.methods`), ``cluster`` (:mod:`compression.cluster.methods`).

Example::

    report = run_job(config, "similarity", "best.h5", out="pruned.h5", finetune_epochs=10)
    report["before"]["mAP50"], report["after"]["mAP50"], report["finetuned"]["mAP50"]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from yolo3.errors import UserError

from .outputs import check_output, file_sizes, fresh_run_dir
from .registry import Transformed, method_class, methods


class Job:
    """What every step of one compression job shares: the config, the source and output, the validation split, scoring, fine-tuning."""

    def __init__(self, config, model_path: str | None, out: Path, force: bool, progress: bool):
        from yolo3.datasets import read_dataset

        self.config, self.force, self.progress = config, force, progress
        self.source = Path(model_path) if model_path else config.model.weights
        self.model_path = model_path
        self.out = out
        self.valid = read_dataset(config.dataset("valid"), config.labels)

    def load(self):
        from yolo3.evaluation import load_for_config

        return load_for_config(self.config, self.model_path)

    def score(self, loaded) -> float:
        """mAP@0.5 on the validation split (every decision of a job sees only this split)."""
        from yolo3.evaluation import KerasPredictor, evaluate

        v = self.config.valid
        return evaluate(KerasPredictor(loaded), self.valid, self.config.labels, v.score_threshold, v.nms_iou, v.max_detections,
                        v.batch_size, self.progress)["mAP50"]  # fmt: skip

    @staticmethod
    def stats(spec) -> dict:
        from yolo3.spec import analyse, totals

        t = totals(analyse(spec))
        return {"params": t.params, "macs": t.macs}

    @staticmethod
    def sizes(loaded, record: dict | None = None) -> dict:
        """``bytes`` and ``gzip_bytes`` of the model saved as ``.h5``."""
        from yolo3.models import save_model

        with tempfile.TemporaryDirectory() as tmp:
            save_model(loaded.model, loaded.spec, Path(tmp) / "model.h5", record)
            return file_sizes(Path(tmp) / "model.h5")

    def finetune(self, model_file: Path, epochs: int, folder: Path, learning_rate: float, hooks=()):
        """Fine-tune ``model_file`` in ``folder`` (distilling from the source when ``pruning.distillation``); the best model, loaded."""
        from yolo3.evaluation import load_for_config

        from .steps import finetune

        result = finetune(self.config, model_file, folder, epochs, progress=self.progress, learning_rate=learning_rate, hooks=tuple(hooks),
                          keep_record=False, teacher=self.source, distill_weight=self.config.pruning.distillation,
                          feature_weight=self.config.pruning.feature_distillation, freeze_backbone_epochs=0)  # fmt: skip
        return load_for_config(self.config, result["best_model"])

    def save(self, made: Transformed, loaded=None) -> None:
        """Write ``loaded`` (default: the transformed model) to the output, and the Darknet files for a new architecture."""
        from yolo3.darknet import write_weights
        from yolo3.keras_model import get_darknet_weights
        from yolo3.models import save_model
        from yolo3.spec import write_cfg

        loaded = loaded or made.loaded
        save_model(loaded.model, loaded.spec, self.out, made.record)
        if made.structural:
            write_cfg(loaded.spec, self.out.with_suffix(".cfg"))
            write_weights(self.out.with_suffix(".weights"), loaded.spec, get_darknet_weights(loaded.model, loaded.spec))


def run_job(config, method: str, model_path: str | None, out: str | None = None, finetune_epochs: int | None = None,
            force: bool = False, progress: bool = True, **options) -> dict:  # fmt: skip
    """Load, transform with ``method``, report, fine-tune, save (see the module docstring); the report."""
    m = method_class(method)(config, **options)
    source = Path(model_path) if model_path else config.model.weights
    if source is None:
        raise UserError(f"nothing to compress: give --model or set model.weights in the config ({m.title})")
    epochs = m.default_epochs() if finetune_epochs is None else finetune_epochs
    if epochs < 0:
        raise UserError(f"fine-tuning epochs must not be negative, got {epochs}")
    out_path = check_output(Path(out) if out else m.default_output(source), ".h5", force)
    job = Job(config, model_path, out_path, force, progress)
    m.check(job, epochs)
    loaded = job.load()
    report = {"method": m.name, "title": m.title, "model": loaded.source, "output": str(out_path),
              "before": {"mAP50": job.score(loaded), **job.stats(loaded.spec), "size": job.sizes(loaded)}}  # fmt: skip
    run_dir = fresh_run_dir(out_path, force) if m.needs_run_dir(epochs) else None

    started = time.perf_counter()
    made = m.transform(job, loaded, run_dir, report)
    report["seconds"] = time.perf_counter() - started
    report["details"] = {**report.get("details", {}), **made.details}
    if made.structural:
        from yolo3.spec import analyse, layer_table

        report["layer_table"] = layer_table(made.loaded.spec, analyse(made.loaded.spec))
        report["darknet"] = [str(out_path.with_suffix(".cfg")), str(out_path.with_suffix(".weights"))]
    if m.scores_after_transform():
        report["after"] = {"mAP50": job.score(made.loaded), **job.stats(made.loaded.spec)}
    job.save(made)
    final = made.loaded
    if epochs:
        tuned = job.finetune(out_path, epochs, run_dir, m.learning_rate(), m.finetune_hooks(made, epochs))
        report["finetuned"] = {"mAP50": job.score(tuned), **job.stats(tuned.spec), "epochs": epochs, "run": str(run_dir)}
        report["finetuned"]["kept"] = m.keep_finetuned(report)
        if report["finetuned"]["kept"]:
            job.save(made, tuned)
            final = tuned
        else:  # fine-tuning made it worse on the validation split: the transformed model stays
            job.save(made)
    m.finish(job, made, final, report)
    report["size_after"] = file_sizes(out_path)
    return report


def format_report(report: dict) -> str:
    """The terminal table of a job: mAP@0.5, parameters and MACs before and after, sizes, what was written."""
    rows = [report["layer_table"]] if report.get("layer_table") else []
    rows.append(f"{'':<22s} {'mAP@0.5':>8s} {'params':>12s} {'MACs':>9s}")
    b = report["before"]
    stages = [("before", b)] + [(k, report[k]) for k in ("after", "finetuned") if k in report]
    for name, s in stages:
        label = {"before": "before", "after": "after " + report["title"], "finetuned": "after fine-tuning"}[name]
        kept = " (not kept: worse on validation)" if name == "finetuned" and not s.get("kept", True) else ""
        rows.append(f"{label[:22]:<22s} {s['mAP50']:8.4f} {s['params']:12,d} {s['macs'] / 1e9:8.3f}G{kept}")
    rows.extend(methods()[report["method"]].format_details(report))
    last = stages[-1][1]
    removed = f"removed: {1 - last['params'] / b['params']:.1%} of the parameters, {1 - last['macs'] / b['macs']:.1%} of the MACs " if last["params"] != b["params"] else ""
    rows.append(f"{removed}({report['title']}, {report['seconds']:.1f} s)")
    a = report["size_after"]
    rows.append(f"size: {b['size']['bytes']:,} B (gzip {b['size']['gzip_bytes']:,}) -> {a['bytes']:,} B (gzip {a['gzip_bytes']:,}); "
                f"wrote {report['output']}" + (f" and {', '.join(report['darknet'])}" if "darknet" in report else ""))  # fmt: skip
    return "\n".join(rows)
