"""Training engine: targets, loss, anchors, schedule, pipeline, checkpoints, resume, NaN, fine-tuning."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT
from yolo3.anchors import kmeans_anchors
from yolo3.targets import HeadLayout, encode_targets

LAYOUT = HeadLayout((32, 16), (((81, 82), (135, 169), (344, 319)), ((10, 14), (23, 27), (37, 58))))


def test_targets_go_to_best_anchor_and_cell():
    boxes = [np.array([[100, 60, 124, 86, 2], [0, 0, 300, 300, 1]], np.float32)]
    t_small, t_large = encode_targets(boxes, LAYOUT, (416, 416), 3)[1], encode_targets(boxes, LAYOUT, (416, 416), 3)[0]
    cell = t_small[0, 73 // 16, 112 // 16, 1]  # 24x26 box -> anchor (23, 27), stride 16
    np.testing.assert_allclose(cell, [112, 73, 24, 26, 1, 0, 0, 1])
    assert t_small.sum() == cell.sum()
    big = t_large[0, 150 // 32, 150 // 32, 2]  # 300x300 -> (344, 319)
    np.testing.assert_allclose(big[:5], [150, 150, 300, 300, 1])


def test_loss_is_small_for_perfect_predictions_and_large_otherwise():
    from yolo3.kerasenv import tf
    from yolo3.loss import LossSettings, yolo_loss

    boxes = [np.array([[100, 60, 126, 86, 2]], np.float32)]
    targets = encode_targets(boxes, LAYOUT, (128, 128), 3)
    gt = np.zeros((1, 4, 4), np.float32)
    gt[0, 0] = boxes[0][0, :4]
    outputs = [np.full((1, 128 // s, 128 // s, 3 * 8), -12.0, np.float32) for s in LAYOUT.strides]
    off = lambda v: math.log(v / (1 - v))
    raw = outputs[1][0, 73 // 16, 113 // 16].reshape(3, 8)
    raw[1] = [off(113 / 16 - 7), off(73 / 16 - 4), math.log(26 / 23), math.log(26 / 27), 12, -12, -12, 12]
    perfect, parts = yolo_loss([tf.constant(o) for o in outputs], targets, gt, LAYOUT, LossSettings(), (128, 128))
    assert float(perfect[0]) < 0.05 and float(parts["box"][0]) < 1e-6
    raw[1, 4] = -12  # the object missed
    missed, _ = yolo_loss([tf.constant(o) for o in outputs], targets, gt, LAYOUT, LossSettings(), (128, 128))
    assert float(missed[0]) > 50


def test_kmeans_anchors_find_the_clusters():
    rng = np.random.RandomState(0)
    centres = np.array([[10, 10], [30, 60], [120, 90]])
    wh = np.vstack([c * rng.uniform(0.95, 1.05, (50, 2)) for c in centres])
    anchors, mean_iou = kmeans_anchors(wh, 3)
    np.testing.assert_allclose(anchors, centres, rtol=0.05)
    assert mean_iou > 0.9


def test_learning_rate_schedule():
    from yolo3.training import learning_rate

    lr = lambda step, sched="cosine": learning_rate(step, 10, 10, 1e-3, 1.0, sched)
    assert lr(0) == pytest.approx(1e-4) and lr(9) == pytest.approx(1e-3)
    assert lr(10) == pytest.approx(1e-3) and lr(99) < 2e-5
    assert lr(95, "steps") == pytest.approx(1e-5) and lr(85, "steps") == pytest.approx(1e-4)
    assert lr(50, "constant") == 1e-3


def test_shared_layers_are_the_backbone_and_neck():
    from yolo3.training import shared_layers
    from yolo3.zoo import build_spec

    assert shared_layers(build_spec("yolov3-tiny")) == set(range(14))
    yolov3 = shared_layers(build_spec("yolov3"))
    assert set(range(75)) <= yolov3 and 80 not in yolov3


def test_pipeline_batches(synthetic_valid):
    from yolo3.augment import AugmentSettings
    from yolo3.datasets import read_voc
    from yolo3.pipeline import PipelineSettings, make_dataset

    ds = read_voc(synthetic_valid / "images", synthetic_valid / "annotations")
    settings = PipelineSettings(batch_size=4, input_size=96, multi_scale=(64, 128), augment=AugmentSettings(), max_boxes=10)
    sizes = set()
    for images, targets, gt in make_dataset(ds.records, LAYOUT, 3, settings, epoch=0):
        n, h, w, _ = images.shape
        sizes.add(h)
        assert n == 4 and h == w and h % 32 == 0 and 64 <= h <= 128
        assert targets[0].shape == (4, h // 32, w // 32, 3, 8) and gt.shape == (4, 10, 4)
        assert float(np.min(images)) >= 0 and float(np.max(images)) <= 1
        assert float(np.max(gt)) <= h
        assert int(np.sum([t[..., 4].numpy().sum() for t in targets])) > 0
    assert len(sizes) > 1
    a = [b[0].numpy() for b in make_dataset(ds.records, LAYOUT, 3, settings, epoch=3)]
    b = [b[0].numpy() for b in make_dataset(ds.records, LAYOUT, 3, settings, epoch=3)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


MIRRORED = r"""
import os, sys, json
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from yolo3.datasets import read_voc
from yolo3.keras_model import build_model
from yolo3.loss import LossSettings
from yolo3.pipeline import PipelineSettings, make_dataset
from yolo3.targets import head_layout
from yolo3.training import Stepper
from yolo3.zoo import build_spec

