#!/usr/bin/env python3
"""Benchmark: the whole chain on a fine-tuned model: structured pruning -> clustering (32) -> int8 TFLite,
against the float baseline and the unpruned int8 model, in one run.

    python bench/chain.py -c bench/configs/raccoon-yolov3-tiny.json --model runs/raccoon-yolov3-tiny/best.h5 \
        --sparse runs/raccoon-sparse/best.h5 --slimming 0.85 --epochs 10 --out bench/results/chain-raccoon
"""

from __future__ import annotations

import argparse
import gzip
import sys
import tempfile
from pathlib import Path

from pruning import with_pruning

from common import machine, write_results
from yolo3.errors import run_cli


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--model", required=True, help="the fine-tuned float model")
    parser.add_argument("--sparse", help="the same after sparse training (pruned by slimming)")
    parser.add_argument("--slimming", type=float, default=0.85, help="slimming percent")
    parser.add_argument("--clusters", type=int, default=32)
    parser.add_argument("--per-channel", action="store_true")
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs after pruning and after clustering")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import dataclasses

    from compression.cluster_run import run_clustering
    from compression.convert import convert_config
    from compression.prune_run import run_pruning
    from yolo3.config import Section, load_config
    from yolo3.darknet import write_weights
    from yolo3.evaluation import evaluate_config, load_for_config
    from yolo3.keras_model import get_darknet_weights

    config = load_config(args.config)
    runs = Path(config.train.run_dir).parent / "chain"
    runs.mkdir(parents=True, exist_ok=True)
    data = {"command": "python bench/chain.py " + " ".join(argv or sys.argv[1:]), "machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = load_for_config(config, args.model)
        weights_file = tmp / "float.weights"
        write_weights(weights_file, base.spec, get_darknet_weights(base.model, base.spec))
        float_eval = evaluate_config(config, args.model, progress=False, latency_runs=30)
        data["float"] = {"mAP50": float_eval["mAP50"], "weights_bytes": weights_file.stat().st_size, "latency_ms": float_eval["latency"]["median_ms"]}
        int8 = tmp / "unpruned-int8.tflite"
        convert_config(config, args.model, "int8", args.samples, str(int8), True)
        r = evaluate_config(config, str(int8), progress=False, latency_runs=50)
        data["unpruned_int8"] = {"mAP50": r["mAP50"], "latency_ms": r["latency"]["median_ms"], "bytes": int8.stat().st_size,
                                 "gzip_bytes": len(gzip.compress(int8.read_bytes(), 9))}  # fmt: skip
        cfg = with_pruning(config, finetune_epochs=args.epochs, slimming_percent=args.slimming, round_to=8)
        pruned = runs / "pruned.h5"
        p = run_pruning(cfg, 4, args.sparse or args.model, str(pruned), None, True, progress=False)
        data["pruned"] = {"mAP50": p["finetuned"]["mAP50"] if "finetuned" in p else p["pruned"]["mAP50"],
                          "params": p.get("finetuned", p["pruned"])["params"], "macs": p.get("finetuned", p["pruned"])["macs"]}  # fmt: skip
        ccfg = dataclasses.replace(config, clustering=Section({**config.clustering.values, "finetune_epochs": args.epochs}))
        clustered = runs / "pruned-clustered.h5"
        c = run_clustering(ccfg, str(pruned), str(clustered), args.clusters, args.per_channel, None, True, progress=False)
        data["clustered"] = {"mAP50_after": c["mAP50_after"], "mAP50_finetuned": c.get("mAP50_finetuned")}
        final = runs / "pruned-clustered-int8.tflite"
        convert_config(config, str(clustered), "int8", args.samples, str(final), True)
        r = evaluate_config(config, str(final), progress=False, latency_runs=50)
        blob = final.read_bytes()
        data["final"] = {"mAP50": r["mAP50"], "latency_ms": r["latency"]["median_ms"], "bytes": len(blob), "gzip_bytes": len(gzip.compress(blob, 9)), "path": str(final)}
    f, u, z = data["float"], data["unpruned_int8"], data["final"]
    data["summary"] = {
        "smaller_than_float_weights": f["weights_bytes"] / z["gzip_bytes"],
        "faster_than_unpruned_int8": u["latency_ms"] / z["latency_ms"],
        "faster_than_float_keras": f["latency_ms"] / z["latency_ms"],
        "mAP50_points_vs_float": 100 * (z["mAP50"] - f["mAP50"]),
    }
    s = data["summary"]
    md = [
        f"Chain on `{Path(args.config).name}`: slimming {args.slimming:.0%} ({'sparse-trained' if args.sparse else 'plain fine-tuned'} model) + {args.epochs} epochs -> "
        f"{args.clusters} clusters{' per channel' if args.per_channel else ''} + {args.epochs} epochs -> int8; {data['machine']}",
        "",
        "| model | mAP@0.5 | size | gzip | latency |",
        "|---|---|---|---|---|",
        f"| float Keras (`.weights` size) | {f['mAP50']:.4f} | {f['weights_bytes'] / 1e6:.2f} MB | - | {f['latency_ms']:.1f} ms |",
        f"| unpruned int8 TFLite | {u['mAP50']:.4f} | {u['bytes'] / 1e6:.2f} MB | {u['gzip_bytes'] / 1e6:.2f} MB | {u['latency_ms']:.1f} ms |",
        f"| pruned (float, after fine-tuning) | {data['pruned']['mAP50']:.4f} | {data['pruned']['params']:,} params | | |",
        f"| pruned + clustered (float) | {data['clustered']['mAP50_finetuned'] or data['clustered']['mAP50_after']:.4f} | | | |",
        f"| **pruned + clustered + int8** | **{z['mAP50']:.4f}** | {z['bytes'] / 1e6:.2f} MB | **{z['gzip_bytes'] / 1e6:.3f} MB** | **{z['latency_ms']:.1f} ms** |",
        "",
        f"{s['smaller_than_float_weights']:.1f}x smaller than the float `.weights`, {s['faster_than_unpruned_int8']:.2f}x faster than the "
        f"unpruned int8 model, {s['mAP50_points_vs_float']:+.2f} points mAP@0.5 against the float model.",
    ]
    write_results(Path(args.out), data, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
