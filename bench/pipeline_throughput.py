#!/usr/bin/env python3
"""Benchmark: training images/second fed by the full input pipeline vs by cached tensors.

    python bench/pipeline_throughput.py -c bench/configs/raccoon-yolov3-tiny.json --out bench/results/pipeline-throughput

Same model, same train step, same batches: once read, decoded, augmented and encoded by the
tf.data pipeline while the model trains, once replayed from memory. Rounds alternate between
the two; the medians and their ratio are reported (target: ratio >= 0.9).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from common import machine, write_results
from yolo3.errors import run_cli


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--steps", type=int, default=20, help="train steps per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from yolo3.config import load_config
    from yolo3.datasets import read_dataset
    from yolo3.keras_model import build_model
    from yolo3.kerasenv import keras, tf
    from yolo3.pipeline import make_dataset
    from yolo3.targets import head_layout
    from yolo3.training import Stepper, _settings, copy_weights, starting_point

    config = load_config(args.config)
    records = read_dataset(config.dataset("train"), config.labels).records
    pipe, loss_settings = _settings(config)
    start = starting_point(config, None, False)
    layout = head_layout(start.spec)
    model = build_model(start.spec, size=config.model.input_size)
    if start.model is not None:
        copy_weights(start.model, model)
    strategy = tf.distribute.get_strategy()
    optimizer = keras.optimizers.Adam(1e-4)
    step = Stepper(model, layout, loss_settings, strategy, pipe.batch_size).make_train_step(optimizer, model.trainable_variables)

    def run(batches) -> float:
        t0 = time.perf_counter()
        n = 0
        for batch in batches:
            float(step(batch))
            n += 1
            if n == args.steps:
                break
        return n * pipe.batch_size / (time.perf_counter() - t0)

    cached = list(make_dataset(records, layout, len(config.labels), pipe, epoch=99).take(args.steps))
    run(cached[:2])  # trace and warm up
    piped, replayed = [], []
    for r in range(args.rounds):
        piped.append(run(make_dataset(records, layout, len(config.labels), pipe, epoch=r)))
        replayed.append(run(cached))
    data = {
        "command": "python bench/pipeline_throughput.py " + " ".join(argv or sys.argv[1:]),
        "machine": machine(),
        "batch_size": pipe.batch_size,
        "input_size": config.model.input_size,
        "augment": config.train.augment,
        "pipeline_images_per_second": piped,
        "cached_images_per_second": replayed,
        "median_pipeline": statistics.median(piped),
        "median_cached": statistics.median(replayed),
    }
    data["ratio"] = data["median_pipeline"] / data["median_cached"]
    md = "\n".join([
        f"Training throughput, `{Path(args.config).name}` (batch {pipe.batch_size}, input {config.model.input_size}, "
        f"augmentation {'on' if config.train.augment else 'off'}), {args.rounds} rounds of {args.steps} steps, {data['machine']}",
        "",
        "| fed by | images/s (median) |",
        "|---|---|",
        f"| tf.data pipeline (decode, augment, encode) | {data['median_pipeline']:.1f} |",
        f"| cached tensors | {data['median_cached']:.1f} |",
        f"| **ratio** | **{data['ratio']:.3f}** |",
    ])  # fmt: skip
    write_results(Path(args.out), data, md)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
