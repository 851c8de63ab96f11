"""The report of a compress run: every stage scored on the test split, the final model timed against the unpruned int8 model.

Written as ``report.json`` (its top-level keys are the figures anyone can
check: ``target``, ``speedup_vs_unpruned_int8``, ``size_ratio_vs_float_weights``,
``map50_float_unpruned``, ``map50_final_int8``, ``latency_ms_final_int8``,
``latency_ms_unpruned_int8``, ``predicted_latency_ms_final_int8``, ``seconds``),
``report.md`` and ``report.png`` (mAP@0.5 against int8 latency and against
gzipped size: every stage, and every state the planner looked at).
"""

from __future__ import annotations

import json
from pathlib import Path

from yolo3.fileio import atomic_write, atomic_write_text, file_sizes
from yolo3.names import conv_index, conv_name
from yolo3.reporting import write_json

ROUNDS, RUNS = 10, 10  # interleaved timing of the final model against the unpruned int8 model


def _stage_seconds(c) -> dict[str, float]:
    out = {}
    for f in sorted((c.run.path / "stages").glob("*.json")):
        record = json.loads(f.read_text())
        out[record["stage"]] = record["seconds"]
    return out


def build_report(c) -> dict:
    """Evaluate, time and write the report of the compressor ``c`` (a :class:`~compression.compress_run.Compressor`)."""
    from yolo3.models import load_model
    from yolo3.spec import analyse, totals

    from .latency_model import time_models

    size, kept = c._chosen()
    base = c.results["baseline"]
    test_at = c.derived({"model.input_size": size})
    run = c.run
    stages = []

    def add(name: str, path: Path, note: str, config=None, arch_latency: str | None = None) -> dict:
        if not path.exists():
            return {}
        scored = c.evaluate(path, "test", config)
        entry = {"stage": name, "file": path.name, "mAP50": scored["mAP50"], "coco_AP": scored["coco_AP"], "images": scored["images"],
                 "note": note, "arch_latency": arch_latency}  # fmt: skip
        if path.suffix == ".tflite":
            entry.update(file_sizes(path))
        else:
            loaded = load_model(path)
            t = totals(analyse(loaded.spec, *loaded.input_hw))
            entry.update(params=t.params, macs=t.macs)
        stages.append(entry)
        return entry

    float_base = add("unpruned float (Keras)", run.file("baseline.h5"), f"the input model at {c.base_size}", arch_latency="unpruned")
    int8_base = add("unpruned int8", run.file("baseline-int8.tflite"), "post-training int8 of the input model", arch_latency="unpruned")
    add("pruned (one shot)", run.file("pruned.h5"), f"{size} px, before fine-tuning", test_at, "final")
    add("pruned + fine-tuned", run.file("finetuned.h5"), f"{c.results['finetune']['epochs']} epochs, distilled", test_at, "final")
    if "skipped" not in c.results["cluster"]:
        add("clustered", run.file("clustered.h5"), f"{c.config.clustering.clusters} values per kernel, excluded: "
            + (", ".join(c.results["cluster"]["excluded"]) or "none"), test_at, "final")  # fmt: skip
        add("clustered + fine-tuned", run.file("clustered-finetuned.h5"), c.results["cluster-finetune"]["kept"], test_at, "final")
    add("int8, post-training", run.file("ptq-int8.tflite"), "calibrated on training images", test_at, "final")
    add("int8, quantization-aware training", run.file("qat-int8.tflite"), c.results["int8"]["results"].get("qat", {}).get("scheme", ""), test_at, "final")
    final = add("final int8", run.file("final-int8.tflite"), f"the better int8 model on validation: {c.results['int8']['chosen']}", test_at, "final")

    times = time_models([run.file("baseline-int8.tflite"), run.file("final-int8.tflite")], c.threads, ROUNDS, RUNS, c.options.progress)
    unpruned_ms, final_ms = times
    for e in stages:
        e["int8_latency_ms"] = {"unpruned": unpruned_ms, "final": final_ms}.get(e.pop("arch_latency"))
    predicted = c.predicted_ms(kept, size)
    seconds = _stage_seconds(c)
    plan = json.loads(run.file("plan.json").read_text())
    report = {
        "target": c.options.target.to_json() if c.options.target else {"kind": "preset" if c.options.preset else "config",
                                                                        "text": plan.get("origin", "")},  # fmt: skip
        "speedup_vs_unpruned_int8": unpruned_ms / final_ms,
        "size_ratio_vs_float_weights": base["float_weights_bytes"] / final["gzip_bytes"],
        "map50_float_unpruned": float_base["mAP50"],
        "map50_unpruned_int8": int8_base["mAP50"],
        "map50_final_int8": final["mAP50"],
        "map50_points_vs_float": 100 * (final["mAP50"] - float_base["mAP50"]),
        "latency_ms_final_int8": final_ms,
        "latency_ms_unpruned_int8": unpruned_ms,
        "predicted_latency_ms_final_int8": predicted,
        "predicted_latency_ms_unpruned_int8": c.results["cost-models"]["unpruned_predicted_ms"],
        "gzip_bytes_final_int8": final["gzip_bytes"],
        "float_weights_bytes": base["float_weights_bytes"],
        "input_size": size,
        "kept_channels": {conv_name(k): v for k, v in kept.items()},
        "threads": c.threads,
        "split": {"test_images": final["images"], "decisions": "validation split", "figures": "test split"},
        "stages": stages,
        "candidates": c.results["candidates"],
        "seconds": sum(seconds.values()),
        "stage_seconds": seconds,
        "latency_timing": {"rounds": ROUNDS, "runs_per_round": RUNS, "statistic": "median of all runs, the two models interleaved"},
        "notes": c.notes,
        "plan_config": str(run.file("plan-config.json")),
    }
    write_json(run.file("report.json"), report)
    atomic_write_text(run.file("report.md"), format_markdown(report) + "\n")
    plot_report(report, plan, run.file("report.png"), c)
    return report


