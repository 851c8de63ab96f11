"""Structured pruning: surgery exactness, similarity, slimming, layer pruning, export; magnitude pruning with TFMOT."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from compression.prune.pruning import layer_prune, residual_blocks, similarity_masks, slimming_masks
from compression.prune.surgery import channel_groups, prune_channels
from conftest import ROOT, random_weights
from yolo3.spec import analyse, totals
from yolo3.zoo import build_spec


def outputs(spec, weights, x):
    from yolo3.keras_model import build_model, set_darknet_weights

    model = build_model(spec)
    set_darknet_weights(model, spec, weights)
    return [np.asarray(o) for o in model(x)]


X = np.random.RandomState(0).rand(2, 64, 64, 3).astype(np.float32)


@pytest.mark.parametrize("name", ["yolov3-tiny", "yolov3", "yolov3-spp"])
def test_removing_zero_scale_channels_changes_nothing(name):
    spec = build_spec(name, 3, 64)
    weights = random_weights(spec, seed=1)
    rng = np.random.default_rng(0)
    masks = {}
    for g in channel_groups(spec):
        if g.prunable:
            masks[g.id] = rng.random(g.channels) < 0.4
            for i in g.members:  # BN scale 0, BN offset left random: the constant must be folded
                weights.convs[i].bn[0][~masks[g.id]] = 0.0
    result = prune_channels(spec, weights, masks)
    assert totals(analyse(result.spec)).params < 0.5 * totals(analyse(spec)).params
    for a, b in zip(outputs(spec, weights, X), outputs(result.spec, result.weights, X)):
        assert a.shape == b.shape and np.abs(a - b).max() < 1e-4


def test_groups_follow_shortcuts_and_heads_are_kept():
    spec = build_spec("yolov3", 3, 64)
    groups = {g.id: g for g in channel_groups(spec)}
    # the stage-1 downsample conv (1) and the 3x3 of its residual block (3) meet in the shortcut (4)
    assert groups[1].members == [1, 3]
    assert not any(g.prunable for g in groups.values() if set(g.members) & {i - 1 for i in spec.yolo_indices()})
    masks = slimming_masks(spec, random_weights(spec, seed=2), percent=0.6, min_keep=3, round_to=8)
    assert all(m.sum() >= 3 and (m.sum() % 8 == 0 or m.sum() == len(m)) for m in masks.values())


def test_at_least_one_channel_stays():
    spec = build_spec("yolov3-tiny", 3, 64)
    weights = random_weights(spec, seed=1)
    result = prune_channels(spec, weights, {0: np.zeros(16, bool)})
    assert result.spec.layers[0].get_int("filters") >= 1


def test_similarity_removes_exact_duplicates_first_without_changing_outputs():
    spec = build_spec("yolov3-tiny", 3, 64)
    weights = random_weights(spec, seed=1)
    cw = weights.convs[13]  # a 1x1 conv
    for src, dst in ((9, 5), (20, 30)):
        cw.kernel[..., dst] = cw.kernel[..., src]
        for a in cw.bn:
            a[dst] = a[src]
    plan = similarity_masks(spec, weights, ratio=4 / 256)  # four from conv_13: the two duplicates first
    assert sorted(tuple(sorted((r, t))) for r, t, _ in plan.removed[13][:2]) == [(5, 9), (20, 30)]
    assert all(d < 1e-6 for _, _, d in plan.removed[13][:2]) and plan.removed[13][2][2] > 1e-3
    plan = similarity_masks(spec, weights, ratio=None, threshold=1e-6)  # only the duplicates
    assert list(plan.removed) == [13]
    result = prune_channels(spec, weights, plan.masks, plan.merges)
    assert result.spec.layers[13].get_int("filters") == 254
    for a, b in zip(outputs(spec, weights, X), outputs(result.spec, result.weights, X)):
        assert np.abs(a - b).max() < 1e-4


def test_layer_pruning_removes_blocks_and_fixes_references():
    spec = build_spec("yolov3", 3, 64)
    weights = random_weights(spec, seed=1)
    blocks = residual_blocks(spec, weights)
    assert len(blocks) == 23
    for b in blocks:  # make four blocks (incl. the route tap at 36) contribute nothing
        if b.start in (2, 13, 34, 72):
            weights.convs[b.start + 1].bn[0][:] = 0.0
            weights.convs[b.start + 1].bn[1][:] = 0.0
    new_spec, new_weights, removed = layer_prune(spec, weights, 4)
    assert sorted(b.start for b in removed) == [2, 13, 34, 72]
    assert len(new_spec.layers) == len(spec.layers) - 12
    for a, b in zip(outputs(spec, weights, X), outputs(new_spec, new_weights, X)):
        assert np.abs(a - b).max() < 1e-4


def test_pruned_model_exports_to_h5_and_darknet(tmp_path):
    from yolo3.darknet import write_weights
    from yolo3.keras_model import build_model, set_darknet_weights
    from yolo3.kerasenv import keras
    from yolo3.models import save_model
    from yolo3.spec import write_cfg

    spec = build_spec("yolov3-tiny", 3, 64)
    weights = random_weights(spec, seed=3)
    masks = slimming_masks(spec, weights, percent=0.5, min_keep=4)
    result = prune_channels(spec, weights, masks)
    model = build_model(result.spec)
    set_darknet_weights(model, result.spec, result.weights)
    save_model(model, result.spec, tmp_path / "p.h5")
    plain = keras.models.load_model(tmp_path / "p.h5", compile=False)  # no custom objects
    ours = [np.asarray(o)[0] for o in plain(X[:1])]
    write_cfg(result.spec, tmp_path / "p.cfg")
    write_weights(tmp_path / "p.weights", result.spec, result.weights)
    net = cv2.dnn.readNetFromDarknet(str(tmp_path / "p.cfg"), str(tmp_path / "p.weights"))
    net.setInput(cv2.dnn.blobFromImage(X[0], 1.0, (64, 64), swapRB=False, crop=False))
    theirs = net.forward([f"conv_{i - 1}" for i in result.spec.yolo_indices()])
    for a, b in zip(ours, theirs):
        assert np.abs(a - b[0].transpose(1, 2, 0)).max() < 1e-3


def _config(tmp_path, synthetic_valid, model, **pruning):
    cfg = {
        "model": {"architecture": "yolov3-tiny", "input_size": 96, "labels": ["circle", "square", "triangle"], "weights": str(model)},
        "train": {"train_image_folder": str(synthetic_valid / "images"), "train_annot_folder": str(synthetic_valid / "annotations"),
                  "batch_size": 4, "run_dir": str(tmp_path / "run")},
        "valid": {"valid_image_folder": str(synthetic_valid / "images"), "valid_annot_folder": str(synthetic_valid / "annotations")},
        "pruning": pruning,
    }  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture
def tiny_h5(tmp_path):
    from yolo3.keras_model import build_model, set_darknet_weights
    from yolo3.models import save_model

    spec = build_spec("yolov3-tiny", 3, 96)
    model = build_model(spec)
    set_darknet_weights(model, spec, random_weights(spec, seed=5))
    save_model(model, spec, tmp_path / "m.h5")
    return tmp_path / "m.h5"


def run_evaluate(config, *args):
    return subprocess.run([sys.executable, "evaluate.py", "-c", str(config), "--quiet", *args], capture_output=True, text=True, cwd=ROOT)


def test_slimming_cli_with_finetuning(tmp_path, synthetic_valid, tiny_h5):
    config = _config(tmp_path, synthetic_valid, tiny_h5, slimming_percent=0.5, min_channels=4, finetune_epochs=1)
    r = run_evaluate(config, "-p", "4", "--out", str(tmp_path / "s.h5"), "--json", str(tmp_path / "s.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["after"]["params"] < report["before"]["params"] * 0.6
    assert "finetuned" in report and report["finetuned"]["params"] == report["after"]["params"]
    assert "after network slimming" in r.stdout and "removed:" in r.stdout
    assert (tmp_path / "s.cfg").exists() and (tmp_path / "s.weights").exists()


def test_magnitude_pruning_tfmot_and_oneshot(tmp_path, synthetic_valid, tiny_h5):
    config = _config(tmp_path, synthetic_valid, tiny_h5, magnitude_sparsity=0.5, finetune_epochs=2)
    r = run_evaluate(config, "-p", "2", "--out", str(tmp_path / "t.h5"), "--json", str(tmp_path / "t.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "t.json").read_text())
    assert report["details"]["sparsity"]["overall"] == pytest.approx(0.5, abs=0.02)
    assert report["size_after"]["gzip_bytes"] < report["before"]["size"]["gzip_bytes"]
    config = _config(tmp_path, synthetic_valid, tiny_h5, magnitude_sparsity=0.3, magnitude_mode="oneshot", finetune_epochs=1)
    r = run_evaluate(config, "-p", "2", "--out", str(tmp_path / "o.h5"), "--json", str(tmp_path / "o.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "o.json").read_text())
    assert min(report["details"]["sparsity"]["per_layer"].values()) >= 0.29  # masks kept through fine-tuning
    no_epochs = _config(tmp_path, synthetic_valid, tiny_h5, finetune_epochs=0)
    r = run_evaluate(no_epochs, "-p", "2", "--out", str(tmp_path / "x.h5"))
    assert r.returncode == 2 and "finetune_epochs" in r.stderr


def test_sparse_training_plots_bn_scales(tmp_path, synthetic_valid, tiny_h5):
    config = _config(tmp_path, synthetic_valid, tiny_h5)
    r = subprocess.run(
        [sys.executable, "finetune.py", "-c", str(config), "--model", str(tiny_h5), "--epochs", "1", "--sparsity-l1", "0.01", "--quiet"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "run" / "bn_scales" / "epoch_001.png").stat().st_size > 1000


def test_round_share_compounds_to_the_total():
    from compression.prune.methods import round_share

    for total, n in ((0.5, 4), (0.7, 3), (0.3, 1)):
        assert (1 - round_share(total, n)) ** n == pytest.approx(1 - total)


def test_similarity_rounds_end_where_one_pruning_would():
    from compression.prune.pruning import similarity_keep_schedule

    spec = build_spec("yolov3-tiny", 1, 416)
    weights = random_weights(spec, seed=3)
    one_shot = similarity_masks(spec, weights, ratio=0.5, kernel_sizes=(1, 3), min_keep=8, round_to=8)
    schedule = similarity_keep_schedule(spec, 0.5, 4, min_keep=8, round_to=8)
    assert schedule[-1] == {g: int(m.sum()) for g, m in one_shot.masks.items()}
    for earlier, later in zip(schedule, schedule[1:]):
        assert all(later[g] <= earlier[g] and later[g] % 8 == 0 for g in later)


def test_layer_ratios_override_the_ratio_per_layer():
    from compression.prune.pruning import resolve_layer_ratios, similarity_keep_schedule
    from yolo3.errors import UserError

    spec = build_spec("yolov3-tiny", 1, 416)
    weights = random_weights(spec, seed=3)
    ratios = resolve_layer_ratios(spec, {"conv_12": 0.75, "0": 0.0, "14": 0.5})
    assert ratios == {12: 0.75, 0: 0.0, 14: 0.5}
    plan = similarity_masks(spec, weights, ratio=0.25, kernel_sizes=(1,), min_keep=8, round_to=8, layer_ratios=ratios)
    kept = {g: int(m.sum()) for g, m in plan.masks.items()}
    # 3x3 layers named are pruned although only 1x1 kernels are asked for; 0 spares conv_0; 1x1 layers take the ratio
    assert kept[12] == 256 and kept[14] == 256 and 0 not in kept and kept[13] == 192 and 2 not in kept
    schedule = similarity_keep_schedule(spec, 0.25, 3, min_keep=8, round_to=8, layer_ratios=ratios)
    assert {g: schedule[-1][g] for g in kept} == kept and schedule[0][12] > schedule[1][12] > schedule[2][12]
    for bad, why in (("15", "is a head"), ("99", "is not a convolution"), ("conv_1", "is not a convolution")):
        with pytest.raises(UserError, match=why):
            resolve_layer_ratios(spec, {bad: 0.5})


def test_distillation_loss_is_zero_when_the_student_agrees():
    from compression.distillation import distillation_loss
    from yolo3.kerasenv import tf

    rng = np.random.default_rng(0)
    teacher = [tf.constant(rng.normal(0, 2, (2, 3, 3, 3 * 8)), tf.float32), tf.constant(rng.normal(0, 2, (2, 6, 6, 3 * 8)), tf.float32)]
    same = distillation_loss(teacher, teacher, [3, 3]).numpy()
    assert same.shape == (2,) and np.allclose(same, 0, atol=1e-4)
    student = [tf.Variable(t + rng.normal(0, 1, t.shape).astype(np.float32)) for t in teacher]
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(distillation_loss(student, teacher, [3, 3]))
    assert loss.numpy() > 1
    grads = tape.gradient(loss, student)
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


def test_imitation_mask_marks_the_cells_whose_anchors_overlap_a_box():
    from compression.distillation import imitation_mask

    gt = np.zeros((2, 3, 4), np.float32)
    gt[0, 0] = [16, 16, 48, 48]  # centred on the corner of cells (1, 1), (1, 2), (2, 1), (2, 2) of a 4x4 grid (stride 16)
    mask = imitation_mask(gt, (64, 64), (4, 4), [(32.0, 32.0)]).numpy()
    expected = np.zeros((4, 4))
    expected[1:3, 1:3] = 1  # IoU 0.39 each (the best); the next ring 0.10, under half the best
    assert mask.shape == (2, 4, 4) and np.array_equal(mask[0], expected)
    assert not mask[1].any()  # an image without boxes imitates nothing


def test_feature_imitation_loss_counts_only_the_masked_cells():
    from compression.distillation import feature_imitation_loss
    from yolo3.kerasenv import tf

    rng = np.random.default_rng(0)
    teacher = [rng.normal(0, 1, (2, 4, 4, 8)).astype(np.float32)]
    mask = np.zeros((2, 4, 4), np.float32)
    mask[0, 1, 2] = 1
    assert np.allclose(feature_imitation_loss(teacher, teacher, [mask]).numpy(), 0)
    elsewhere = teacher[0].copy()
    elsewhere[:, 0, 0] += 5  # an unmasked cell
    assert np.allclose(feature_imitation_loss([elsewhere], teacher, [mask]).numpy(), 0)
    student = tf.Variable(teacher[0] + rng.normal(0, 0.2, teacher[0].shape).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = feature_imitation_loss([student], teacher, [mask])
    value = loss.numpy()
    cell_s, cell_t = student.numpy()[0, 1, 2], teacher[0][0, 1, 2]
    assert value[1] == 0 and np.isclose(value[0], np.mean((cell_s - cell_t) ** 2) / np.mean(cell_t**2), rtol=1e-5)  # the cell's relative error
    assert float(tf.reduce_max(tf.abs(tape.gradient(loss, student)))) > 0


def test_similarity_in_rounds_with_distillation(tmp_path, synthetic_valid, tiny_h5):
    config = _config(tmp_path, synthetic_valid, tiny_h5, similarity_ratio=0.5, similarity_kernels=[1, 3], min_channels=4,
                     rounds=2, round_epochs=1, finetune_epochs=1, distillation=1.0, feature_distillation=1.0,
                     similarity_layer_ratios={"conv_12": 0.75, "0": 0})  # fmt: skip
    r = run_evaluate(config, "-p", "3", "--out", str(tmp_path / "r.h5"), "--json", str(tmp_path / "r.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())
    removed_last_round = report["details"]["layers"]
    assert removed_last_round["conv_12"] == 384 and removed_last_round["conv_13"] == 64 and "conv_0" not in removed_last_round
    (step,) = report["details"]["rounds"]
    assert 0 < step["removed_params"] < 1 - report["after"]["params"] / report["before"]["params"] and "finetuned" in step
    assert report["before"]["macs"] > step["pruned"]["macs"] > report["after"]["macs"]
    assert "round 1: " in r.stdout and "of the parameters removed" in r.stdout
    # the last 3x3 convolutions lost half their filters: the imitated neck features reach the teacher's widths through adapters
    assert "distilling the heads and the neck features near the objects (weight 1, 2 adapter(s)) from" in r.stderr
    bad = _config(tmp_path, synthetic_valid, tiny_h5, rounds=2, finetune_epochs=1)
    r = run_evaluate(bad, "-p", "2", "--out", str(tmp_path / "b.h5"))
    assert r.returncode == 2 and "rounds" in r.stderr
    bad = _config(tmp_path, synthetic_valid, tiny_h5, similarity_layer_ratios={"conv_15": 0.5})
    r = run_evaluate(bad, "-p", "3", "--out", str(tmp_path / "b.h5"))
    assert r.returncode == 2 and "layer conv_15 is a head" in r.stderr and "Traceback" not in r.stderr
