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

import numpy as np

from yolo3.fileio import atomic_write, atomic_write_text, file_sizes
from yolo3.names import conv_index, conv_name
from yolo3.reporting import write_json
from yolo3.tflite_memory import ram_figures

ROUNDS, RUNS = 10, 10  # interleaved timing of the final model against the unpruned int8 model


def build_report(ctx) -> dict:
    """Evaluate the rows every stage declares on the test split, time the final model against the unpruned int8 model, write the report.

    ``ctx`` is the report stage's :class:`~compression.pipeline.StageContext`; the
    rows are the stages' own (:meth:`~.stages.CompressStage.report_rows`), joined in
    stage order.
    """
    from yolo3.models import load_model
    from yolo3.spec import analyse, totals

    from ..pipeline import StageContext
    from .latency_model import time_models
    from .plan import chosen

    job, pipeline = ctx.services, ctx.pipeline
    size, kept = chosen(ctx)
    floor = ctx.result("floor")
    delivered = floor["delivered"]
    base = ctx.result("baseline")
    test_at = job.at_size(size)
    stages = []
    for stage in pipeline.stages:
        if stage.name not in ctx.pipeline.upstream(ctx.stage.name) or not hasattr(stage, "report_rows"):
            continue
        for row in stage.report_rows(StageContext(pipeline, stage, job), ctx.result(stage.name)):
            path = ctx.input(row["file"])
            if not path.exists():
                continue
            scored = job.evaluate(path, "test", test_at if row["arch"] == "final" or (row["arch"] == "delivered" and delivered == "plan") else None)
            entry = {"stage": row["stage"], "file": path.name, "mAP50": scored["mAP50"], "coco_AP": scored["coco_AP"], "images": scored["images"],
                     "note": row["note"], "arch_latency": row["arch"]}  # fmt: skip
            if path.suffix == ".tflite":
                entry.update(file_sizes(path), **ram_figures(path))
            else:
                loaded = load_model(path)
                t = totals(analyse(loaded.spec, *loaded.input_hw))
                entry.update(params=t.params, macs=t.macs)
            stages.append(entry)
    by_file = {e["file"]: e for e in stages}
    test_interval = points_interval(job.matches(ctx.input("baseline.h5"), "test"),
                                    job.matches(ctx.input("final-int8.tflite"), "test", test_at if delivered == "plan" else None))  # fmt: skip
    float_base, int8_base, final = by_file["baseline.h5"], by_file["baseline-int8.tflite"], by_file["final-int8.tflite"]

    if delivered == "unpruned":  # final-int8.tflite is the unpruned int8 model: one timing, a ratio of exactly 1
        times = time_models([ctx.input("baseline-int8.tflite")], job.threads, ROUNDS, RUNS, job.options.progress, job.xnnpack) * 2
    else:
        times = time_models([ctx.input("baseline-int8.tflite"), ctx.input("final-int8.tflite")], job.threads, ROUNDS, RUNS, job.options.progress,
                            job.xnnpack)  # fmt: skip
    host = {"unpruned_ms": times[0], "final_ms": times[1], "speedup": times[0] / times[1], "threads": job.threads, "xnnpack": job.xnnpack}
    board = board_figures(ctx, delivered, size)
    # the figures the targets are judged on: the device planned for (the board's measurement, else its table's prediction), else this machine
    if board and board.get("measured") and board.get("predicted"):
        unpruned_ms, final_ms, basis = board["measured"]["unpruned_ms"], board["measured"]["final_ms"], "the board, measured (--board-measured)"
    elif board and board.get("predicted"):
        unpruned_ms, final_ms, basis = board["predicted"]["unpruned_ms"], board["predicted"]["final_ms"], "the board, predicted from its latency table"
    else:
        unpruned_ms, final_ms, basis = times[0], times[1], "this machine, measured"
    for e in stages:
        # rows of the plan's architecture share its timing only when the plan is what was delivered
        e["int8_latency_ms"] = {"unpruned": unpruned_ms, "final": final_ms if delivered == "plan" else None, "delivered": final_ms}.get(e.pop("arch_latency"))
    predicted = ctx.result("plan")["predicted_ms"][str(size)]
    seconds = pipeline.seconds()
    plan = json.loads(ctx.input("plan.json").read_text())
    target = job.options.target
    report = {
        "target": target.to_json() if target else {"kind": "preset" if job.options.preset else "config", "text": plan.get("origin", "")},
        "speedup_vs_unpruned_int8": unpruned_ms / final_ms,
        "size_ratio_vs_float_weights": base["float_weights_bytes"] / final["gzip_bytes"],
        "map50_float_unpruned": float_base["mAP50"],
        "map50_unpruned_int8": int8_base["mAP50"],
        "map50_final_int8": final["mAP50"],
        "map50_points_vs_float": 100 * (final["mAP50"] - float_base["mAP50"]),
        "map50_points_vs_float_interval": test_interval,
        "latency_ms_final_int8": final_ms,
        "latency_ms_unpruned_int8": unpruned_ms,
        "predicted_latency_ms_final_int8": predicted if delivered == "plan" else None,
        "predicted_latency_ms_unpruned_int8": ctx.result("cost-models")["unpruned_predicted_ms"],
        "gzip_bytes_final_int8": final["gzip_bytes"],
        "float_weights_bytes": base["float_weights_bytes"],
        "input_size": floor["size"],
        "kept_channels": {conv_name(k): v for k, v in kept.items()} if delivered == "plan" else None,
        "max_loss": floor["max_loss"],
        "map50_loss_validation": floor["loss_points"],
        "map50_loss_bound": floor.get("loss_bound", floor["loss_points"]),
        "floor_confidence": floor.get("confidence", 0.5),
        "validation_images": floor.get("validation_images"),
        "delivered": delivered,
        "floor_message": floor["message"],
        "levers": ctx.result("levers")["names"] if delivered != "unpruned" else [],
        "threads": board["threads"] if board and board.get("predicted") else job.threads,
        "xnnpack": board["xnnpack"] if board and board.get("predicted") else job.xnnpack,
        "latency_basis": basis,
        "latency_host": host,
        "board": board,
        "split": {"test_images": final["images"], "decisions": "validation split", "figures": "test split"},
        "stages": stages,
        "candidates": ctx.result("candidates"),
        "seconds": sum(seconds.values()),
        "time_budget_min": job.config.compress.time_budget or None,
        "stage_seconds": seconds,
        "latency_timing": {"rounds": ROUNDS, "runs_per_round": RUNS, "statistic": "median of all runs, the two models interleaved"},
        "notes": job.notes,
        "plan_config": str(ctx.input("plan-config.json")),
    }
    report["targets"] = targets_met(job.targets, report, by_file, delivered, ctx)
    write_json(ctx.output("report.json"), report)
    atomic_write_text(ctx.output("report.md"), format_markdown(report) + "\n")
    sens_base = ctx.result("sensitivity")["base_mAP50"] if ctx.has("sensitivity") else None
    cluster = ctx.result("cluster")
    plot_report(report, plan, ctx.output("report.png"), job.size_model(ctx.input("size-model.json")), job.spec(ctx.input("levered.h5")),
                sens_base, set(cluster.get("excluded", [])) if "skipped" not in cluster else None)  # fmt: skip
    return report


