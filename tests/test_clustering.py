"""Weight clustering: 1-D k-means, model clustering, zeros kept, cluster-preserving fine-tuning."""

import json
import subprocess
import sys

import numpy as np
import pytest

from compression.cluster.kmeans1d import kmeans_1d
from conftest import ROOT


def test_kmeans_1d_matches_or_beats_sklearn():
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(0)
    for x in (rng.laplace(0, 0.05, 20000), rng.normal(0, 1, 5000), np.concatenate([rng.normal(-3, 0.1, 500), rng.normal(4, 0.2, 700)])):
        ours = kmeans_1d(x, 8, seed=0)
        sk = KMeans(8, n_init=1, random_state=0).fit(x.reshape(-1, 1))
        assert ours.inertia <= sk.inertia_ * 1.01
        direct = float(((x - ours.centroids[ours.labels]) ** 2).sum())
        assert direct == pytest.approx(ours.inertia, rel=1e-6)
        assert np.all(np.diff(ours.centroids) > 0)


def test_kmeans_1d_edge_cases():
    r = kmeans_1d(np.array([1.0, 1.0, 2.0]), 5)
    assert sorted(r.centroids.tolist()) == [1.0, 2.0] and r.inertia == 0
    assert kmeans_1d(np.zeros(0), 3).labels.size == 0
    w = kmeans_1d(np.array([0.0, 1.0, 10.0]), 2, sample_weight=np.array([1.0, 1.0, 1.0]))
    assert w.centroids.tolist() == [0.5, 10.0]
    a = kmeans_1d(np.random.default_rng(1).normal(size=1000), 16, seed=3)
    b = kmeans_1d(np.random.default_rng(1).normal(size=1000), 16, seed=3)
    assert np.array_equal(a.centroids, b.centroids)


@pytest.fixture
def tiny_model():
    from conftest import random_weights
    from yolo3.keras_model import build_model, set_darknet_weights
    from yolo3.zoo import build_spec

    spec = build_spec("yolov3-tiny", 3, 64)
    model = build_model(spec)
    set_darknet_weights(model, spec, random_weights(spec, seed=2))
    return model, spec


def test_cluster_model_every_kernel_and_keeps_zeros(tiny_model):
    from compression.cluster.clustering import cluster_model, distinct_values

    model, spec = tiny_model
    layer = model.get_layer("conv_12")
    kernel = layer.get_weights()[0]
    kernel[np.abs(kernel) < np.percentile(np.abs(kernel), 30)] = 0  # as if pruned
    layer.set_weights([kernel])
    report = cluster_model(model, spec, 16, exclude=["conv_22"])
    names = [f"conv_{i}" for i in spec.conv_indices()]
    assert report["clustered_layers"] == len(names) - 1
    counts = distinct_values(model, names)
    assert all(counts[n] <= 16 for n in names if n != "conv_22") and counts["conv_22"] > 16
    after = model.get_layer("conv_12").get_weights()[0]
    assert np.array_equal(after == 0, kernel == 0)  # zeros stay zero, no centroid at zero
    per = cluster_model(model, spec, 4, per_channel=True)
    assert per["max_distinct_values"] <= 4
    assert distinct_values(model, ["conv_0"], per_channel=True)["conv_0"] <= 4


def test_cluster_constraint_keeps_clusters_while_training(tiny_model):
    from compression.cluster.clustering import ClusterConstraint, cluster_model, distinct_values
    from yolo3.kerasenv import keras, tf

    model, spec = tiny_model
    cluster_model(model, spec, 8)
    names = [f"conv_{i}" for i in spec.conv_indices()]
    before = model.get_layer("conv_4").get_weights()[0]
    constraint = ClusterConstraint(model, names)
    optimizer = keras.optimizers.Adam(1e-2)
    x = tf.random.uniform((2, 64, 64, 3))
    for _ in range(3):
        with tf.GradientTape() as tape:
            loss = tf.add_n([tf.reduce_sum(tf.square(o)) for o in model(x, training=True)])
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        constraint.apply()
    after = model.get_layer("conv_4").get_weights()[0]
    assert not np.array_equal(before, after)  # the centroids moved
    assert max(distinct_values(model, names).values()) <= 8
    # membership is unchanged: equal before <=> equal after
    _, inv_before = np.unique(before, return_inverse=True)
    _, inv_after = np.unique(after, return_inverse=True)
    assert len(np.unique(inv_before * 1000 + inv_after)) == len(np.unique(inv_before))


def test_clustering_cli_with_finetuning(tmp_path, synthetic_valid):
    from test_tflite import _config

    from yolo3.keras_model import build_model
    from yolo3.models import compression_info, load_model, save_model
    from yolo3.zoo import build_spec

    spec = build_spec("yolov3-tiny", 3, 96)
    save_model(build_model(spec), spec, tmp_path / "m.h5")
    config = _config(tmp_path, synthetic_valid, tmp_path / "m.h5")
    data = json.loads(config.read_text())
    data["train"].update(batch_size=4, run_dir=str(tmp_path / "run"))
    config.write_text(json.dumps(data))
    out = tmp_path / "c.h5"
    r = subprocess.run(
        [sys.executable, "clustering.py", "-c", str(config), "--clusters", "8", "--finetune-epochs", "1", "--out", str(out),
         "--json", str(tmp_path / "r.json"), "--quiet"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())
    for key in ("before", "after", "finetuned", "size_after"):
        assert key in report
    assert report["size_after"]["gzip_bytes"] < report["before"]["size"]["gzip_bytes"] / 2
    assert max(report["details"]["distinct_values"].values()) <= 8
    loaded = load_model(out)
    kernel = loaded.model.get_layer("conv_12").get_weights()[0]
    # an exact 0.0 can occur in a random 4.7 M-weight kernel; zeros stay zero and take no centroid
    assert len(np.unique(kernel[kernel != 0])) <= 8
    assert compression_info(out)["clustering"]["clusters"] == 8
    again = subprocess.run([sys.executable, "clustering.py", "-c", str(config), "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 2 and "--force" in again.stderr
