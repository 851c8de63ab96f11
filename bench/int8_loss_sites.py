#!/usr/bin/env python3
"""Benchmark: where in the network does int8 lose a model's accuracy? Activation tensors quantized group by group.

    python bench/int8_loss_sites.py -c bench/configs/bccd-yolo-fastest.json --model runs/bccd-yolo-fastest/best.h5 \
        --out bench/results/int8-loss-sites-bccd-yolo-fastest

The float Keras model is run with int8 fake quantization (TensorFlow's
``fake_quant_with_min_max_args``, per tensor, asymmetric, zero exact — what
TFLite's int8 activations do) inserted after chosen activation tensors, the
weights left float. The tensors are grouped by what they are: the outputs of
the convolutions that feed a depthwise one, before and after their activation;
the depthwise outputs, before and after; the linear (projection) outputs; the
residual additions; the output heads; the other convolutions. Each group is
quantized alone ("only") and every group but it ("all but"), and every group
together ("all", which reproduces the int8 file's loss when the weights are not
what loses it). Ranges are the calibration images' min/max, as the converter
records them, or refitted by least int8 error (``convert --repair ranges``'s
``mse_range``); the model as given (``plain``) or after activation equalisation
(``equalized``, ``convert --repair cle``'s second candidate). With
``--int8-weights`` every kernel is also rounded to int8 per channel, so that
"all" simulates the whole int8 model. Scored on the
config's --splits pooled (more images, less noise; nothing here is chosen on
them). One JSON and one markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np

from common import machine, write_results
from yolo3.errors import UserError, run_cli

GROUPS = {
    "expand-pre": "convolutions feeding a depthwise one, before their activation",
    "expand-act": "convolutions feeding a depthwise one, after their activation",
    "depthwise-pre": "depthwise convolutions, before their activation",
    "depthwise-act": "depthwise convolutions, after their activation",
    "linear": "linear convolutions inside the network (projections)",
    "add": "residual additions",
    "other-pre": "other convolutions, before their activation",
    "other-act": "other convolutions, after their activation",
    "heads": "output heads",
}
SAMPLES_PER_TENSOR_IMAGE = 12_000  # values kept per tensor and batch for the least-error ranges


def _inputs(layer) -> list:
    found = layer._inbound_nodes[0].inbound_layers
    return found if isinstance(found, list) else [found]


def _readers(layer) -> list:
    """The layers reading ``layer``'s output, looking through padding and dropout (which int8 does not quantize again)."""
    out = [node.outbound_layer for node in layer._outbound_nodes]
    return [r for o in out for r in (_readers(o) if type(o).__name__ in ("ZeroPadding2D", "Dropout") else [o])]


def _kind(layer) -> str:
    return type(layer).__name__


def tensor_group(layer) -> str | None:
    """Which of :data:`GROUPS` the output of ``layer`` belongs to; None for tensors int8 does not quantize anew."""
    kind = _kind(layer)
    if kind == "Add":
        return "add"
    if kind in ("BatchNormalization", "Conv2D", "DepthwiseConv2D"):
        if kind != "BatchNormalization" and any(_kind(r) == "BatchNormalization" for r in _readers(layer)):
            return None  # its BN output is the tensor int8 sees
        conv = _inputs(layer)[0] if kind == "BatchNormalization" else layer
        readers = _readers(layer)
        activated = bool(readers) and all(
            _kind(r) == "LeakyReLU" or "Activation" in _kind(r) or "ReLU" in _kind(r) for r in readers
        )
        if _kind(conv) == "DepthwiseConv2D":
            return "depthwise-pre" if activated else "linear"
        if not readers:
            return "heads"
        if not activated:
            return "linear"
        return "expand-pre" if any(_kind(r) == "DepthwiseConv2D" for a in readers for r in _readers(a)) else "other-pre"
    if kind == "LeakyReLU" or "ReLU" in kind or kind == "Activation":
        conv = _inputs(_inputs(layer)[0])[0] if _kind(_inputs(layer)[0]) == "BatchNormalization" else _inputs(layer)[0]
        if _kind(conv) == "DepthwiseConv2D":
            return "depthwise-act"
        return "expand-act" if any(_kind(r) == "DepthwiseConv2D" for r in _readers(layer)) else "other-act"
    return None