def board_figures(ctx, delivered: str, size: int) -> dict | None:
    """The board's figures when the run was planned from a latency table or given a board measurement; None otherwise.

    ``predicted``: the unpruned and the delivered int8 model on the board by
    the table (the unpruned and levered networks are probes it timed whole; a
    pruned plan is the latency model's prediction); ``command``: what times
    both on the board; ``measured``: what that command printed, when given
    with ``--board-measured`` (checked to be this run's files).
    """
    from yolo3.board import same_device

    from .board_timing import board_command
    from .plan import board_ms

    job = ctx.services
    table, measured = job.latency_table, job.board_measured
    if table is None and measured is None:
        return None
    out: dict = {}
    if table is not None:
        delegate = table.device.get("delegate")
        out.update(device=table.device, table=str(table.path), threads=table.threads, xnnpack=table.xnnpack,
                   predicted={"unpruned_ms": board_ms(ctx, "unpruned", size), "final_ms": board_ms(ctx, delivered, size)},
                   command=board_command(table.threads, table.xnnpack, None if delegate in ("xnnpack", "none (built-in kernels)") else delegate))  # fmt: skip
        out["predicted"]["speedup"] = out["predicted"]["unpruned_ms"] / out["predicted"]["final_ms"]
    else:
        out["command"] = board_command(job.threads, job.xnnpack)
    if measured is not None:
        measured.check_files(ctx.run_dir)
        out["measured"] = {**measured.to_json()}
        if table is not None and not same_device(measured.device, table.device):
            out["measured"]["note"] = "timed with other device settings than the latency table's (threads, delegate, runtime or CPU)"
    return out


