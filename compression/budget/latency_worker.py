"""Convert the pieces the latency model times, in a process of their own (the converter leaks memory per call).

    python -m compression.budget.latency_worker JOB.json

The job holds a Darknet cfg and a list of items, each either one block of that
network with given input and output channel counts (``layer``) or the whole
network with given filter counts (``filters``), at an input size. Every item is
built from the same Keras layers the model uses (:func:`yolo3.keras_model.apply_block`),
given random weights, converted to full-integer int8 with random calibration
data and written to its ``out`` path. Timing happens in the parent, with LiteRT.
Errors end the process with one line on stderr.
"""

from __future__ import annotations

import json
import sys

import numpy as np


def block_model(spec, layer: int, in_shapes: list[list[int]], filters: int | None):
    """A Keras model of block ``layer`` alone: one input per tensor it reads, its output."""
    from yolo3.keras_model import apply_block
    from yolo3.kerasenv import keras
    from yolo3.spec import route_inputs, scale_channels_input, set_filters, shortcut_input

    spec = spec.copy()
    block = spec.layers[layer]
    if filters is not None:
        set_filters(block, int(filters))
    # named so that the converter's (sorted) input order is the order given here
    inputs = [keras.layers.Input(shape=tuple(s), name=f"x{k}") for k, s in enumerate(in_shapes)]
    if block.type == "route":
        outs = dict(zip(route_inputs(spec, layer), inputs))
        x = None
    elif block.type == "shortcut":
        outs = {shortcut_input(spec, layer): inputs[1]}
        x = inputs[0]
    elif block.type == "scale_channels":  # the scaled layer, then the factors (latency_model.block_shapes' order)
        outs = {scale_channels_input(spec, layer): inputs[0]}
        x = inputs[1]
    else:
        outs, x = {}, inputs[0]
    return keras.Model(inputs, apply_block(spec, layer, x, outs))


def network_model(spec, filters: dict[str, int], size: int):
    """The whole network with some convolutions' filter counts changed (a pruned architecture), at ``size``."""
    from yolo3.keras_model import build_model
    from yolo3.spec import narrowed

    return build_model(narrowed(spec, {int(k): v for k, v in filters.items()}), size=size)


def randomize(model, seed: int) -> None:
    """Plausible random weights: the values do not change int8 speed, only shapes do."""
    rng = np.random.default_rng(seed)
    values = []
    for w in model.weights:
        shape = tuple(w.shape)
        name = w.name
        if "moving_variance" in name or "gamma" in name:
            values.append(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        elif "moving_mean" in name or "beta" in name or "bias" in name:
            values.append(rng.normal(0, 0.1, shape).astype(np.float32))
        else:
            fan_in = int(np.prod(shape[:-1])) or 1
            values.append(rng.normal(0, 1 / np.sqrt(fan_in), shape).astype(np.float32))
    model.set_weights(values)


def convert_int8(model, seed: int = 0) -> bytes:
    from yolo3.kerasenv import tf

    rng = np.random.default_rng(seed)
    shapes = {t.name.split(":")[0]: tuple(int(d) for d in t.shape[1:]) for t in model.inputs}

    def representative():  # by input name: the calibrator does not keep the Keras input order
        for _ in range(2):
            yield {name: rng.uniform(0, 1, (1, *s)).astype(np.float32) for name, s in shapes.items()}

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def main(argv: list[str]) -> int:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from yolo3.spec import parse_cfg

    job = json.loads(open(argv[0], encoding="utf-8").read())
    spec = parse_cfg(job["cfg"], source="latency job")
    try:
        for k, item in enumerate(job["items"]):
            if "layer" in item:
                model = block_model(spec, item["layer"], item["in_shapes"], item.get("filters"))
            else:
                model = network_model(spec, item["filters"], item["size"])
            randomize(model, seed=k)
            data = convert_int8(model, seed=k)
            with open(item["out"], "wb") as f:
                f.write(data)
            print(k, flush=True)  # progress for the parent
    except Exception as err:  # the parent reports this line to the user
        print(f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
