#!/usr/bin/env python3
"""Benchmark: planning for a board from its latency table, against planning on the host, timed on that board.

    python bench/board_plan.py -c bench/configs/raccoon-yolov3-tiny.json --model runs/raccoon-yolov3-tiny/best.h5 \
        --target-speedup 2 --board-threads 1 --board-no-xnnpack --time-budget 25 --work runs/board-plan \
        --out bench/results/board-plan-raccoon

The "board" is this machine with the runtime settings given (by default LiteRT's built-in
kernels and one thread, where int8 costs differ from XNNPACK's). Every step is the command a
user runs, in order:

1. ``yolo3 compress ... --export-probes WORK/probes``, then on the board
   ``python -m yolo3.lite profile WORK/probes --out WORK/table.json`` (its settings);
2. ``yolo3 compress ... --target-speedup X --run-dir WORK/host``: planned with this machine's
   default timing (compress.threads, XNNPACK);
3. the same with ``--latency-table WORK/table.json --run-dir WORK/board`` (the baseline lent by
   the host run; the levers stage times, so it and every stage after it are the board run's own);
4. on the board, interleaved: the unpruned int8 model and both final models; the board run's own
   report command, given back with ``--board-measured``;
5. the latency models' predictions against measurement for both final models and for
   ``--random-plans`` random channel plans of each run's network (random weights, timed on the
   runtime each model was fitted to): median and worst relative error.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

from common import ROOT, machine, write_results
from yolo3.errors import run_cli


def run(cmd: list[str], cwd: Path = ROOT, stdout=None) -> subprocess.CompletedProcess:
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, cwd=cwd, stdout=stdout or subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return proc


def board_flags(threads: int, no_xnnpack: bool) -> list[str]:
    return ["--threads", str(threads), *(["--no-xnnpack"] if no_xnnpack else [])]


def random_plans(spec, sizes: list[int], count: int, seed: int) -> list[tuple[dict, int]]:
    """``count`` channel plans, each unit at a random multiple of 8 between 1/8 of its width and all of it, at a random size."""
    from compression.budget.planner import ChannelMap

    rng = random.Random(seed)
    cmap = ChannelMap(spec)
    plans = []
    for _ in range(count):
        kept = {u: max(8, min(c, 8 * round(rng.uniform(c / 8, c) / 8))) for u, c in cmap.units.items()}
        plans.append((kept, rng.choice(sizes)))
    return plans


def prediction_errors(run_dir: Path, count: int, seed: int, threads: int, xnnpack: bool) -> dict:
    """The run's latency model against int8 timing (random weights) of ``count`` random plans of its levered network."""
    from compression.budget.latency_model import LatencyModel, measure_networks
    from compression.budget.planner import ChannelMap
    from yolo3.models import spec_from_h5

    model = LatencyModel.from_json(json.loads((run_dir / "latency-model.json").read_text()))
    spec = spec_from_h5(run_dir / "levered.h5")
    sizes = sorted({int(n["size"]) for n in model.networks})
    cmap = ChannelMap(spec)
    plans = random_plans(spec, sizes, count, seed)
    specs = [(cmap.spec_with(kept), size) for kept, size in plans]
    measured = measure_networks(specs, threads, progress=False, rounds=5, runs=5, xnnpack=xnnpack)
    rows = [{"size": size, "units_kept": {str(u): k for u, k in kept.items()}, "predicted_ms": model.predict(s, size), "measured_ms": ms}
            for (kept, size), (s, _), ms in zip(plans, specs, measured)]  # fmt: skip
    for r in rows:
        r["error"] = r["predicted_ms"] / r["measured_ms"] - 1
    errors = sorted(abs(r["error"]) for r in rows)
    return {"plans": rows, "median_abs_error": errors[len(errors) // 2], "worst_abs_error": errors[-1],
            "within_10_percent": sum(e <= 0.10 for e in errors) / len(errors)}  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--target-speedup", default="2")
    parser.add_argument("--board-threads", type=int, default=1)
    parser.add_argument("--board-no-xnnpack", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--time-budget", type=float, default=25.0, help="minutes each compress run may take")
    parser.add_argument("--random-plans", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", required=True, help="a folder for the probes, the table and both runs (resumes)")
    parser.add_argument("--out", required=True, help="output path without suffix (.json and .md are written)")
    args = parser.parse_args(argv)

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    yolo3 = [str(Path(sys.executable).with_name("yolo3"))]
    lite = [sys.executable, "-m", "yolo3.lite"]
    board = board_flags(args.board_threads, args.board_no_xnnpack)
    common = ["compress", "-c", args.config, "--model", args.model, "--quiet"]
    probes, table = work / "probes", work / "table.json"
    if not (probes / "manifest.json").exists():
        run([*yolo3, *common, "--export-probes", str(probes)])
    run([*lite, "profile", str(probes), *board, "--out", str(table)])
    target = ["--target-speedup", args.target_speedup, "--time-budget", str(args.time_budget)]
    host_dir, board_dir = work / "host", work / "board"
    run([*yolo3, *common, *target, "--run-dir", str(host_dir)])
    board_cmd = [*yolo3, *common, *target, "--run-dir", str(board_dir), "--latency-table", str(table)]
    run([*board_cmd, "--measurements-from", str(host_dir)])
    # on the board: the run's own command, given back to the report; and all three models in one interleaved run
    command = json.loads((board_dir / "report.json").read_text())["board"]["command"].split(" > ")[0].split()
    measured = run([sys.executable, *command[1:]], cwd=board_dir).stdout
    (board_dir / "board.json").write_text(measured)
    run([*board_cmd, "--board-measured", str(board_dir / "board.json")])
    three = [host_dir / "baseline-int8.tflite", host_dir / "final-int8.tflite", board_dir / "final-int8.tflite"]
    timed = json.loads(run([*lite, "benchmark", *map(str, three), *board, "--rounds", "10", "--json"]).stdout)
    board_ms = [timed["models"][str(p)]["median_ms"] for p in three]
    reports = {name: json.loads((d / "report.json").read_text()) for name, d in (("host", host_dir), ("board", board_dir))}
    plans = {name: json.loads((d / "plan.json").read_text()) for name, d in (("host", host_dir), ("board", board_dir))}
    errors = {
        "board": prediction_errors(board_dir, args.random_plans, args.seed, args.board_threads, not args.board_no_xnnpack),
        "host": prediction_errors(host_dir, args.random_plans, args.seed, reports["host"]["threads"], reports["host"]["xnnpack"]),
    }
    finals = {
        "board": {"predicted_ms": reports["board"]["board"]["predicted"]["final_ms"], "measured_ms": board_ms[2]},
        "host": {"predicted_ms": reports["host"]["predicted_latency_ms_final_int8"], "measured_ms": reports["host"]["latency_ms_final_int8"]},
    }
    for f in finals.values():
        if f["predicted_ms"] is not None:
            f["error"] = f["predicted_ms"] / f["measured_ms"] - 1
    data = {
        "command": "python bench/board_plan.py " + " ".join(argv or sys.argv[1:]), "machine": machine(),
        "board": {"threads": args.board_threads, "xnnpack": not args.board_no_xnnpack, "device": timed["device"]},
        "target_speedup": args.target_speedup, "time_budget_min": args.time_budget,
        "on_board_ms": {"unpruned_int8": board_ms[0], "host_planned_final": board_ms[1], "board_planned_final": board_ms[2]},
        "on_board_speedup": {"host_planned": board_ms[0] / board_ms[1], "board_planned": board_ms[0] / board_ms[2]},
        "on_host": {name: {"speedup": r["latency_host"]["speedup"] if r.get("latency_host") else r["speedup_vs_unpruned_int8"],
                           "final_ms": (r.get("latency_host") or {}).get("final_ms", r["latency_ms_final_int8"])} for name, r in reports.items()},
        "runs": {name: {"input_size": r["input_size"], "levers": r["levers"], "delivered": r["delivered"], "kept_channels": r["kept_channels"],
                        "map50_final_int8_test": r["map50_final_int8"], "map50_float_unpruned_test": r["map50_float_unpruned"],
                        "validation_loss_points": r["map50_loss_validation"], "floor_message": r["floor_message"], "minutes": r["seconds"] / 60,
                        "targets": r["targets"], "candidates": sorted(plans[name]["candidates"])} for name, r in reports.items()},
        "board_report_measured": reports["board"]["board"].get("measured"),
        "prediction_final": finals, "prediction_random_plans": errors,
    }  # fmt: skip
    md = [f"Planning for a board from its latency table; `{Path(args.config).name}`, {args.model}; {data['machine']}. "
          f"The board: this machine, {args.board_threads} thread(s), {'built-in kernels (no XNNPACK)' if args.board_no_xnnpack else 'XNNPACK'}. "
          f"Target {args.target_speedup}x, time budget {args.time_budget:g} min per run.", "",
          "| plan | on the board: ms | speed-up there | on this machine (host runtime): speed-up | input size | levers | test mAP@0.5 (float unpruned) | delivered |",
          "|---|---|---|---|---|---|---|---|",
          f"| unpruned int8 | {board_ms[0]:.2f} | 1.00x | 1.00x | | | | |"]  # fmt: skip
    for name, label in (("host", "planned on the host"), ("board", "planned from the board's table")):
        r, run_ = reports[name], data["runs"][name]
        md.append(f"| {label} | {data['on_board_ms'][name + '_planned_final']:.2f} | **{data['on_board_speedup'][name + '_planned']:.2f}x** | "
                  f"{data['on_host'][name]['speedup']:.2f}x | {run_['input_size']} | {', '.join(run_['levers']) or 'none'} | "
                  f"{r['map50_final_int8']:.4f} ({r['map50_float_unpruned']:.4f}) | {r['delivered']} |")  # fmt: skip
    md += ["", "Latency model, predicted against measured (random weights, int8, interleaved):", "",
           "| model | final model: predicted / measured ms | random plans: median abs. error | worst | within ±10 % |", "|---|---|---|---|---|"]
    for name, label in (("board", "fitted to the board's table"), ("host", "fitted on the host")):
        f, e = finals[name], errors[name]
        pred = f"{f['predicted_ms']:.2f} / {f['measured_ms']:.2f}" if f["predicted_ms"] is not None else f"- / {f['measured_ms']:.2f}"
        md.append(f"| {label} | {pred} | {100 * e['median_abs_error']:.1f} % | {100 * e['worst_abs_error']:.1f} % | {100 * e['within_10_percent']:.0f} % |")
    for name in ("host", "board"):
        kept = data["runs"][name]["kept_channels"] or {}
        md.append(f"\nChannels kept, {name} plan: " + (", ".join(f"{k} {v}" for k, v in kept.items()) or "(no channel plan delivered)"))
    write_results(Path(args.out), data, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
