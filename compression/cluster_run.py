"""``clustering.py``'s work: evaluate, cluster, evaluate, optionally fine-tune keeping the clusters, report."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from yolo3.errors import UserError

from .clustering import cluster_model, conv_layer_names, distinct_values
from .constraints import KeepClusters
from .outputs import check_output, file_sizes, fresh_run_dir


def run_clustering(
    config,
    model_path: str | None,
    out: str | None,
    clusters: int | None = None,
    per_channel: bool | None = None,
    finetune_epochs: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict:
    from yolo3.datasets import read_dataset
    from yolo3.evaluation import KerasPredictor, evaluate, load_for_config
    from yolo3.models import save_model
    from yolo3.training import RunOptions, train

    c = config.clustering
    clusters = clusters or c.clusters
    per_channel = c.per_channel if per_channel is None else per_channel
    epochs = c.finetune_epochs if finetune_epochs is None else finetune_epochs
    source = Path(model_path) if model_path else config.model.weights
    if source is None:
        raise UserError("nothing to cluster: give --model or set model.weights in the config")
    out_path = check_output(Path(out) if out else source.with_name(f"{source.stem}-clustered{clusters}.h5"), ".h5", force)
    valid = read_dataset(config.dataset("valid"), config.labels)
    v = config.valid

    def score(loaded) -> float:
        return evaluate(
            KerasPredictor(loaded), valid, config.labels, v.score_threshold, v.nms_iou, v.max_detections, v.batch_size, progress
        )["mAP50"]

    loaded = load_for_config(config, model_path)
    report = {"model": loaded.source, "clusters": clusters, "per_channel": per_channel}
    report["mAP50_before"] = score(loaded)
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before.h5"
        save_model(loaded.model, loaded.spec, before)
        report["size_before"] = file_sizes(before)
    names = conv_layer_names(loaded.spec, c.exclude)
    report["clustering"] = cluster_model(loaded.model, loaded.spec, clusters, per_channel, c.exclude, c.seed)
    record = {"clustering": {"clusters": clusters, "per_channel": per_channel, "layers": names}}
    report["mAP50_after"] = score(loaded)
    save_model(loaded.model, loaded.spec, out_path, record)
    report["output"] = str(out_path)
    report["size_after"] = file_sizes(out_path)
    if epochs:
        run_dir = fresh_run_dir(out_path, force)
        result = train(
            config,
            RunOptions(
                str(out_path), True, epochs, str(run_dir), progress,
                hooks=(KeepClusters(names, per_channel),),
                learning_rate=c.finetune_learning_rate,
                freeze_backbone_epochs=0,
            ),
        )  # fmt: skip
        tuned = load_for_config(config, result["best_model"])
        report["mAP50_finetuned"] = score(tuned)
        report["finetuned_distinct_values"] = distinct_values(tuned.model, names, per_channel)
        if max(report["finetuned_distinct_values"].values(), default=0) > clusters:
            raise UserError("fine-tuning broke the clusters (a kernel has more than k values); this is a bug")
        report["finetune_run"] = str(run_dir)
        if report["mAP50_finetuned"] >= report["mAP50_after"]:
            shutil.copyfile(result["best_model"], out_path)
            report["kept"] = "fine-tuned"
        else:  # fine-tuning made it worse on the validation set: keep the clustered model as it was
            report["kept"] = "clustered, not fine-tuned"
        report["size_after"] = file_sizes(out_path)
    return report


def format_report(report: dict) -> str:
    cl = report["clustering"]
    rows = [f"{'layer':<10s} {'weights':>10s} {'distinct':>8s} {'WCSS':>12s} {'codebook B':>11s} {'s':>6s}"]
    for e in cl["layers"]:
        rows.append(
            f"{e['layer']:<10s} {e['weights']:10,d} {e['max_distinct_per_channel']:8d} {e['wcss']:12.5g} {e['codebook_bytes']:11,d} {e['seconds']:6.2f}"
        )
    rows.append(
        f"{cl['clustered_layers']} layers clustered into {cl['clusters']}{' per channel' if cl['per_channel'] else ''} "
        f"in {cl['seconds']:.1f} s, total WCSS {cl['total_wcss']:.5g}"
    )
    b, a = report["size_before"], report["size_after"]
    rows.append(
        f"mAP@0.5 {report['mAP50_before']:.4f} -> {report['mAP50_after']:.4f} after clustering"
        + (f" -> {report['mAP50_finetuned']:.4f} after fine-tuning (kept: {report['kept']})" if "mAP50_finetuned" in report else "")
    )
    rows.append(
        f".h5 {b['bytes']:,} B (gzip {b['gzip_bytes']:,}) -> {a['bytes']:,} B (gzip {a['gzip_bytes']:,}); "
        f"codebook encoding {cl['codebook_bytes']:,} B; wrote {report['output']}"
    )
    return "\n".join(rows)
