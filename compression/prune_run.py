"""``evaluate.py -p 2..5``: prune a model, report before/after, save it (Keras and Darknet), optionally fine-tune.

Modes: 2 magnitude (TFMOT or one-shot), 3 similarity filter pruning, 4 network
slimming, 5 residual-layer pruning. Structured modes (3-5) remove filters or
blocks for real, so parameters, MACs and latency fall; their result is also
written as a Darknet ``.cfg`` + ``.weights`` that OpenCV and Darknet load.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

from yolo3.errors import UserError
from yolo3.names import conv_name

from .outputs import check_output, file_sizes, fresh_run_dir

MODES = {2: "magnitude pruning", 3: "similarity pruning", 4: "network slimming", 5: "layer pruning"}


def round_share(total: float, rounds: int) -> float:
    """The fraction each of ``rounds`` prunings removes so that together they remove ``total``.

    Fractions compound: after n rounds of share s the kept fraction is (1 - s)^n.
    """
    return 1.0 - (1.0 - total) ** (1.0 / rounds)


def structured_prune(mode: int, spec, weights, p, share: float | None = None, keep: dict | None = None, layer_ratios: dict | None = None) -> tuple:
    """(new spec, new weights, details) for the structured modes.

    For one of several rounds: ``share`` overrides slimming's percent, ``keep``
    gives similarity pruning the filters each layer keeps after this round.
    ``layer_ratios`` ({layer index: ratio}, from :func:`~compression.pruning.resolve_layer_ratios`)
    overrides similarity pruning's ratio per layer.
    """
    from .pruning import group_masks, layer_prune, similarity_masks, slimming_masks
    from .surgery import prune_channels

    if mode == 3:
        plan = similarity_masks(
            spec, weights, p.similarity_w1, p.similarity_w2, p.similarity_ratio if share is None else share, p.similarity_threshold,
            tuple(p.similarity_kernels), p.min_channels, p.round_to, keep, layer_ratios,
        )  # fmt: skip
        masks = dict(plan.masks)
        if layer_ratios:  # shortcut groups named in the ratios: by |BN scale| (this round's count when in rounds)
            masks.update(group_masks(spec, weights, layer_ratios, p.min_channels, p.round_to, keep))
        result = prune_channels(spec, weights, masks, plan.merges)
        details = {
            "layers": {conv_name(g): len(v) for g, v in plan.removed.items()},
            "closest_pairs": {conv_name(g): [round(d, 6) for _, _, d in v[:3]] for g, v in plan.removed.items()},
        }
        return result.spec, result.weights, details
    if mode == 4:
        percent = p.slimming_percent if share is None else share
        masks = slimming_masks(spec, weights, percent if p.slimming_threshold is None else None,
                               p.slimming_threshold, p.min_channels, p.min_channel_fraction, p.round_to)  # fmt: skip
        result = prune_channels(spec, weights, masks)
        details = {"kept": {f"group_{g}": int(len(v)) for g, v in result.kept.items()}, "carriers": len(result.carriers)}
        return result.spec, result.weights, details
    if mode == 5:
        new_spec, new_weights, blocks = layer_prune(spec, weights, p.layer_blocks)
        return new_spec, new_weights, {"removed_blocks": [{"layers": [b.start, b.start + 1, b.shortcut], "mean_bn_scale": b.score} for b in blocks]}
    raise UserError(f"-p {mode} is not a structured pruning mode")


class _Session:
    """What every step of one pruning run shares: the config, the validation set, how to score and fine-tune."""

    def __init__(self, config, source: Path, progress: bool):
        from yolo3.datasets import read_dataset

        self.config, self.p, self.source, self.progress = config, config.pruning, source, progress
        self.valid = read_dataset(config.dataset("valid"), config.labels)

    def score(self, loaded) -> float:
        from yolo3.evaluation import KerasPredictor, evaluate

        v = self.config.valid
        return evaluate(KerasPredictor(loaded), self.valid, self.config.labels, v.score_threshold, v.nms_iou, v.max_detections,
                        v.batch_size, self.progress)["mAP50"]  # fmt: skip

    @staticmethod
    def stats(spec) -> dict:
        from yolo3.spec import analyse, totals

        t = totals(analyse(spec))
        return {"params": t.params, "macs": t.macs}

    def finetune(self, model_file: Path, n_epochs: int, folder: Path, hooks=()):
        """Fine-tune ``model_file`` for ``n_epochs`` in ``folder`` (with distillation when configured); the best model, loaded."""
        from yolo3.evaluation import load_for_config
        from yolo3.training import RunOptions, train

        from .distillation import Distillation

        if self.p.distillation:  # the unpruned model teaches the pruned one
            hooks = (*hooks, Distillation(self.source, self.p.distillation))
        options = RunOptions(str(model_file), True, n_epochs, str(folder), self.progress, learning_rate=self.p.finetune_learning_rate,
                             freeze_backbone_epochs=0, hooks=tuple(hooks))  # fmt: skip
        result = train(self.config, options)
        return load_for_config(self.config, result["best_model"])


def _prune_in_rounds(session: _Session, mode: int, loaded, rounds: int, layer_ratios: dict, run_dir: Path | None, report: dict) -> tuple:
    """Structured pruning in ``rounds`` steps with fine-tuning between them; (pruned model, its details, seconds spent pruning).

    Each step is scored on the network as the previous fine-tuning left it.
    ``report["rounds"]`` gets mAP and size after each step but the last.
    """
    from yolo3.keras_model import build_model, get_darknet_weights, set_darknet_weights
    from yolo3.models import LoadedModel, save_model

    from .pruning import similarity_keep_schedule

    p = session.p
    total = p.similarity_ratio if mode == 3 else (p.slimming_percent if p.slimming_threshold is None else None)
    share = round_share(total, rounds) if rounds > 1 and total is not None else None  # a threshold applies every round
    schedule = [None] * rounds
    if mode == 3 and rounds > 1 and (total is not None or layer_ratios):  # per layer, from the original counts (rounding not compounded)
        schedule = similarity_keep_schedule(loaded.spec, total, rounds, p.min_channels, p.round_to, layer_ratios)
        share = None
    seconds = 0.0  # planning and surgery only, not the fine-tuning between rounds
    current = loaded
    report["rounds"] = []
    for r in range(rounds):
        t0 = time.perf_counter()
        weights = get_darknet_weights(current.model, current.spec)
        spec, new_weights, details = structured_prune(mode, current.spec, weights, p, share, schedule[r], layer_ratios)
        seconds += time.perf_counter() - t0
        model = build_model(spec)
        set_darknet_weights(model, spec, new_weights)
        current = LoadedModel(model, spec, f"{loaded.source} (-p {mode})")
        if r == rounds - 1:
            break
        # a small step, then recovery, before the next step: the next scores see a network that has adapted
        folder = run_dir / f"round_{r + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        save_model(current.model, spec, folder / "pruned.h5")
        size = session.stats(spec)
        entry = {"round": r + 1, "removed_params": 1 - size["params"] / report["before"]["params"],
                 "pruned": {"mAP50": session.score(current), **size}}  # fmt: skip
        if p.round_epochs:
            current = session.finetune(folder / "pruned.h5", p.round_epochs, folder)
            entry["finetuned"] = {"mAP50": session.score(current), "epochs": p.round_epochs}
        report["rounds"].append(entry)
    return current, details, seconds


def run_pruning(config, mode: int, model_path: str | None, out: str | None, finetune_epochs: int | None, force: bool, progress: bool = True) -> dict:
    from yolo3.darknet import write_weights
    from yolo3.datasets import read_dataset
    from yolo3.evaluation import load_for_config
    from yolo3.keras_model import get_darknet_weights
    from yolo3.models import save_model
    from yolo3.spec import analyse, layer_table, write_cfg

    from .constraints import KeepZeros
    from .magnitude import TfmotPruning, oneshot_prune, sparsity_report
    from .pruning import resolve_layer_ratios

    if mode not in MODES:
        raise UserError(f"-p {mode}: unknown mode (2 magnitude, 3 similarity, 4 slimming, 5 layer pruning)")
    p = config.pruning
    epochs = p.finetune_epochs if finetune_epochs is None else finetune_epochs
    source = Path(model_path) if model_path else config.model.weights
    if source is None:
        raise UserError("nothing to prune: give --model or set model.weights in the config")
    out_path = Path(out) if out else (p.output or source.with_name(f"{source.stem}-p{mode}.h5"))
    out_path = check_output(Path(out_path), ".h5", force)
    if mode == 2 and p.magnitude_mode == "tfmot" and epochs < 1:
        raise UserError("magnitude pruning with TFMOT prunes while fine-tuning: set pruning.finetune_epochs (or --finetune-epochs) to at least 1, or pruning.magnitude_mode to oneshot")
    if p.rounds > 1 and mode not in (3, 4):
        raise UserError(f"pruning.rounds = {p.rounds}: pruning in rounds is for -p 3 and -p 4 only", config.path)
    session = _Session(config, source, progress)
    loaded = load_for_config(config, model_path)
    layer_ratios = resolve_layer_ratios(loaded.spec, p.similarity_layer_ratios, config.path) if mode == 3 else {}
    report = {"mode": MODES[mode], "model": loaded.source, "before": {"mAP50": session.score(loaded), **session.stats(loaded.spec)}}
    with tempfile.TemporaryDirectory() as tmp:
        save_model(loaded.model, loaded.spec, Path(tmp) / "before.h5")
        report["before"]["size"] = file_sizes(Path(tmp) / "before.h5")
    names = [conv_name(i) for i in loaded.spec.conv_indices()]
    rounds = p.rounds if mode in (3, 4) else 1
    run_dir = fresh_run_dir(out_path, force) if (epochs or rounds > 1) else None

    start = time.perf_counter()
    compression = None
    spec = loaded.spec
    if mode == 2:
        if p.magnitude_mode == "oneshot":
            oneshot_prune(loaded.model, names, p.magnitude_sparsity)
            compression = {"sparsity": {"target": p.magnitude_sparsity, "layers": names}}
        pruned = loaded
        report["prune_seconds"] = time.perf_counter() - start
    else:
        pruned, report["details"], report["prune_seconds"] = _prune_in_rounds(session, mode, loaded, rounds, layer_ratios, run_dir, report)
        spec = pruned.spec
        report["layer_table"] = layer_table(spec, analyse(spec))
    if not (mode == 2 and p.magnitude_mode == "tfmot"):
        report["pruned"] = {"mAP50": session.score(pruned), **session.stats(spec)}
    save_model(pruned.model, spec, out_path, compression)
    if mode != 2:
        write_cfg(spec, out_path.with_suffix(".cfg"))
        write_weights(out_path.with_suffix(".weights"), spec, get_darknet_weights(pruned.model, spec))
        report["darknet"] = [str(out_path.with_suffix(".cfg")), str(out_path.with_suffix(".weights"))]
    if epochs:
        hooks = ()
        if mode == 2 and p.magnitude_mode == "tfmot":
            steps = max(1, len(read_dataset(config.dataset("train"), config.labels).records) // config.train.batch_size)
            end = int(p.magnitude_end_fraction * epochs * steps)
            tfmot_hook = TfmotPruning(p.magnitude_sparsity, end, frequency=max(1, steps // 4), layers=names,
                                      best_from_epoch=min(epochs, math.ceil(end / steps) + 1))  # fmt: skip
            hooks = (tfmot_hook,)
            compression = tfmot_hook.compression
        elif compression:
            hooks = (KeepZeros(names),)
        tuned = session.finetune(out_path, epochs, run_dir, hooks)
        report["finetuned"] = {"mAP50": session.score(tuned), **session.stats(tuned.spec), "epochs": epochs, "run": str(run_dir)}
        pruned = tuned
        save_model(tuned.model, tuned.spec, out_path, compression)
        if mode != 2:
            write_weights(out_path.with_suffix(".weights"), spec, get_darknet_weights(tuned.model, tuned.spec))
    if mode == 2:
        report["sparsity"] = sparsity_report(pruned.model, spec)
    report["after_size"] = file_sizes(out_path)
    report["output"] = str(out_path)
    return report


def format_report(report: dict) -> str:
    rows = [report.get("layer_table", "")] if report.get("layer_table") else []
    rows.append(f"{'':<22s} {'mAP@0.5':>8s} {'params':>12s} {'MACs':>9s}")
    b = report["before"]
    stages = [("before", b)] + [(k, report[k]) for k in ("pruned", "finetuned") if k in report]
    for name, s in stages:
        label = {"before": "before", "pruned": "after pruning", "finetuned": "after fine-tuning"}[name]
        rows.append(f"{label:<22s} {s['mAP50']:8.4f} {s['params']:12,d} {s['macs'] / 1e9:8.3f}G")
    for r in report.get("rounds", []):
        tuned = f", {r['finetuned']['mAP50']:.4f} after {r['finetuned']['epochs']} epochs" if "finetuned" in r else ""
        rows.append(f"round {r['round']}: {r['removed_params']:.1%} of the parameters removed -> mAP@0.5 {r['pruned']['mAP50']:.4f}{tuned}, "
                    f"{r['pruned']['macs'] / 1e9:.3f}G MACs")  # fmt: skip
    last = stages[-1][1]
    rows.append(
        f"removed: {1 - last['params'] / b['params']:.1%} of the parameters, {1 - last['macs'] / b['macs']:.1%} of the MACs "
        f"({report['mode']}, {report['prune_seconds']:.1f} s)"
    )
    if "sparsity" in report:
        sp = report["sparsity"]
        rows.append(f"sparsity: {sp['overall']:.1%} of the kernel weights are zero; per layer: "
                    + ", ".join(f"{k} {v:.0%}" for k, v in sp["per_layer"].items()))  # fmt: skip
    rows.append(f"size: {b['size']['bytes']:,} B (gzip {b['size']['gzip_bytes']:,}) -> {report['after_size']['bytes']:,} B "
                f"(gzip {report['after_size']['gzip_bytes']:,}); wrote {report['output']}"
                + (f" and {', '.join(report['darknet'])}" if "darknet" in report else ""))  # fmt: skip
    return "\n".join(rows)