def format_markdown(r: dict) -> str:
    rows = [
        f"Target: {r['target']['text']}. Final model at input {r['input_size']}: "
        f"**{r['speedup_vs_unpruned_int8']:.2f}x** faster than the unpruned int8 model "
        f"({r['latency_ms_final_int8']:.2f} ms against {r['latency_ms_unpruned_int8']:.2f} ms, {r['threads']} LiteRT threads, "
        f"predicted {r['predicted_latency_ms_final_int8']:.2f} ms), **{r['size_ratio_vs_float_weights']:.1f}x** smaller than the float "
        f"`.weights` ({r['gzip_bytes_final_int8'] / 1e6:.3f} MB gzipped), mAP@0.5 **{r['map50_final_int8']:.4f}** against "
        f"{r['map50_float_unpruned']:.4f} for the unpruned float model (**{r['map50_points_vs_float']:+.2f}** points), "
        f"on {r['split']['test_images']} test images no decision saw. Whole run: {r['seconds'] / 60:.0f} min.",
        "",
        "| stage | mAP@0.5 | COCO AP | params | MACs | size | gzip | int8 latency of the architecture | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in r["stages"]:
        params = f"{e['params']:,}" if "params" in e else ""
        macs = f"{e['macs'] / 1e9:.3f} G" if "macs" in e else ""
        size = f"{e['bytes'] / 1e6:.2f} MB" if "bytes" in e else ""
        gz = f"{e['gzip_bytes'] / 1e6:.3f} MB" if "gzip_bytes" in e else ""
        lat = f"{e['int8_latency_ms']:.2f} ms" if e.get("int8_latency_ms") else ""
        rows.append(f"| {e['stage']} | {e['mAP50']:.4f} | {e['coco_AP']:.4f} | {params} | {macs} | {size} | {gz} | {lat} | {e['note']} |")
    rows.append("")
    rows.append("Stage times: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in r["stage_seconds"].items()))
    for note in r["notes"]:
        rows.append(f"\nNote: {note}")
    return "\n".join(rows)


def plot_report(r: dict, plan: dict, path: Path, c) -> None:
    """mAP@0.5 against int8 latency and against gzipped size: the stages (test split) and the planner's states (predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .planner import ChannelMap

    size_model = c._size_model()
    cmap = ChannelMap(c._spec())
    base_map = c.results.get("sensitivity", {}).get("base_mAP50")
    clustered = {i for i in cmap.spec.conv_indices() if conv_name(i) not in set(c.results["cluster"].get("excluded", []))}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    trace = plan.get("trace", [])
    if trace and base_map is not None:
        xs = [t["predicted_ms"] for t in trace]
        ys = [max(0.0, base_map - t["loss"]) for t in trace]
        sizes = [size_model.bytes(cmap, {conv_index(k): v for k, v in t["kept"].items()}, clustered) / 1e6 for t in trace]
        axes[0].scatter(xs, ys, s=6, c="0.7", label="planner states (predicted, before fine-tuning)")
        axes[1].scatter(sizes, ys, s=6, c="0.7", label="planner states (predicted, before fine-tuning)")
    for e in r["stages"]:
        if e.get("int8_latency_ms"):
            axes[0].scatter([e["int8_latency_ms"]], [e["mAP50"]], s=30)
            axes[0].annotate(e["stage"], (e["int8_latency_ms"], e["mAP50"]), fontsize=7, xytext=(4, 2), textcoords="offset points")
        if e.get("gzip_bytes"):
            axes[1].scatter([e["gzip_bytes"] / 1e6], [e["mAP50"]], s=30)
            axes[1].annotate(e["stage"], (e["gzip_bytes"] / 1e6, e["mAP50"]), fontsize=7, xytext=(4, 2), textcoords="offset points")
    axes[0].set(xlabel=f"int8 latency, ms ({r['threads']} threads)", ylabel="mAP@0.5 (test split; planner: validation)", title="accuracy against speed")
    axes[1].set(xlabel="gzipped int8 .tflite, MB", ylabel="mAP@0.5", title="accuracy against size")
    axes[1].set_xscale("log")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
