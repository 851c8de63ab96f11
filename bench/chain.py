#!/usr/bin/env python3
"""Benchmark: the whole chain on a fine-tuned model: structured pruning -> clustering (32) -> int8 TFLite,
against the float baseline and the unpruned int8 model, in one run.

    python bench/chain.py -c bench/configs/raccoon-yolov3-tiny.json --model runs/raccoon-yolov3-tiny/best.h5 \
        --mode 3 --prune '{"similarity_ratio": 0.5, "similarity_kernels": [1, 3], "round_to": 8, "distillation": 1}' \
        --epochs 100 --cluster-epochs 10 --qat --out bench/results/chain-raccoon

--mode/--prune choose the pruning (evaluate.py -p MODE with these pruning keys); --sparse gives
slimming (--mode 4) a sparse-trained model. --qat adds quantization-aware training of the
pruned + clustered model before int8 (the cluster- and zero-preserving TFMOT scheme), beside
the post-training int8 result.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from pruning import with_pruning

from common import machine, write_results
from yolo3.errors import run_cli
from yolo3.fileio import gzip_size


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--model", required=True, help="the fine-tuned float model")
    parser.add_argument("--sparse", help="the same after sparse training (pruned by slimming)")
    parser.add_argument("--pruned", help="an already pruned and fine-tuned model (e.g. from bench/pruning.py --keep): skip pruning")
    parser.add_argument("--mode", type=int, default=4, choices=(3, 4), help="3 similarity, 4 slimming")
    parser.add_argument("--prune", default='{"slimming_percent": 0.85, "round_to": 8}', help="pruning keys (JSON)")
    parser.add_argument("--clusters", type=int, default=32)
    parser.add_argument("--per-channel", action="store_true")
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs after pruning")
    parser.add_argument("--cluster-epochs", type=int, help="fine-tuning epochs after clustering (default: --epochs)")
    parser.add_argument("--qat", action="store_true", help="also quantization-aware training before int8")
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)


    from compression.cluster.methods import run_clustering
    from compression.prune.methods import run_pruning
    from compression.quantize.convert import convert_config
    from compression.quantize.tflite_export import calibration_images
    from compression.steps import Int8Files, int8_keep_better
    from yolo3.config import load_config, with_overrides
    from yolo3.darknet import write_weights
    from yolo3.datasets import read_dataset
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
        convert_config(config, args.model, "int8", samples=args.samples, out=str(int8), force=True)
        r = evaluate_config(config, str(int8), progress=False, latency_runs=50)
        data["unpruned_int8"] = {"mAP50": r["mAP50"], "latency_ms": r["latency"]["median_ms"], "bytes": int8.stat().st_size,
                                 "gzip_bytes": gzip_size(int8.read_bytes())}  # fmt: skip
        if args.pruned:
            pruned = Path(args.pruned)
            r = evaluate_config(config, str(pruned), progress=False, latency_runs=0)
            data["pruned"] = {"mAP50": r["mAP50"], "params": r["params"], "macs": r["macs"], "path": str(pruned)}
        else:
            prune = json.loads(args.prune)
            cfg = with_pruning(config, **{"finetune_epochs": args.epochs, **prune})
            pruned = runs / "pruned.h5"
            p = run_pruning(cfg, args.mode, args.sparse or args.model, str(pruned), None, True, progress=False)
            final = p.get("finetuned", p["after"])
            data["pruned"] = {"mAP50": final["mAP50"], "params": final["params"], "macs": final["macs"]}
        cluster_epochs = args.epochs if args.cluster_epochs is None else args.cluster_epochs
        ccfg = with_overrides(config, {"clustering.finetune_epochs": cluster_epochs})
        clustered = runs / "pruned-clustered.h5"
        c = run_clustering(ccfg, str(pruned), str(clustered), args.clusters, args.per_channel, None, True, progress=False)
        data["clustered"] = {"mAP50_after": c["after"]["mAP50"], "mAP50_finetuned": c["finetuned"]["mAP50"] if "finetuned" in c else None}
        # post-training int8 and (with --qat) QAT; the better on the validation split is kept (one shared step)
        files = Int8Files.beside(runs, "pruned-clustered-")
        images = calibration_images(read_dataset(config.dataset("train"), config.labels).records, args.samples)
        kept = int8_keep_better(config, clustered, config.model.input_size, images, files, qat_epochs=args.qat_epochs if args.qat else 0,
                                score=lambda p: evaluate_config(config, str(p), progress=False, latency_runs=0, split="valid")["mAP50"],
                                progress=False)  # fmt: skip
        data["int8_choice"] = {"chosen": kept["chosen"], "valid_mAP50": {k: v["valid"] for k, v in kept["results"].items()}}
        for key, path in (("final", files.ptq), ("final_qat", files.qat)):
            if key == "final_qat" and "qat" not in kept["results"]:
                continue
            r = evaluate_config(config, str(path), progress=False, latency_runs=50)
            blob = path.read_bytes()
            data[key] = {"mAP50": r["mAP50"], "latency_ms": r["latency"]["median_ms"], "bytes": len(blob), "gzip_bytes": gzip_size(blob), "path": str(path)}
        if "qat" in kept["results"]:
            data["final_qat"]["scheme"] = kept["results"]["qat"]["scheme"]
    f, u = data["float"], data["unpruned_int8"]
    z = data["final_qat"] if data["int8_choice"]["chosen"] == "qat" else data["final"]
    data["summary"] = {
        "smaller_than_float_weights": f["weights_bytes"] / z["gzip_bytes"],
        "faster_than_unpruned_int8": u["latency_ms"] / z["latency_ms"],
        "faster_than_float_keras": f["latency_ms"] / z["latency_ms"],
        "mAP50_points_vs_float": 100 * (z["mAP50"] - f["mAP50"]),
    }
    s = data["summary"]
    md = [
        (f"Chain on `{Path(args.config).name}`: `{args.pruned}` (pruned and fine-tuned by bench/pruning.py) " if args.pruned else
         f"Chain on `{Path(args.config).name}`: `-p {args.mode}` with {args.prune} ({'sparse-trained' if args.sparse else 'plain fine-tuned'} model) ")
        + (f"+ {args.epochs} epochs " if not args.pruned else "")
        + f"-> {args.clusters} clusters{' per channel' if args.per_channel else ''} + {cluster_epochs} epochs -> int8"
        f"{f' (post-training, and after {args.qat_epochs} epochs of QAT)' if args.qat else ''}; {data['machine']}",
        "",
        "| model | mAP@0.5 | size | gzip | latency |",
        "|---|---|---|---|---|",
        f"| float Keras (`.weights` size) | {f['mAP50']:.4f} | {f['weights_bytes'] / 1e6:.2f} MB | - | {f['latency_ms']:.1f} ms |",
        f"| unpruned int8 TFLite | {u['mAP50']:.4f} | {u['bytes'] / 1e6:.2f} MB | {u['gzip_bytes'] / 1e6:.2f} MB | {u['latency_ms']:.1f} ms |",
        f"| pruned (float, after fine-tuning) | {data['pruned']['mAP50']:.4f} | {data['pruned']['params']:,} params | | |",
        f"| pruned + clustered (float) | {data['clustered']['mAP50_finetuned'] or data['clustered']['mAP50_after']:.4f} | | | |",
        f"| pruned + clustered + int8 (post-training) | {data['final']['mAP50']:.4f} | {data['final']['bytes'] / 1e6:.2f} MB | {data['final']['gzip_bytes'] / 1e6:.3f} MB | {data['final']['latency_ms']:.1f} ms |",
    ]
    if "final_qat" in data:
        q = data["final_qat"]
        md.append(f"| pruned + clustered + QAT ({q['scheme']}) int8 | {q['mAP50']:.4f} | {q['bytes'] / 1e6:.2f} MB | {q['gzip_bytes'] / 1e6:.3f} MB | {q['latency_ms']:.1f} ms |")
    md += [
        "",
        f"Against the int8 row that scored better on the validation split ({data['int8_choice']['chosen']}):",
        f"{s['smaller_than_float_weights']:.1f}x smaller than the float `.weights`, {s['faster_than_unpruned_int8']:.2f}x faster than the "
        f"unpruned int8 model, {s['mAP50_points_vs_float']:+.2f} points mAP@0.5 against the float model.",
    ]
    write_results(Path(args.out), data, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
