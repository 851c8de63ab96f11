#!/usr/bin/env python3
"""The headline table of several compress runs (bench/compress.py results), against the issue's targets.

    python bench/compress_summary.py bench/results/compress-bccd.json bench/results/compress-raccoon.json \
        bench/results/compress-bccd-size.json --out bench/results/compress-summary

One row per run: the target, the speed-up against the unpruned int8 model (measured, interleaved),
mAP@0.5 of the unpruned float model and of the final int8 model on the test split, how much
smaller than the float .weights the gzipped final .tflite is, and the wall time — each with
whether it meets 3x / 1 point / 40x.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import write_results
from yolo3.errors import UserError, run_cli


def machine_line(rows: list[dict]) -> str:
    """The machine the runs were made on, or each run's when they differ (latencies compare only within a row)."""
    machines = list(dict.fromkeys(r["machine"] for r in rows))
    if len(machines) == 1:
        return f"Machine: {machines[0]}; LiteRT, 2 threads."
    return ("Machines (latencies compare within a row only): " + "; ".join(
        f"{', '.join(r['run'] for r in rows if r['machine'] == m)}: {m}" for m in machines) + "; LiteRT, 2 threads.")  # fmt: skip


def row(path: Path) -> tuple[dict, str]:
    try:
        r = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"not a compress report: {err}", path) from None
    name = path.stem.removeprefix("compress-")
    text = " and ".join(t["text"] for t in r["targets"]) if r.get("targets") else r["target"]["text"]
    points = r["map50_points_vs_float"]
    cells = [
        name, text, f"{r['input_size']}",
        f"{r['speedup_vs_unpruned_int8']:.2f}x {'✓' if r['speedup_vs_unpruned_int8'] >= 3 else '✗'}",
        f"{r['map50_float_unpruned']:.3f} → {r['map50_final_int8']:.3f} ({points:+.1f}) {'✓' if points >= -1 else '✗'}",
        f"{r['size_ratio_vs_float_weights']:.1f}x ({r['gzip_bytes_final_int8'] / 1e6:.2f} MB) {'✓' if r['size_ratio_vs_float_weights'] >= 40 else '✗'}",
        f"{r['latency_ms_final_int8']:.2f} / {r['latency_ms_unpruned_int8']:.2f} ms"
        + (f" (predicted {r['predicted_latency_ms_final_int8']:.2f})" if r.get("predicted_latency_ms_final_int8") is not None else ""),
        f"{r.get('delivered', 'plan')}; {r['map50_loss_validation']:.2f}"
        + (f" (≤ {r['map50_loss_bound']:.2f} at {100 * r['floor_confidence']:.0f} %)" if r.get("floor_confidence", 0.5) > 0.5 else "")
        + f" (floor {r['max_loss']:g})" if "max_loss" in r else "-",
        ", ".join(r.get("levers") or []) or "none",
        f"{r['seconds'] / 60:.0f} min" + (f" (budget {r['time_budget_min']:g})" if r.get("time_budget_min") else ""),
    ]  # fmt: skip
    return {"run": name, "file": str(path), **{k: r[k] for k in ("target", "input_size", "speedup_vs_unpruned_int8", "map50_float_unpruned",
            "map50_final_int8", "map50_points_vs_float", "size_ratio_vs_float_weights", "gzip_bytes_final_int8", "latency_ms_final_int8",
            "latency_ms_unpruned_int8", "predicted_latency_ms_final_int8", "seconds")},
            **{k: r.get(k) for k in ("max_loss", "map50_loss_validation", "map50_loss_bound", "floor_confidence", "validation_images",
                                "map50_points_vs_float_interval", "levers", "delivered", "time_budget_min", "targets")},
            "machine": r.get("machine")}, "| " + " | ".join(cells) + " |"  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", help="bench/results/compress-*.json")
    parser.add_argument("--out", required=True, help="output path without suffix (.json and .md are written)")
    args = parser.parse_args(argv)
    rows, lines = [], []
    for path in args.reports:
        data, line = row(Path(path))
        rows.append(data)
        lines.append(line)
    md = [
        "| run | target | input | speed-up vs unpruned int8 (≥ 3x) | mAP@0.5 float → final int8, test split (≥ −1 point) | smaller than float .weights (≥ 40x) "
        "| int8 latency final / unpruned | delivered; validation loss, points | levers | wall time |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *lines,
        "",
        machine_line(rows),
    ]
    write_results(Path(args.out), {"command": "python bench/compress_summary.py " + " ".join(argv or sys.argv[1:]), "rows": rows}, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
