#!/usr/bin/env python3
"""Benchmark: every pruning method on a fine-tuned model: mAP right after pruning and after a short
fine-tune, parameters, MACs, and TFLite latency (float32, 2 threads, median) against the unpruned model,
all in one run. Also times the pruning itself on a full yolov3 at 416.

    python bench/pruning.py -c bench/configs/raccoon-yolov3-tiny.json --model runs/raccoon-yolov3-tiny/best.h5 \
        --sparse runs/raccoon-sparse/best.h5 --epochs 10 --out bench/results/pruning-raccoon

--sparse is the same model after sparse training (finetune.py --sparsity-l1), which network
slimming prunes; without it slimming prunes the plain model.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import machine, write_results
from compression.prune.presets import PRESETS
from yolo3.errors import run_cli

# The product's preset (compress.py --preset late-heavy): early layers lightly, the wide late layers hard.
LATE_HEAVY = PRESETS["late-heavy"].layer_ratios

SETTINGS = [
    # (label, mode, pruning overrides, use the sparse-trained model)
    ("magnitude 50 % (TFMOT)", 2, {"magnitude_sparsity": 0.5}, False),
    ("similarity 1x1, 30 %", 3, {"similarity_ratio": 0.3}, False),
    ("similarity 1x1+3x3, 50 %", 3, {"similarity_ratio": 0.5, "similarity_kernels": [1, 3]}, False),
    ("slimming 50 %", 4, {"slimming_percent": 0.5, "round_to": 8}, True),
    ("slimming 70 %", 4, {"slimming_percent": 0.7, "round_to": 8}, True),
    ("slimming 85 %", 4, {"slimming_percent": 0.85, "round_to": 8}, True),
    ("slimming 70 %, no sparse training", 4, {"slimming_percent": 0.7, "round_to": 8}, False),
    ("similarity 1x1+3x3, 50 %, distillation, 100 epochs", 3,
     {"similarity_ratio": 0.5, "similarity_kernels": [1, 3], "round_to": 8, "distillation": 1.0, "finetune_epochs": 100}, False),
    ("similarity 1x1+3x3, 50 %, 5 rounds of 12 epochs, distillation x3, 60 epochs", 3,
     {"similarity_ratio": 0.5, "similarity_kernels": [1, 3], "round_to": 8, "rounds": 5, "round_epochs": 12, "distillation": 3.0,
      "finetune_epochs": 60}, False),
    ("similarity per layer: early layers 0-25 %, late 50-88 % (LATE_HEAVY), distillation, 60 epochs", 3,
     {"similarity_ratio": 0.5, "similarity_kernels": [1, 3], "round_to": 8, "similarity_layer_ratios": LATE_HEAVY, "distillation": 1.0,
      "finetune_epochs": 60}, False),
]


def with_pruning(config, **overrides):
    """``config`` with pruning keys set, validated like the file (yolo3.config.with_overrides)."""
    from yolo3.config import with_overrides

    return with_overrides(config, {f"pruning.{k}": v for k, v in overrides.items()})


def tflite_latency(config, model_path: Path, folder: Path) -> dict:
    from compression.quantize.convert import convert_config
    from yolo3.evaluation import measure_model_latency
    from yolo3.lite import TFLitePredictor

    out = folder / f"{model_path.stem}-float32.tflite"
    report = convert_config(config, str(model_path), "float32", out=str(out), force=True)
    latency = measure_model_latency(TFLitePredictor(out, threads=2), runs=30)
    return {"median_ms": latency["median_ms"], "bytes": report["bytes"]}


def time_full_yolov3() -> dict:
    """Seconds to plan and perform each structured pruning on yolov3 (80 classes, 416)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_darknet import random_weights

    from compression.prune.pruning import layer_prune, similarity_masks, slimming_masks
    from compression.prune.surgery import prune_channels
    from yolo3.zoo import build_spec

    spec = build_spec("yolov3", 80, 416)
    weights = random_weights(spec, seed=0)
    out = {}
    t0 = time.perf_counter()
    masks = slimming_masks(spec, weights, percent=0.5, min_keep=8, round_to=8)
    prune_channels(spec, weights, masks)
    out["slimming 50 %"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    plan = similarity_masks(spec, weights, ratio=0.3, kernel_sizes=(1,))
    prune_channels(spec, weights, plan.masks, plan.merges)
    out["similarity 1x1, 30 %"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    plan = similarity_masks(spec, weights, ratio=0.3, kernel_sizes=(1, 3))
    prune_channels(spec, weights, plan.masks, plan.merges)
    out["similarity 1x1+3x3, 30 %"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    layer_prune(spec, weights, 8)
    out["layer pruning, 8 blocks"] = time.perf_counter() - t0
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--model", required=True, help="the fine-tuned model to prune")
    parser.add_argument("--sparse", help="the same model after sparse training, for slimming")
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs after pruning")
    parser.add_argument("--only", help="comma-separated setting numbers (1-based) to run")
    parser.add_argument("--set", default="{}", help='JSON of pruning keys applied to every chosen setting, e.g. \'{"finetune_learning_rate": 3e-4}\'')
    parser.add_argument("--merge", help="an earlier result JSON whose settings not run now are kept in the table")
    parser.add_argument("--keep", help="folder to keep the pruned models in (NAME-setting-N.h5), e.g. for bench/chain.py --pruned")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from compression.prune.methods import run_pruning
    from yolo3.config import load_config
    from yolo3.evaluation import evaluate_config

    config = load_config(args.config)
    chosen = [SETTINGS[int(k) - 1] for k in args.only.split(",")] if args.only else SETTINGS
    data = {"command": "python bench/pruning.py " + " ".join(argv or sys.argv[1:]), "machine": machine(), "epochs": args.epochs}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = evaluate_config(config, args.model, progress=False, latency_runs=0)
        base_lat = tflite_latency(config, Path(args.model), tmp)
        data["baseline"] = {"mAP50": base["mAP50"], "params": base["params"], "macs": base["macs"], "tflite": base_lat}
        if args.sparse:
            sparse = evaluate_config(config, args.sparse, progress=False, latency_runs=0)
            data["sparse_trained"] = {"mAP50": sparse["mAP50"]}
        rows = []
        for setting in chosen:
            label, mode, overrides, use_sparse = setting
            number = SETTINGS.index(setting) + 1
            source = args.sparse if (use_sparse and args.sparse) else args.model
            extra = json.loads(args.set)
            if extra:
                label = f"{label} with {args.set}"
            cfg = with_pruning(config, **{"finetune_epochs": args.epochs, **overrides, **extra})
            out = (Path(args.keep) if args.keep else tmp) / f"{Path(args.config).stem}-setting-{number}.h5"
            t0 = time.perf_counter()
            report = run_pruning(cfg, mode, source, str(out), None, True, progress=False)
            seconds = time.perf_counter() - t0
            lat = tflite_latency(config, out, tmp)
            final = report.get("finetuned", report.get("after"))
            rows.append({
                "setting": label, "mode": mode, "epochs": cfg.pruning.finetune_epochs, "source": source, "pruned_mAP50": report.get("after", {}).get("mAP50"),
                "finetuned_mAP50": final["mAP50"], "params": final["params"], "macs": final["macs"],
                "tflite": lat, "seconds": seconds, "sparsity": report["details"].get("sparsity", {}).get("overall"),
                "gzip_bytes": report["size_after"]["gzip_bytes"], "rounds": report["details"].get("rounds", []),
            })  # fmt: skip
            print(rows[-1], flush=True)
        if args.merge:
            earlier = json.loads(Path(args.merge).read_text())
            for r in earlier.get("settings", []):  # speed-ups stay relative to the baseline of their own run
                r.setdefault("baseline_ms", earlier["baseline"]["tflite"]["median_ms"])
            done = {r["setting"] for r in rows}
            rows = [r for r in earlier.get("settings", []) if r["setting"] not in done] + rows
            order = [label for label, *_ in SETTINGS]
            rows.sort(key=lambda r: order.index(r["setting"]) if r["setting"] in order else len(order))
            data["merged_from"] = args.merge
            data["notes"] = earlier.get("notes", [])  # remarks on earlier rows (re-timings, which model slimming pruned)
            data["earlier_epochs"] = earlier.get("epochs")
        data["settings"] = rows
    data["pruning_seconds_full_yolov3_416"] = time_full_yolov3()
    write_results(Path(args.out), data, render_markdown(data, Path(args.config).name, Path(args.model).name, args.epochs))
    return 0


def render_markdown(data: dict, config_name: str, model_name: str, epochs: int) -> str:
    """The results table, then ``data["notes"]``; a row whose ``tflite`` is null (its timing was unusable) shows no latency."""
    b = data["baseline"]
    for r in data["settings"]:
        r.setdefault("epochs", epochs)
        r.setdefault("baseline_ms", b["tflite"]["median_ms"])
    md = [
        f"Pruning `{config_name}` ({model_name}), then fine-tuning (epochs per row); "
        f"TFLite float32, 2 threads, median of 30; {data['machine']}",
        "",
        "| setting | epochs | mAP@0.5 pruned | mAP@0.5 fine-tuned | Δ mAP (points) | params | MACs | MACs removed | latency | speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| unpruned | - | {b['mAP50']:.4f} | {b['mAP50']:.4f} | 0 | {b['params']:,} | {b['macs'] / 1e9:.2f} G | 0 % | {b['tflite']['median_ms']:.1f} ms | 1.00x |",
    ]
    for r in data["settings"]:
        pm = "-" if r["pruned_mAP50"] is None else f"{r['pruned_mAP50']:.4f}"
        extra = f" (sparsity {r['sparsity']:.0%})" if r["sparsity"] is not None else ""
        latency = "- | -" if r["tflite"] is None else f"{r['tflite']['median_ms']:.1f} ms | {r['baseline_ms'] / r['tflite']['median_ms']:.2f}x"
        md.append(
            f"| {r['setting']}{extra} | {r['epochs']} | {pm} | {r['finetuned_mAP50']:.4f} | {100 * (r['finetuned_mAP50'] - b['mAP50']):+.2f} | "
            f"{r['params']:,} | {r['macs'] / 1e9:.2f} G | {1 - r['macs'] / b['macs']:.0%} | {latency} |"
        )
    baselines = sorted({round(r["baseline_ms"], 1) for r in data["settings"] if r["tflite"] is not None})
    if len(baselines) > 1:
        md.append(
            "\nRows from an earlier run (`--merge`) give their speed-up against the unpruned model timed in that run "
            f"(unpruned latencies: {', '.join(f'{v} ms' for v in baselines)})."
        )
    if "sparse_trained" in data:
        md.append(f"\nSlimming prunes the sparse-trained model (mAP@0.5 {data['sparse_trained']['mAP50']:.4f} before pruning).")
    md.append(
        "\nTime to prune a full yolov3 (80 classes, 416): "
        + ", ".join(f"{k} {v:.1f} s" for k, v in data["pruning_seconds_full_yolov3_416"].items())
    )
    for r in data["settings"]:
        if r.get("latency_note"):
            md.append(f"\n{r['setting']}: {r['latency_note']}")
    md.extend(f"\n{note}" for note in data.get("notes", []))
    return "\n".join(md)


if __name__ == "__main__":
    sys.exit(run_cli(main))