# float64 isolates the algorithm (synchronised BN, loss scaling, gradient sums) from float32 rounding,
# which differs between one fused and two partial batch-statistics computations.
import tf_keras
tf_keras.backend.set_floatx("float64")
root = sys.argv[1]
spec = build_spec("yolov3-tiny", 3, 64)
layout = head_layout(spec)
ds = read_voc(root + "/images", root + "/annotations")
batch = next(iter(make_dataset(ds.records, layout, 3, PipelineSettings(batch_size=4, input_size=64, augment=None), 0)))
batch = tf.nest.map_structure(lambda x: tf.cast(x, tf.float64), batch)

single = tf.distribute.get_strategy()
model = build_model(spec)
weights = model.get_weights()
s1 = Stepper(model, layout, LossSettings(), single, 4)
total1, _, grads1 = s1.loss_and_gradients(*batch, model.trainable_variables)

mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with mirrored.scope():
    model2 = build_model(spec, sync_bn=True)
    model2.set_weights(weights)
s2 = Stepper(model2, layout, LossSettings(), mirrored, 4)
dist = mirrored.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch).unbatch().batch(4))
per_replica = mirrored.run(
    tf.function(lambda i, t, g: s2.loss_and_gradients(i, t, g, model2.trainable_variables)), args=next(iter(dist))
)
total2 = mirrored.reduce("SUM", per_replica[0], axis=None)
grads2 = [mirrored.reduce("SUM", g, axis=None) for g in per_replica[2]]
diff = max(float(np.max(np.abs(a.numpy() - b.numpy()))) for a, b in zip(grads1, grads2))
scale = max(float(np.max(np.abs(a.numpy()))) for a in grads1)
print(json.dumps({"replicas": mirrored.num_replicas_in_sync, "loss1": float(total1), "loss2": float(total2),
                  "grad_diff": diff, "grad_scale": scale}))
