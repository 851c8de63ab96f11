#!/usr/bin/env python3
"""Benchmark: our 1-D k-means against scikit-learn's KMeans on every convolution kernel of a full YOLOv3.

    python bench/clustering_speed.py --out bench/results/clustering-speed [--tiny-weights PATH --tiny-cfg PATH]

yolov3 at 80 classes has 75 kernels, 61.9 M weights. No trained full-YOLOv3 weights ship with
the project, so the kernels are realistically initialised: Laplace-distributed (trained conv
weights are heavy-tailed) with He scaling per layer, seed 0. With --tiny-weights the trained
official YOLOv3-tiny kernels are measured too. Both methods: k = 32, k-means++ seeding, one
initialisation, seed 0; scikit-learn: KMeans(n_clusters=32, n_init=1, random_state=0).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from common import machine, write_results
from yolo3.errors import run_cli


def kernels_yolov3(seed: int = 0) -> list[tuple[str, np.ndarray]]:
    from yolo3.darknet import conv_shapes
    from yolo3.zoo import build_spec

    rng = np.random.default_rng(seed)
    out = []
    for i, (shape, _) in conv_shapes(build_spec("yolov3", 80, 416)).items():
        fan_in = shape[0] * shape[1] * shape[2]
        scale = np.sqrt(2.0 / fan_in) / np.sqrt(2.0)  # Laplace b giving the He standard deviation
        out.append((f"conv_{i}", rng.laplace(0, scale, shape).astype(np.float32)))
    return out


def kernels_darknet(cfg: str, weights: str) -> list[tuple[str, np.ndarray]]:
    from yolo3.darknet import read_weights
    from yolo3.zoo import resolve_spec

    spec = resolve_spec(cfg)
    return [(f"conv_{i}", cw.kernel) for i, cw in read_weights(weights, spec).convs.items()]


def compare(kernels, k: int, use_sklearn: bool = True) -> dict:
    from sklearn.cluster import KMeans

    from compression.cluster.kmeans1d import kmeans_1d

    rows = []
    for name, kernel in kernels:
        x = kernel.reshape(-1)
        t0 = time.perf_counter()
        ours = kmeans_1d(x, k, seed=0)
        t_ours = time.perf_counter() - t0
        row = {"layer": name, "weights": int(x.size), "ours_seconds": t_ours, "ours_wcss": ours.inertia}
        if use_sklearn:
            t0 = time.perf_counter()
            sk = KMeans(n_clusters=k, n_init=1, random_state=0).fit(x.reshape(-1, 1).astype(np.float64))
            row.update(sklearn_seconds=time.perf_counter() - t0, sklearn_wcss=float(sk.inertia_))
        rows.append(row)
        print(f"{name}: {x.size:,} weights, ours {t_ours:.2f} s" + (f", sklearn {row['sklearn_seconds']:.2f} s" if use_sklearn else ""), flush=True)
    total = {
        "layers": len(rows),
        "weights": sum(r["weights"] for r in rows),
        "ours_seconds": sum(r["ours_seconds"] for r in rows),
        "ours_wcss": sum(r["ours_wcss"] for r in rows),
    }
    if use_sklearn:
        total["sklearn_seconds"] = sum(r["sklearn_seconds"] for r in rows)
        total["sklearn_wcss"] = sum(r["sklearn_wcss"] for r in rows)
        total["speedup"] = total["sklearn_seconds"] / total["ours_seconds"]
        total["wcss_ratio"] = total["ours_wcss"] / total["sklearn_wcss"]
    return {"rows": rows, "total": total}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--clusters", type=int, default=32)
    parser.add_argument("--tiny-cfg")
    parser.add_argument("--tiny-weights")
    args = parser.parse_args(argv)
    data = {"command": "python bench/clustering_speed.py " + " ".join(argv or sys.argv[1:]), "machine": machine(), "clusters": args.clusters}
    data["yolov3"] = compare(kernels_yolov3(), args.clusters)
    if args.tiny_weights:
        data["yolov3_tiny_trained"] = compare(kernels_darknet(args.tiny_cfg, args.tiny_weights), args.clusters)
    md = [
        f"k-means into {args.clusters} per kernel, every convolution, one run on {data['machine']}",
        "",
        "| kernels | layers | weights | ours (s) | scikit-learn (s) | speed-up | WCSS ours / sklearn |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, label in (("yolov3", "yolov3 (80 cl.), Laplace/He init"), ("yolov3_tiny_trained", "yolov3-tiny, official COCO weights")):
        if key in data:
            t = data[key]["total"]
            md.append(
                f"| {label} | {t['layers']} | {t['weights']:,} | {t['ours_seconds']:.1f} | {t['sklearn_seconds']:.1f} | "
                f"{t['speedup']:.1f}x | {t['wcss_ratio']:.4f} |"
            )
    write_results(Path(args.out), data, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
