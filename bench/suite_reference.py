"""The multi-backbone suite's own PyTorch code as the reference for its cfgs: parameter counts and raw head outputs.

For each cfg: this tool writes random weights as a Darknet ``.weights`` file; the suite's ``models.Darknet`` (its
own code, from a checkout you give) loads them with its ``load_darknet_weights``, counts its parameters and runs a
fixed input in eval mode; the tool's Keras model runs the same input. Reported: both parameter counts, and the
largest difference of the raw head outputs (what the YOLO layers receive) relative to their spread.

The suite needs PyTorch, which this project does not: give the Python of an environment that has it, plus numpy
and OpenCV (the suite's utils import them; torchvision is not needed and is stubbed). Example::

    git -C <suite mirror> archive HEAD models.py utils cfg | tar -x -C /tmp/suite
    python bench/suite_reference.py --suite /tmp/suite --torch-python /tmp/torchenv/bin/python \
        --cfgs cfg/yolov3tiny-mobilenet-small/yolov3tiny-mobilenet-small-coco.cfg,cfg/yolov3-mobilenet/yolov3-mobilenet-coco.cfg \
        --size 160 --out bench/results/suite-reference
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from common import machine, write_results
from yolo3.errors import run_cli

# Runs in the PyTorch environment, with the suite's folder as the working directory: load, count, forward, save.
SUITE_SIDE = r"""
import json, sys, types
tv = types.ModuleType("torchvision"); tv.ops = types.ModuleType("torchvision.ops")
sys.modules["torchvision"], sys.modules["torchvision.ops"] = tv, tv.ops
sys.path.insert(0, ".")
import numpy as np, torch
from models import Darknet, YOLOLayer, load_darknet_weights
cfg, weights, image, out, size = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
model = Darknet(cfg, (size, size))
load_darknet_weights(model, weights)
model.eval()
raw = []
for m in model.modules():
    if isinstance(m, YOLOLayer):
        m.register_forward_pre_hook(lambda mod, args: raw.append(args[0].detach().numpy()))
with torch.no_grad():
    model(torch.from_numpy(np.load(image)))
np.savez(out, *raw)
print(json.dumps({"params": int(sum(p.numel() for p in model.parameters())),
                  "torch": torch.__version__}))
"""


def compare(cfg: Path, suite: Path, torch_python: str, size: int, work: Path) -> dict:
    from yolo3.darknet import random_weights, write_weights
    from yolo3.keras_model import build_model, set_darknet_weights
    from yolo3.spec import analyse, read_cfg, totals, with_size

    spec = with_size(read_cfg(cfg), size)
    weights = random_weights(spec, seed=0)
    write_weights(work / "model.weights", spec, weights)
    image = np.random.default_rng(0).uniform(0, 1, (1, 3, size, size)).astype(np.float32)
    np.save(work / "image.npy", image)
    done = subprocess.run([torch_python, "-c", SUITE_SIDE, str(cfg.resolve()), str(work / "model.weights"), str(work / "image.npy"),
                           str(work / "suite.npz"), str(size)], cwd=suite, capture_output=True, text=True)  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"the suite's code failed on {cfg}:\n{done.stderr[-2000:]}")
    suite_side = json.loads(done.stdout.strip().splitlines()[-1])
    theirs = [a for _, a in sorted(np.load(work / "suite.npz").items(), key=lambda kv: int(kv[0].split("_")[1]))]
    model = build_model(spec)
    set_darknet_weights(model, spec, weights)
    ours = [np.transpose(np.asarray(o), (0, 3, 1, 2)) for o in model(np.transpose(image, (0, 2, 3, 1)), training=False)]
    by_shape = {a.shape: a for a in theirs}
    heads = []
    for o in ours:
        t = by_shape[o.shape]
        heads.append({"shape": list(o.shape), "max_abs_diff": float(np.max(np.abs(o - t))), "spread": float(np.std(t)),
                      "relative": float(np.max(np.abs(o - t)) / max(np.std(t), 1e-12))})  # fmt: skip
    t = totals(analyse(spec))
    return {"cfg": str(cfg), "size": size, "params_suite": suite_side["params"], "trainable_params_ours": t.trainable_params,
            "params_equal": suite_side["params"] == t.trainable_params, "heads": heads,
            "max_relative_diff": max(h["relative"] for h in heads), "torch": suite_side["torch"]}  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", required=True, help="a checkout of the suite (models.py, utils/, cfg/)")
    parser.add_argument("--torch-python", required=True, help="the Python of an environment with PyTorch, numpy and OpenCV")
    parser.add_argument("--cfgs", required=True, help="comma-separated cfg paths inside the suite")
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--out", required=True, help="output path without suffix (.json and .md are written)")
    args = parser.parse_args(argv)
    suite = Path(args.suite)
    rows = []
    for name in args.cfgs.split(","):
        with tempfile.TemporaryDirectory() as work:
            rows.append(compare(suite / name, suite, args.torch_python, args.size, Path(work)))
    data = {"command": "python bench/suite_reference.py " + " ".join(argv or sys.argv[1:]), "machine": machine(), "rows": rows}
    md = [f"The suite's own code (PyTorch {rows[0]['torch']}) against this tool on the suite's cfgs: random weights written by this tool, "
          f"loaded by the suite's `load_darknet_weights`; one random {args.size} px input; {data['machine']}", "",
          "| cfg | parameters, the suite's code | trainable parameters, this tool | raw head outputs: largest difference / their std |",
          "|---|---|---|---|"]  # fmt: skip
    for r in rows:
        md.append(f"| {Path(r['cfg']).name} | {r['params_suite']:,} | {r['trainable_params_ours']:,} | "
                  + ", ".join(f"{h['relative']:.1e}" for h in r["heads"]) + " |")  # fmt: skip
    write_results(Path(args.out), data, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