def measure(model, names: list[str], images: np.ndarray, refit: bool, keep: set[str]) -> dict[str, tuple[float, float]]:
    """Each named layer's output range on ``images``: min/max, or refitted by least int8 error on a sample of its values.

    The layers in ``keep`` (the output heads, whose tails are the detections) keep min/max, as ``convert --repair ranges`` keeps them.
    """
    from compression.quantize.ranges import mse_range
    from yolo3.kerasenv import keras

    probe = keras.Model(model.input, [model.get_layer(n).output for n in names])
    lows = {n: np.inf for n in names}
    highs = {n: -np.inf for n in names}
    samples: dict[str, list[np.ndarray]] = {n: [] for n in names}
    rng = np.random.default_rng(0)
    for k in range(0, len(images), 8):
        outputs = probe(images[k : k + 8], training=False)
        for n, y in zip(names, outputs if len(names) > 1 else [outputs]):
            y = np.asarray(y).ravel()
            lows[n], highs[n] = min(lows[n], float(y.min())), max(highs[n], float(y.max()))
            if refit:
                samples[n].append(rng.choice(y, min(y.size, SAMPLES_PER_TENSOR_IMAGE), replace=False))
    ranges = {n: (min(lows[n], 0.0), max(highs[n], 0.0)) for n in names}
    if refit:
        ranges = {n: ranges[n] if n in keep else mse_range(np.concatenate(samples[n]), *ranges[n]) for n in names}
    return ranges


def round_kernels_to_int8(model) -> int:
    """Every convolution kernel of ``model`` rounded in place to int8 per output channel, symmetric (TFLite's int8 weights); how many.

    The batch normalisation the converter folds in scales each output channel by one factor, which per-channel rounding does not see.
    """
    done = 0
    for layer in model.layers:
        if _kind(layer) in ("Conv2D", "DepthwiseConv2D"):
            weights = layer.get_weights()
            kernel = weights[0]
            axes = (0, 1, 3) if _kind(layer) == "DepthwiseConv2D" else (0, 1, 2)  # depthwise: (kh, kw, channels, 1)
            step = np.abs(kernel).max(axis=axes, keepdims=True) / 127.0
            step[step == 0] = 1.0
            weights[0] = np.round(kernel / step) * step
            layer.set_weights(weights)
            done += 1
    return done