def targets_met(targets, report: dict, by_file: dict, delivered: str, ctx) -> list[dict]:
    """Each target with the delivered model's measured value and whether it is met (test-split files, this run's timing)."""
    from yolo3.models import load_model
    from yolo3.spec import analyse, totals

    out = []
    for t in targets:
        if t.extreme:  # as fast / small as the floor allows: met when the delivered model holds the floor
            value = report["speedup_vs_unpruned_int8"] if t.kind == "speedup" else report["gzip_bytes_final_int8"] / 1e6
            planned = json.loads(ctx.input("plan.json").read_text())["target"]["value"]
            out.append({**t.to_json(), "measured": value, "planned": planned, "met": bool(report["map50_loss_bound"] <= report["max_loss"])})
            continue
        if t.kind == "speedup":
            value = report["speedup_vs_unpruned_int8"]
            met = value >= t.value * 0.98  # within the timing noise of one interleaved run
        elif t.kind == "latency":
            value = report["latency_ms_final_int8"]
            met = value <= t.value * 1.02
        elif t.kind == "size":
            value = report["gzip_bytes_final_int8"] / 1e6
            met = value <= t.value
        elif t.kind in ("ram", "flash"):  # measured on the delivered .tflite: liveness peak of its graph, its bytes
            final = by_file["final-int8.tflite"]
            value = (final["peak_activation_bytes"] if t.kind == "ram" else final["bytes"]) / 1024
            met = value <= t.value
        else:
            arch = {"plan": "pruned.h5", "levers": "levered.h5", "unpruned": "baseline.h5"}[delivered]
            if arch in by_file:
                macs = by_file[arch]["macs"]
            else:
                loaded = load_model(ctx.input(arch))
                macs = totals(analyse(loaded.spec, *loaded.input_hw)).macs
            value = macs / by_file["baseline.h5"]["macs"]
            met = value <= t.value * 1.001
        out.append({**t.to_json(), "measured": value, "met": bool(met)})
    return out


def where(r: dict) -> str:
    """Where the headline latency was measured or predicted, in words."""
    runtime = f"{r['threads']} LiteRT threads{'' if r.get('xnnpack', True) else ', built-in kernels (no XNNPACK)'}"
    basis = r.get("latency_basis", "this machine, measured")
    if basis.startswith("this machine"):
        return f"this machine, {runtime}"
    how = "measured there" if "measured" in basis else "predicted from its latency table"
    return f"the board ({r['board']['device'].get('cpu', '?')}, {runtime}), {how}"


def board_markdown(r: dict) -> str:
    """The board's paragraph: predicted and measured figures side by side, this machine's for comparison, the command to time it there."""
    board = r.get("board")
    if not board:
        return ""
    host = r["latency_host"]
    parts = []
    if board.get("predicted"):
        p = board["predicted"]
        parts.append(f"Planned for {board['device'].get('cpu', '?')} ({board['device'].get('machine', '?')}, {board['device'].get('runtime', '?')}, "
                     f"{board['threads']} thread(s), {board['device'].get('delegate', '?')}) from the latency table {board['table']}: predicted "
                     f"{p['final_ms']:.2f} ms against {p['unpruned_ms']:.2f} ms ({p['speedup']:.2f}x).")  # fmt: skip
    if board.get("measured"):
        m = board["measured"]
        parts.append(f"Measured on the board ({m['device'].get('cpu', '?')}, {m['device'].get('threads', '?')} thread(s), "
                     f"{m['device'].get('delegate', '?')}; {m['file']}): {m['final_ms']:.2f} ms against {m['unpruned_ms']:.2f} ms "
                     f"(**{m['speedup']:.2f}x**)" + (f"; {m['note']}" if m.get("note") else "") + ".")  # fmt: skip
    else:
        parts.append(f"Time it on the board, in the run folder's copy: `{board['command']}`, then give `--board-measured board.json` to the same "
                     "compress command to put the measurement here.")  # fmt: skip
    if not r.get("latency_basis", "").startswith("this machine"):
        parts.append(f"On this machine ({host['threads']} threads{'' if host['xnnpack'] else ', built-in kernels'}): {host['final_ms']:.2f} ms against "
                     f"{host['unpruned_ms']:.2f} ms ({host['speedup']:.2f}x).")  # fmt: skip
    return "\n\n" + " ".join(parts)


def points_interval(reference: list, model: list, coverage: float = 0.9) -> list[float]:
    """The central ``coverage`` interval of (model − reference) mAP@0.5 points over a paired bootstrap of the images: how far a figure of a small split can be trusted."""
    from yolo3.resampling import paired_map_loss

    gains = -paired_map_loss(reference, model)
    return [float(v) for v in np.quantile(gains, [(1 - coverage) / 2, (1 + coverage) / 2])]


def test_interval_text(r: dict) -> str:
    interval = r.get("map50_points_vs_float_interval")
    return f"; 90 % interval {interval[0]:+.2f} to {interval[1]:+.2f}" if interval else ""


