"""Quantization-aware training: the scheme chosen from the model's record, and an int8 model that keeps zeros and clusters."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from yolo3.errors import UserError


def _conv(filters, size=3, stride=1, bn=True):
    act = "leaky" if bn else "linear"
    return f"[convolutional]\n{'batch_normalize=1' if bn else ''}\nfilters={filters}\nsize={size}\nstride={stride}\npad=1\nactivation={act}\n"


YOLO = "[yolo]\nmask={}\nanchors=10,14, 23,27, 37,58, 81,82, 135,169, 344,319\nclasses=3\nnum=6\n"
# YOLOv3-tiny's layout (maxpools, two heads, route, upsample) with 8-32 channels: TFMOT's
# cluster-preserving QAT builds a graph per output channel, whose first step takes minutes on
# the real YOLOv3-tiny (~2,000 channels) and seconds here
MINI_TINY = (
    "[net]\nwidth=96\nheight=96\nchannels=3\n"
    + _conv(8) + "[maxpool]\nsize=2\nstride=2\n" + _conv(16) + "[maxpool]\nsize=2\nstride=2\n"
    + _conv(16) + "[maxpool]\nsize=2\nstride=2\n" + _conv(32) + "[maxpool]\nsize=2\nstride=2\n"
    + _conv(32) + "[maxpool]\nsize=2\nstride=2\n" + _conv(32) + _conv(16, 1) + _conv(32)
    + _conv(24, 1, bn=False) + YOLO.format("3,4,5")
    + "[route]\nlayers=-4\n" + _conv(16, 1) + "[upsample]\nstride=2\n" + "[route]\nlayers=-1, 8\n"
    + _conv(32) + _conv(24, 1, bn=False) + YOLO.format("0,1,2")
)  # fmt: skip


@pytest.fixture(scope="module")
def compressed(tmp_path_factory, synthetic_valid):
    """A small YOLOv3-tiny-like model, half of every kernel zero, the rest on 8 centroids per kernel, saved with its record."""
    from compression.cluster.clustering import cluster_model, conv_layer_names
    from compression.prune.magnitude import oneshot_prune
    from conftest import random_weights
    from yolo3.keras_model import build_model, set_darknet_weights
    from yolo3.models import save_model
    from yolo3.spec import parse_cfg

    spec = parse_cfg(MINI_TINY, "mini-tiny")
    model = build_model(spec)
    set_darknet_weights(model, spec, random_weights(spec, seed=7))
    names = conv_layer_names(spec)
    oneshot_prune(model, names, 0.5)
    cluster_model(model, spec, 8)
    folder = tmp_path_factory.mktemp("qat")
    save_model(model, spec, folder / "pcq.h5", {"clustering": {"clusters": 8, "per_channel": False, "layers": names}})
    return folder, model, spec, names


def test_scheme_follows_the_record(compressed):
    from compression.quantize.qat import check_clusters_preservable, scheme_for

    _, model, _, names = compressed
    record = {"clusters": 8, "per_channel": False, "layers": names}
    assert scheme_for({"clustering": record}, model) == "pcqat"
    assert scheme_for({"sparsity": {"target": 0.5, "layers": names}}, model) == "pqat"
    assert scheme_for({}, model) == "qat"
    # per-channel clusters whose channels hold unequal numbers of values: TFMOT would drop them silently
    kernel = np.zeros((3, 3, 4, 2000), np.float32)
    kernel[..., ::2] = np.arange(2000 // 2, dtype=np.float32)[None, None, None, :]
    kernel[0, 0, 0, 1::2] = np.arange(1, 2000 // 2 + 1, dtype=np.float32)
    kernel[1, 0, 0, 1::2] = -np.arange(1, 2000 // 2 + 1, dtype=np.float32)
    kernel[2, 0, 0, 1::2] = 0.5
    with pytest.raises(UserError, match="cluster per layer"):
        check_clusters_preservable({"conv_9": kernel}, per_channel=True)


def test_qat_int8_keeps_sparsity_and_clusters(compressed, synthetic_valid, tmp_path):
    from test_tflite import _config

    from yolo3.models import compression_info, load_model

    folder, model, _, names = compressed
    config = _config(tmp_path, synthetic_valid, folder / "pcq.h5")
    data = json.loads(config.read_text())
    data["train"].update(batch_size=4, run_dir=str(tmp_path / "unused"))
    data["quantization"] = {"qat_epochs": 1, "qat_learning_rate": 1e-3}
    config.write_text(json.dumps(data))
    out = tmp_path / "q.tflite"
    r = subprocess.run(
        [sys.executable, "convert.py", "-c", str(config), "--model", str(folder / "pcq.h5"), "--qat", "--samples", "4",
         "--out", str(out), "--json", str(tmp_path / "r.json"), "--quiet"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["qat"]["scheme"] == "pcqat" and report["qat"]["epochs"] == 1
    assert report["inputs"][0]["dtype"] == "int8" and report["outputs"][0]["dtype"] == "int8"
    k = report["kernels"]
    assert k["dtype"] == "int8" and k["layers"] == len(names)
    assert k["zero_fraction"] >= 0.5  # the pruned half stays zero (rounding may add a few)
    assert k["max_distinct_per_channel"] <= 8  # BN folding scales a channel, int8 rounding can only merge values
    # the QAT run trained the weights (lr 1e-3), and they stayed on 8 values per channel with the zeros in place
    # (TFMOT trains a convolution's centroids per output channel, so a kernel's 8 values become 8 per channel)
    tuned = load_model(tmp_path / "q" / "best.h5").model
    changed = 0
    for name in names:
        before = model.get_layer(name).get_weights()[0]
        after = tuned.get_layer(name).get_weights()[0]
        assert np.array_equal(after == 0, before == 0), name
        assert max(len(np.unique(c[c != 0])) for c in np.moveaxis(after, -1, 0)) <= 8, name
        changed += not np.allclose(after, before)
    assert changed > len(names) // 2
    assert compression_info(tmp_path / "q" / "best.h5")["clustering"]["clusters"] == 8
    bad = subprocess.run([sys.executable, "convert.py", "-c", str(config), "--qat", "--format", "float16"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "--qat makes an int8 model" in bad.stderr


def test_activation_ranges_start_from_calibration(compressed):
    from compression.quantize.qat import calibrate_ranges, quantize_model
    from yolo3.kerasenv import keras

    _, model, _, _ = compressed
    qat = quantize_model(model, "qat")
    images = np.random.default_rng(0).uniform(0, 1, (4, 96, 96, 3)).astype(np.float32)
    assert calibrate_ranges(qat, model, images) > 10
    ranges = {w.name.split(":")[0]: float(w.numpy()) for w in qat.weights if w.name.endswith(("_min:0", "_max:0")) and "kernel" not in w.name}
    head = keras.Model(model.inputs, model.get_layer("conv_13").output)(images).numpy()  # the first detection head
    assert ranges["quant_conv_13/post_activation_max"] == pytest.approx(head.max(), rel=1e-5)
    assert ranges["quant_conv_13/post_activation_min"] == pytest.approx(min(head.min(), 0.0), rel=1e-5)
    assert all(v != 6.0 and v != -6.0 for v in ranges.values())  # none left at TFMOT's starting range
    assert [v for k, v in ranges.items() if k.startswith("quantize_layer")] in ([0.0, 1.0], [1.0, 0.0])
    # refit: each range starts at the one of least int8 error on the same outputs, inside min..max (the head's: all its values)
    from compression.quantize.ranges import mse_range

    calibrate_ranges(qat, model, images, ranges="mse")
    refitted = {w.name.split(":")[0]: float(w.numpy()) for w in qat.weights if w.name.endswith(("_min:0", "_max:0")) and "kernel" not in w.name}
    lo, hi = mse_range(head.ravel(), min(head.min(), 0.0), head.max())
    assert refitted["quant_conv_13/post_activation_max"] == pytest.approx(hi, rel=1e-5)
    assert refitted["quant_conv_13/post_activation_min"] == pytest.approx(lo, rel=1e-5)
    narrowed = [k for k in ranges if not k.startswith("quantize_layer") and abs(refitted[k]) < abs(ranges[k]) * (1 - 1e-6)]
    assert narrowed and all(abs(refitted[k]) <= abs(ranges[k]) * (1 + 1e-6) for k in ranges)


def test_finetune_qat_writes_the_int8_model_in_its_run(compressed, synthetic_valid, tmp_path):
    from test_tflite import _config

    from yolo3.models import save_model

    folder, model, spec, _ = compressed
    save_model(model, spec, tmp_path / "plain.h5")  # no record: plain QAT
    config = _config(tmp_path, synthetic_valid, tmp_path / "plain.h5")
    data = json.loads(config.read_text())
    data["train"].update(batch_size=4, run_dir=str(tmp_path / "run"))
    config.write_text(json.dumps(data))
    r = subprocess.run(
        [sys.executable, "finetune.py", "-c", str(config), "--model", str(tmp_path / "plain.h5"), "--qat", "--epochs", "1",
         "--samples", "4", "--quiet"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "quantization-aware training (qat, 1 epoch at" in r.stdout
    assert (tmp_path / "run" / "qat-int8.tflite").stat().st_size > 10_000 and (tmp_path / "run" / "best.h5").exists()


def test_learned_ranges_train_and_are_the_ranges_in_the_int8_file(compressed, tmp_path):
    """quantization.qat_range_learning_rate: the activation ranges are trainable variables that move with the task loss, about
    that rate per step, start from calibration like the averaged ones, and convert to exactly the scales in the file."""
    from compression.quantize.qat import calibrate_ranges, quantize_model
    from compression.quantize.tflite_export import export_tflite
    from yolo3.kerasenv import keras, tf

    folder, model, spec, _ = compressed
    scale = 100.0  # a range rate of 1e-3 at QAT's learning rate of 1e-5
    qat = quantize_model(model, "qat", range_scale=scale)
    images = np.random.default_rng(0).uniform(0, 1, (4, 96, 96, 3)).astype(np.float32)
    calibrate_ranges(qat, model, images)
    ranges = {w.name.split(":")[0]: w for w in qat.trainable_weights if w.name.endswith(("_min:0", "_max:0")) and "kernel" not in w.name}
    head = keras.Model(model.inputs, model.get_layer("conv_13").output)(images).numpy()
    assert len(ranges) > 10 and scale * float(ranges["quant_conv_13/post_activation_max"].numpy()) == pytest.approx(head.max(), rel=1e-5)
    before = {k: float(v.numpy()) for k, v in ranges.items()}
    optimizer = keras.optimizers.Adam(1e-5)
    for _ in range(5):
        with tf.GradientTape() as tape:
            loss = sum(tf.reduce_mean(tf.square(o - 0.1)) for o in qat(images, training=True))
        grads = tape.gradient(loss, qat.trainable_weights)
        optimizer.apply_gradients([(g, w) for g, w in zip(grads, qat.trainable_weights) if g is not None])
    moved = [scale * abs(float(v.numpy()) - before[k]) for k, v in ranges.items()]
    assert max(moved) == pytest.approx(5 * scale * 1e-5, rel=0.2)  # Adam: about the rate per step
    weights = tmp_path / "qat-weights.h5"
    qat.save_weights(str(weights))
    out = tmp_path / "learned.tflite"
    export_tflite(folder / "pcq.h5", out, "int8", [], ["a", "b", "c"], 96, spec,
                  qat={"scheme": "qat", "weights": str(weights), "range_scale": scale})  # fmt: skip
    from ai_edge_litert.interpreter import Interpreter

    lo, hi = (scale * float(ranges[f"quant_conv_13/post_activation_{e}"].numpy()) for e in ("min", "max"))
    interpreter = Interpreter(str(out))
    found = [o["quantization"][0] for o in interpreter.get_output_details() if list(o["shape"]) == [1, 3, 3, 24]]  # conv_13, the 1/32 head
    assert found == [pytest.approx((hi - lo) / 255, rel=1e-5)]