def fake_quantized(model, ranges: dict[str, tuple[float, float]]):
    """A copy of the functional ``model`` (same layers, same weights) with int8 fake quantization after each layer in ``ranges``."""
    from yolo3.kerasenv import keras, tf

    outputs: dict[str, object] = {}
    first = None
    for layer in model.layers:
        if _kind(layer) == "InputLayer":
            first = outputs[layer.name] = keras.Input(layer.output.shape[1:])
            continue
        args = [outputs[i.name] for i in _inputs(layer)]
        y = layer(args if len(args) > 1 else args[0])
        if layer.name in ranges:
            lo, hi = ranges[layer.name]
            y = keras.layers.Lambda(lambda t, lo=lo, hi=hi: tf.quantization.fake_quant_with_min_max_args(t, lo, hi, num_bits=8))(
                y
            )
        outputs[layer.name] = y
    return keras.Model(first, [outputs[name] for name in model.output_names])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--model", required=True, help="a .h5 or .weights the config can load")
    parser.add_argument(
        "--samples", type=int, default=64, help="calibration images (from the training split, as convert takes them)"
    )
    parser.add_argument("--splits", default="valid,test", help="the splits scored, pooled")
    parser.add_argument("--variants", default="plain,equalized", help="plain, equalized (activation equalisation first)")
    parser.add_argument("--ranges", default="minmax,mse", help="minmax (the converter's), mse (least int8 error)")
    parser.add_argument(
        "--int8-weights", action="store_true", help="round every kernel to int8 per channel as well (default: float weights)"
    )
    parser.add_argument(
        "--groups", action=argparse.BooleanOptionalAction, default=True, help="each group alone and all but it (default)"
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from compression.quantize.convert import activation_equalized
    from compression.quantize.tflite_export import calibration_images
    from yolo3.config import load_config
    from yolo3.datasets import read_dataset
    from yolo3.evaluation import KerasPredictor, PreparedImages, evaluate, load_for_config
    from yolo3.models import load_model
    from yolo3.preprocess import letterboxed_images

    if not Path(args.model).is_file():
        raise UserError("model file does not exist", args.model)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    methods = [m.strip() for m in args.ranges.split(",") if m.strip()]
    if set(variants) - {"plain", "equalized"} or set(methods) - {"minmax", "mse"}:
        raise UserError(f"--variants takes plain,equalized and --ranges minmax,mse; got {args.variants!r}, {args.ranges!r}")
    config = load_config(args.config)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    datasets = [read_dataset(config.dataset(s), config.labels) for s in splits]
    pooled = datasets[0]
    pooled.records = [r for d in datasets for r in d.records]
    size = config.model.input_size
    train = read_dataset(config.dataset("train"), config.labels).records
    paths = calibration_images(train, args.samples)
    images = letterboxed_images(paths, size)
    start = load_for_config(config, args.model)
    prepared = PreparedImages(pooled.records, (size, size))
    v = config.valid

    def score(model) -> float:
        predictor = KerasPredictor(dataclasses.replace(start, model=model))
        report = evaluate(
            predictor, pooled, config.labels, v.score_threshold, v.nms_iou, v.max_detections, v.batch_size, False, prepared
        )
        return float(report["mAP50"])

    report = {
        "model": args.model,
        "int8_weights": args.int8_weights,
        "splits": splits,
        "images": len(prepared.records),
        "calibration_images": len(paths),
        "tables": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for variant in variants:
            model = start.model
            if variant == "equalized":
                h5 = Path(tmp) / "model.h5"
                from yolo3.models import save_model

                save_model(start.model, start.spec, h5, None)
                done = activation_equalized(h5, start.spec, paths, size, Path(tmp) / "equalized.h5", None)
                if not done.get("pairs"):
                    print(f"{args.model}: no convolution feeds a depthwise one, nothing to equalise", file=sys.stderr)
                    continue
                model = load_model(Path(tmp) / "equalized.h5", size=size).model
            float_score = score(model)
            weights_score = None
            if args.int8_weights:
                if model is start.model:  # round a copy: the plain model stays float for the equalised variant
                    model = load_for_config(config, args.model).model
                round_kernels_to_int8(model)
                weights_score = score(model)
            groups_of_name = {layer.name: g for layer in model.layers if (g := tensor_group(layer))}
            heads = {n for n, g in groups_of_name.items() if g == "heads"}
            present = [g for g in GROUPS if g in groups_of_name.values()]
            for method in methods:
                ranges = measure(model, list(groups_of_name), images, method == "mse", heads)
                table = {"variant": variant, "ranges": method, "float": float_score, "int8_weights_only": weights_score,
                         "all": score(fake_quantized(model, ranges)), "groups": []}  # fmt: skip
                for g in present if args.groups else []:
                    names = [n for n, h in groups_of_name.items() if h == g]
                    only = score(fake_quantized(model, {n: ranges[n] for n in names}))
                    but = score(fake_quantized(model, {n: r for n, r in ranges.items() if n not in names}))
                    table["groups"].append({"group": g, "what": GROUPS[g], "tensors": len(names), "only": only, "all_but": but})
                    print(f"{variant} {method} {g}: only {only:.4f}, all but {but:.4f}", file=sys.stderr, flush=True)
                report["tables"].append(table)
    report.update(command="python bench/int8_loss_sites.py " + " ".join(argv or sys.argv[1:]), machine=machine())
    weights = "kernels rounded to int8 per channel" if args.int8_weights else "float weights"
    md = [f"`{args.model}`: mAP@0.5 on {report['images']} images ({' + '.join(splits)} pooled) at {size}, {weights}, "
          f"int8 fake quantization on the activation groups named; ranges from {len(paths)} training images; {report['machine']}"]  # fmt: skip
    for t in report["tables"]:
        weights_only = ""
        if t["int8_weights_only"] is not None:
            weights_only = (
                f", int8 kernels alone {t['int8_weights_only']:.4f} ({(t['int8_weights_only'] - t['float']) * 100:+.2f} pt)"
            )
        md += ["", f"**{t['variant']}, {t['ranges']} ranges**: float {t['float']:.4f}{weights_only}, every group quantized {t['all']:.4f} "
                   f"({(t['all'] - t['float']) * 100:+.2f} pt against float)"]  # fmt: skip
        if not t["groups"]:
            continue
        base = t["int8_weights_only"] if t["int8_weights_only"] is not None else t["float"]
        md += ["", "| group | tensors | only this group | loss | all but this group | won back |", "|---|---|---|---|---|---|"]
        for g in t["groups"]:
            md.append(f"| {g['what']} | {g['tensors']} | {g['only']:.4f} | {(g['only'] - base) * 100:+.2f} pt | "
                      f"{g['all_but']:.4f} | {(g['all_but'] - t['all']) * 100:+.2f} pt |")  # fmt: skip
    write_results(Path(args.out), report, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