def validation_bound(r: dict) -> str:
    """", at most X with 90 % confidence over N images" when the floor was judged at a bootstrap quantile."""
    if r.get("floor_confidence", 0.5) <= 0.5 or r.get("validation_images") is None:
        return ""
    return f", at most {r['map50_loss_bound']:.2f} with {100 * r['floor_confidence']:.0f} % confidence over {r['validation_images']} images"


def format_markdown(r: dict) -> str:
    rows = [
        f"Target: {r['target']['text']}. Final model at input {r['input_size']}: "
        f"**{r['speedup_vs_unpruned_int8']:.2f}x** faster than the unpruned int8 model "
        f"({r['latency_ms_final_int8']:.2f} ms against {r['latency_ms_unpruned_int8']:.2f} ms on {where(r)}, "
        + (f"predicted {r['predicted_latency_ms_final_int8']:.2f} ms), " if r["predicted_latency_ms_final_int8"] is not None else "no prediction), ") +
        f"**{r['size_ratio_vs_float_weights']:.1f}x** smaller than the float "
        f"`.weights` ({r['gzip_bytes_final_int8'] / 1e6:.3f} MB gzipped), mAP@0.5 **{r['map50_final_int8']:.4f}** against "
        f"{r['map50_float_unpruned']:.4f} for the unpruned float model (**{r['map50_points_vs_float']:+.2f}** points{test_interval_text(r)}), "
        f"on {r['split']['test_images']} test images no decision saw. Validation loss {r['map50_loss_validation']:.2f} points"
        + validation_bound(r) + f" (floor {r['max_loss']:g}); levers: {', '.join(r['levers']) or 'none'}. Whole run: {r['seconds'] / 60:.0f} min"
        + (f" (time budget {r['time_budget_min']:g} min)." if r.get("time_budget_min") else ".")
        + (f"\n\n**Not met within the floor:** {r['floor_message']}." if r.get("floor_message") else "")
        + board_markdown(r)
        + "".join(f"\n\nNot met: {t['text']} ({'predicted' if r.get('latency_basis', '').endswith('table') and t['kind'] in ('speedup', 'latency') else 'measured'} "
                  f"{t['measured']:.3g})." for t in r.get("targets", []) if not t["met"])
        + "".join(f"\n\n{t['text'][0].upper()}{t['text'][1:]}: planned from the sensitivity analysis' predicted losses as "
                  f"{t['planned']:.3g}{'x' if t['kind'] == 'speedup' else ' MB'}, measured {t['measured']:.3g}."
                  for t in r.get("targets", []) if t.get("planned") is not None),
        "",
        "| stage | mAP@0.5 | COCO AP | params | MACs | size | gzip | RAM (peak activations) | int8 latency of the architecture | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in r["stages"]:
        params = f"{e['params']:,}" if "params" in e else ""
        macs = f"{e['macs'] / 1e9:.3f} G" if "macs" in e else ""
        size = f"{e['bytes'] / 1e6:.2f} MB" if "bytes" in e else ""
        gz = f"{e['gzip_bytes'] / 1e6:.3f} MB" if "gzip_bytes" in e else ""
        lat = f"{e['int8_latency_ms']:.2f} ms" if e.get("int8_latency_ms") else ""
        ram = f"{e['peak_activation_bytes'] / 1024:,.0f} KiB" if e.get("peak_activation_bytes") else ""
        rows.append(f"| {e['stage']} | {e['mAP50']:.4f} | {e['coco_AP']:.4f} | {params} | {macs} | {size} | {gz} | {ram} | {lat} | {e['note']} |")
    rows.append("")
    rows.append("Stage times: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in r["stage_seconds"].items()))
    for note in r["notes"]:
        rows.append(f"\nNote: {note}")
    return "\n".join(rows)


def plot_report(r: dict, plan: dict, path: Path, size_model, spec, base_map: float | None, excluded: set[str] | None) -> None:
    """mAP@0.5 against int8 latency and against gzipped size: the stages (test split) and the planner's states (predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .planner import ChannelMap

    cmap = ChannelMap(spec)
    clustered = {i for i in cmap.spec.conv_indices() if excluded is not None and conv_name(i) not in excluded}
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
    floor_map = r["map50_float_unpruned"] - r["max_loss"] / 100
    for ax in axes:
        ax.axhline(floor_map, color="tab:red", lw=0.8, ls="--", label=f"floor: {r['max_loss']:g} points below the unpruned float model")
    axes[0].set(xlabel=f"int8 latency, ms ({r['threads']} threads)", ylabel="mAP@0.5 (test split; planner: validation)", title="accuracy against speed")
    axes[1].set(xlabel="gzipped int8 .tflite, MB", ylabel="mAP@0.5", title="accuracy against size")
    axes[1].set_xscale("log")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
