#!/usr/bin/env python3
"""Benchmark: which of a folder of Darknet cfgs load, their parameters and BFLOPs, and the Keras model against OpenCV DNN.

    python bench/suite_cfgs.py --cfg-dir SUITE/cfg --opencv yolov3tiny-efficientnetB0.cfg --opencv-size 128 \\
        --out bench/results/suite-cfgs

``--cfg-dir`` is, for instance, the ``cfg/`` folder of the multi-backbone
suite's repository (SpursLipu/YOLOv3v4-ModelCompression-MultidatasetTraining-Multibackbone).
Every ``*.cfg`` under it is read as ``yolo3 info`` reads it: loaded (layers,
parameters, BFLOPs at its own size) or refused (the one-line reason). For the
cfgs named by ``--opencv``, random weights are written as a ``.weights`` file and
OpenCV DNN's raw head outputs are compared with the Keras model's at
``--opencv-size`` (the largest absolute difference over all heads).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import machine, write_results
from yolo3.errors import run_cli


def opencv_difference(spec, size: int, folder: Path) -> tuple[float, float]:
    """(largest |Keras - OpenCV|, largest std of a head) over the raw head outputs of ``spec`` at ``size`` with random weights."""
    import cv2
    import numpy as np

    from yolo3.darknet import ConvWeights, write_weights
    from yolo3.keras_model import build_model, get_darknet_weights, set_darknet_weights
    from yolo3.spec import with_size, write_cfg

    spec = with_size(spec, size)
    model = build_model(spec)
    weights = get_darknet_weights(model, spec)  # Keras' random kernels; BN statistics and biases drawn so that activations stay alive
    rng = np.random.default_rng(0)
    for i, cw in weights.convs.items():
        c = cw.kernel.shape[-1]
        bn = None if cw.bn is None else tuple(a.astype(np.float32) for a in (rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c),
                                                                             rng.normal(0, 0.1, c), rng.uniform(0.5, 1.5, c)))  # fmt: skip
        bias = None if cw.bias is None else rng.normal(0, 0.1, c).astype(np.float32)
        weights.convs[i] = ConvWeights(cw.kernel, bias, bn)
    set_darknet_weights(model, spec, weights)
    write_cfg(spec, folder / "net.cfg")
    write_weights(folder / "net.weights", spec, weights)
    image = np.random.RandomState(0).rand(size, size, 3).astype(np.float32)
    ours = model(image[None])
    ours = [np.asarray(o)[0] for o in (ours if isinstance(ours, list) else [ours])]
    net = cv2.dnn.readNetFromDarknet(str(folder / "net.cfg"), str(folder / "net.weights"))
    net.setInput(cv2.dnn.blobFromImage(image, 1.0, (size, size), swapRB=False, crop=False))
    theirs = net.forward([f"conv_{i - 1}" for i in spec.yolo_indices()])
    spread = max(float(np.std(a)) for a in ours)
    return max(float(np.abs(a - np.transpose(b[0], (1, 2, 0))).max()) for a, b in zip(ours, theirs)), spread


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg-dir", required=True)
    parser.add_argument("--opencv", default="", help="cfg file names (comma-separated) to compare with OpenCV DNN")
    parser.add_argument("--opencv-size", type=int, default=128)
    parser.add_argument("--out", required=True, help="output path without suffix (.json and .md are written)")
    args = parser.parse_args(argv)

    from yolo3.errors import UserError
    from yolo3.spec import analyse, read_cfg, totals

    root = Path(args.cfg_dir)
    if not root.is_dir() or not any(root.rglob("*.cfg")):
        raise UserError(f"--cfg-dir {root}: no folder with .cfg files there")
    compare = {n for n in args.opencv.split(",") if n}
    missing = compare - {p.name for p in root.rglob("*.cfg")}
    if missing:
        raise UserError(f"--opencv: {', '.join(sorted(missing))} not among the .cfg files of {root}")
    rows = []
    for path in sorted(root.rglob("*.cfg")):
        row = {"cfg": str(path.relative_to(root))}
        try:
            spec = read_cfg(path)
        except UserError as err:
            rows.append({**row, "refused": str(err).replace(str(path), path.name)})
            continue
        t = totals(analyse(spec))
        row.update(layers=len(spec.layers), params=t.params, trainable_params=t.trainable_params, bflops=2 * t.macs / 1e9,
                   size=spec.width)  # fmt: skip
        if path.name in compare:
            with tempfile.TemporaryDirectory() as tmp:
                row["opencv_max_abs_difference"], row["output_std"] = opencv_difference(spec, args.opencv_size, Path(tmp))
            row["opencv_size"] = args.opencv_size
        rows.append(row)
    data = {"command": "python bench/suite_cfgs.py " + " ".join(argv or sys.argv[1:]), "machine": machine(), "cfgs": rows}
    lines = [f"Darknet cfgs under `{root.name}/` read by this tool; {data['machine']}", "",
             "| cfg | layers | trainable parameters | BFLOPs (own size) | Keras vs OpenCV DNN, random weights |", "|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['cfg']} | refused: {r['refused']} | | | |")
        else:
            cv = f"{r['opencv_max_abs_difference']:.1e} at {r['opencv_size']} px (outputs' std {r['output_std']:.2f})" if "opencv_size" in r else ""
            lines.append(f"| {r['cfg']} | {r['layers']} | {r['trainable_params']:,} | {r['bflops']:.2f} at {r['size']} | {cv} |")
    loaded = sum("refused" not in r for r in rows)
    lines += ["", f"{loaded} of {len(rows)} cfgs load."]
    write_results(Path(args.out), data, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