"""


def test_mirrored_strategy_equals_one_device(synthetic_valid):
    out = subprocess.run([sys.executable, "-c", MIRRORED, str(synthetic_valid)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["replicas"] == 2
    assert abs(r["loss1"] - r["loss2"]) <= 1e-4 * max(1.0, abs(r["loss1"]))
    assert r["grad_diff"] <= 1e-4 * max(1.0, r["grad_scale"])


def small_config(tmp_path, synthetic_valid, **train):
    cfg = {
        "model": {"architecture": "yolov3-tiny", "input_size": 64, "labels": ["circle", "square", "triangle"]},
        "train": {
            "train_image_folder": str(synthetic_valid / "images"),
            "train_annot_folder": str(synthetic_valid / "annotations"),
            "batch_size": 4,
            "nb_epochs": 3,
            "run_dir": str(tmp_path / "run"),
            **train,
        },
        "valid": {"valid_image_folder": str(synthetic_valid / "images"), "valid_annot_folder": str(synthetic_valid / "annotations")},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return path


def test_kill_minus_nine_then_resume(tmp_path, synthetic_valid):
    config = small_config(tmp_path, synthetic_valid, nb_epochs=40)
    cmd = [sys.executable, "train.py", "-c", str(config), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    index = tmp_path / "run" / "checkpoints" / "checkpoint"
    deadline = time.time() + 240
    while time.time() < deadline and not index.exists():
        time.sleep(0.2)
    assert index.exists(), "no checkpoint was written"
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(done) >= 1
    config = small_config(tmp_path, synthetic_valid, nb_epochs=len(done) + 1)
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    # the history is written just before the checkpoint: a kill in between leaves the checkpoint one epoch behind
    resumed = re.search(r"resuming .* after epoch (\d+)", out.stderr)
    assert resumed and int(resumed.group(1)) in (len(done), len(done) - 1), out.stderr[-2000:]
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, len(done) + 2))
    assert (tmp_path / "run" / "best.h5").exists()


def test_nan_loss_stops_with_checkpoint_intact(tmp_path, synthetic_valid):
    from yolo3.config import load_config
    from yolo3.kerasenv import tf
    from yolo3.training import RunOptions, TrainingStopped, train

    config = load_config(small_config(tmp_path, synthetic_valid, nb_epochs=2))
    from yolo3.hooks import TrainingHook

    class Poison(TrainingHook):  # a loss term that turns the loss into NaN, through the hooks' loss point
        def loss(self, images, outputs):
            return tf.fill(tf.shape(images)[:1], float("nan"))

    train(config, RunOptions(epochs=1, progress=False, max_steps_per_epoch=2))
    ckpt = sorted((tmp_path / "run" / "checkpoints").glob("ckpt-1*"))
    assert ckpt
    with pytest.raises(TrainingStopped) as err:
        train(config, RunOptions(progress=False, hooks=(Poison(),), max_steps_per_epoch=2))
    assert "nan" in err.value.message and "ckpt-1" in err.value.message
    assert sorted((tmp_path / "run" / "checkpoints").glob("ckpt-1*")) == ckpt
    assert not list((tmp_path / "run" / "checkpoints").glob("ckpt-2*"))


def test_the_deadline_counts_the_epochs_again_from_the_recent_ones():
    from yolo3.training import epochs_before_deadline

    # 10 epochs planned, 4 done: a first (tracing) epoch of 30 s, then 10 s each; 100 s left, an evaluation takes 15 s -> 8 more fit, 6 are planned
    assert epochs_before_deadline(100, 4, 10, [30, 10, 10, 10], 15) == 10
    # the machine slowed to 20 s per epoch: the median of the recent epochs says 4 more (85 // 20), so the run has 8 in all
    assert epochs_before_deadline(100, 4, 10, [30, 10, 20, 20, 20], 15) == 8
    assert epochs_before_deadline(-5, 4, 10, [30, 10], 15) == 4  # past the deadline: no epoch more, none taken back
    assert epochs_before_deadline(1e9, 4, 10, [30, 10], 15) == 10  # never more than planned
    assert epochs_before_deadline(100, 0, 10, [], 15) == 10  # nothing timed yet: as planned
    assert epochs_before_deadline(100, 1, 10, [30], 15) == 3  # one epoch: its own time (85 // 30 = 2 more)


def test_a_run_past_its_deadline_ends_after_the_epoch_it_is_in_and_validates_it(tmp_path, synthetic_valid):
    """A deadline that has passed ends the run after its current epoch; the last epoch is validated even when it was not due, and
    best.h5 comes from it. A deadline far away changes nothing."""
    from yolo3.config import load_config
    from yolo3.training import RunOptions, train

    config = load_config(small_config(tmp_path, synthetic_valid, nb_epochs=5, eval_every=10))
    result = train(config, RunOptions(progress=False, max_steps_per_epoch=2, deadline=time.time() - 1))
    assert (result["epochs"], result["planned_epochs"]) == (1, 5) and "1 of 5 epochs" in result["deadline"]
    assert [h["epoch"] for h in result["history"]] == [1] and "mAP50" in result["history"][0]
    assert (tmp_path / "run" / "best.h5").exists() and result["best_mAP50"] == result["history"][0]["mAP50"]
    assert json.loads((tmp_path / "run" / "history.json").read_text())[0]["mAP50"] == result["history"][0]["mAP50"]

    config = load_config(small_config(tmp_path, synthetic_valid, nb_epochs=2, eval_every=10, run_dir=str(tmp_path / "far")))
    result = train(config, RunOptions(progress=False, max_steps_per_epoch=2, deadline=time.time() + 1e6))
    assert (result["epochs"], result["deadline"]) == (2, None) and len(result["history"]) == 2


def test_hooks_are_called_in_order_and_their_loss_and_step_count(tmp_path, synthetic_valid):
    from yolo3.config import load_config
    from yolo3.hooks import TrainingHook
    from yolo3.kerasenv import tf
    from yolo3.training import RunOptions, train

    class Recorder(TrainingHook):
        compression = {"recorded": True}

        def __init__(self):
            self.calls = []
            self.steps = None

        def wrap(self, model):
            self.calls.append("wrap")
            return model

        def on_train_begin(self, context):
            self.calls.append("begin")
            self.steps = tf.Variable(0, dtype=tf.int64, trainable=False)
            assert context.model is not None and context.optimizer is not None and context.input_size == 64

        def loss(self, images, outputs):
            return tf.zeros(tf.shape(images)[:1])

        def after_step(self):
            self.steps.assign_add(1)

        def on_batch_begin(self, step):
            self.calls.append(f"batch {step}")

        def on_epoch_end(self, model, epoch, run_dir):
            self.calls.append(f"epoch {epoch}")

        def unwrap(self, model):
            self.calls.append("unwrap")
            return model

    hook = Recorder()
    config = load_config(small_config(tmp_path, synthetic_valid, nb_epochs=2))
    result = train(config, RunOptions(progress=False, max_steps_per_epoch=2, hooks=(hook,)))
    assert hook.calls[:2] == ["wrap", "begin"]
    assert [c for c in hook.calls if c.startswith(("batch", "epoch"))] == ["batch 0", "batch 1", "epoch 0", "batch 0", "batch 1", "epoch 1"]
    assert int(hook.steps.numpy()) == 4 and "unwrap" in hook.calls
    from yolo3.models import compression_info

    assert compression_info(result["best_model"]) == {"recorded": True}


def test_finetune_keeps_a_pruned_architecture(tmp_path, synthetic_valid):
    from yolo3.config import load_config
    from yolo3.keras_model import build_model
    from yolo3.models import load_model, save_model
    from yolo3.training import RunOptions, train
    from yolo3.zoo import build_spec

    spec = build_spec("yolov3-tiny", 3, 64)
    spec.layers[0].set("filters", 5)  # as if pruned
    spec.layers[10].set("filters", 100)
    save_model(build_model(spec), spec, tmp_path / "pruned.h5")
    config = load_config(small_config(tmp_path, synthetic_valid))
    result = train(config, RunOptions(str(tmp_path / "pruned.h5"), True, epochs=1, progress=False, max_steps_per_epoch=2))
    tuned = load_model(result["best_model"])
    assert tuned.spec.layers[0].get_int("filters") == 5 and tuned.spec.layers[10].get_int("filters") == 100
    assert tuned.model.get_layer("conv_0").kernel.shape[-1] == 5


def test_transfer_from_darknet_weights_recreates_heads(tmp_path, synthetic_valid):
    from conftest import random_weights
    from yolo3.config import load_config
    from yolo3.darknet import write_weights
    from yolo3.models import load_model
    from yolo3.spec import write_cfg
    from yolo3.training import RunOptions, train
    from yolo3.zoo import build_spec

    spec80 = build_spec("yolov3-tiny", 80, 64)
    write_cfg(spec80, tmp_path / "tiny80.cfg")
    weights = random_weights(spec80, seed=1)
    write_weights(tmp_path / "tiny80.weights", spec80, weights)
    path = small_config(tmp_path, synthetic_valid, freeze_backbone_epochs=1)
    data = json.loads(path.read_text())
    data["model"].update(architecture=str(tmp_path / "tiny80.cfg"), weights=str(tmp_path / "tiny80.weights"))
    path.write_text(json.dumps(data))
    config = load_config(path)
    result = train(config, RunOptions(epochs=1, progress=False, max_steps_per_epoch=2))
    tuned = load_model(result["best_model"])
    assert tuned.spec.num_classes == 3
    # the backbone was frozen for the first epoch: its weights are the Darknet ones
    np.testing.assert_array_equal(tuned.model.get_layer("conv_0").get_weights()[0], weights.convs[0].kernel)
    # then it is trained (the same optimizer serves both phases)
    result = train(config, RunOptions(epochs=2, progress=False, max_steps_per_epoch=2))
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert tuned.model.get_layer("conv_15").get_weights()[0].shape[-1] == 24


def test_run_folder_of_another_model_is_a_clear_error(tmp_path, synthetic_valid):
    from yolo3.config import load_config
    from yolo3.errors import UserError
    from yolo3.training import RunOptions, train

    train(load_config(small_config(tmp_path, synthetic_valid)), RunOptions(epochs=1, progress=False, max_steps_per_epoch=1))
    path = small_config(tmp_path, synthetic_valid)
    data = json.loads(path.read_text())
    data["model"]["labels"] = ["a", "b"]
    data["model"]["architecture"] = "yolov3-tiny"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="another model"):
        train(load_config(path), RunOptions(epochs=2, progress=False, max_steps_per_epoch=1))
