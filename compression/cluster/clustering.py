"""Weight clustering: every convolution kernel onto k shared values (k-means in 1-D), and keeping it so while training.

:func:`cluster_model` replaces each kernel's weights by their nearest of k
centroids (:mod:`compression.cluster.kmeans1d`, k-means++ seeding with a fixed seed),
per layer or per output channel. Exact zeros (a pruned model's) stay zero and
take no centroid. The result is a normal Keras model; its ``.h5`` records the
clustering so that ``finetune.py`` keeps it.

:class:`ClusterConstraint` keeps a clustered model clustered during
fine-tuning: after every optimizer step each weight is put back on its
cluster's centroid, the centroid being the mean of the cluster's updated
weights. Cluster membership stays fixed; the centroids move. This is
TFMOT's cluster-preserving training without its wrappers, which skip Conv2D
layers without a bias under ``cluster_per_channel`` (every Darknet conv with
BN) and do not fit a custom training loop under a distribution strategy.

Example::

    from compression.cluster.clustering import cluster_model
    report = cluster_model(model, spec, clusters=32)
    report["layers"][0]["distinct_values"], report["total_wcss"]
"""

from __future__ import annotations

import math
import time

import numpy as np

from yolo3.names import bn_name, conv_name, is_conv
from yolo3.spec import Spec

from .kmeans1d import kmeans_1d


def conv_layer_names(spec: Spec, exclude: list | None = None) -> list[str]:
    """Names of the convolutions to cluster: all, minus those excluded by index or name."""
    excluded = {str(e) for e in (exclude or [])}
    names = []
    for i in spec.conv_indices():
        name = conv_name(i)
        if str(i) not in excluded and name not in excluded:
            names.append(name)
    return names


def cluster_array(
    weights: np.ndarray, clusters: int, seed: int = 0, importance: np.ndarray | None = None
) -> tuple[np.ndarray, int, float]:
    """Cluster the non-zero values of ``weights``; zeros stay zero. Returns (clustered, distinct non-zero, wcss).

    ``importance`` (same shape) weights each value's squared error.
    """
    flat = weights.reshape(-1)
    nonzero = flat != 0
    out = np.zeros_like(flat)
    if not nonzero.any():
        return out.reshape(weights.shape), 0, 0.0
    distinct = np.unique(flat[nonzero])
    if len(distinct) <= clusters:  # already at most k values: nothing to cluster (and k-means++ seeding costs O(k^2))
        return weights.copy(), int(len(distinct)), 0.0
    sample_weight = None if importance is None else importance.reshape(-1)[nonzero]
    result = kmeans_1d(flat[nonzero], clusters, seed=seed, sample_weight=sample_weight)
    out[nonzero] = result.centroids[result.labels]
    return out.reshape(weights.shape), int(len(np.unique(out[nonzero]))), result.inertia


def output_scales(model, spec: Spec, name: str) -> np.ndarray | None:
    """How strongly each output channel of a convolution reaches the next layer: |gamma| / sqrt(var + eps) of its BN."""
    index = int(name.rsplit("_", 1)[1])
    try:
        bn = model.get_layer(bn_name(index))
    except ValueError:
        return None
    gamma, _, _, var = bn.get_weights()
    return np.abs(gamma) / np.sqrt(var + bn.epsilon)


def cluster_kernel(
    kernel: np.ndarray, clusters: int, per_channel: bool = False, seed: int = 0, channel_scale: np.ndarray | None = None
) -> tuple[np.ndarray, dict]:
    """One kernel (kh, kw, in, out): clustered copy and its statistics.

    With ``channel_scale`` (per output channel, e.g. from the following batch
    norm), per-layer clustering minimises the error of the outputs as the next
    layer sees them: each weight's squared error counts ``scale**2``. A layer
    whose channels have very different BN scales (typically the first) would
    otherwise spend its centroids on channels that matter little.
    """
    if not per_channel:
        importance = None
        if channel_scale is not None:
            importance = np.broadcast_to(np.square(channel_scale.astype(np.float64)) + 1e-12, kernel.shape)
        clustered, distinct, wcss = cluster_array(kernel, clusters, seed, importance)
        return clustered, {"distinct_values": distinct, "max_distinct_per_channel": distinct, "wcss": wcss}
    clustered = np.empty_like(kernel)
    distinct, wcss = [], 0.0
    for o in range(kernel.shape[-1]):
        clustered[..., o], d, w = cluster_array(kernel[..., o], clusters, seed)
        distinct.append(d)
        wcss += w
    return clustered, {
        "distinct_values": int(len(np.unique(clustered[clustered != 0]))),
        "max_distinct_per_channel": int(max(distinct)),
        "wcss": wcss,
    }


def codebook_bits(n_weights: int, clusters: int, channels: int, per_channel: bool) -> int:
    """Bits of a codebook encoding: ceil(log2 k) per weight plus float32 centroids (per channel if so)."""
    index_bits = max(1, math.ceil(math.log2(max(clusters, 2))))
    tables = channels if per_channel else 1
    return n_weights * index_bits + tables * clusters * 32


def cluster_model(
    model, spec: Spec, clusters: int = 32, per_channel: bool = False, exclude: list | None = None, seed: int = 0, weighted: bool = False
) -> dict:
    """Cluster the kernels of ``model`` in place; returns a per-layer report and the totals.

    ``weighted`` weights each weight's error by its output channel's BN scale
    squared (see :func:`cluster_kernel`); measured on the raccoon YOLOv3-tiny it
    did not help, so it is off by default.
    """
    from yolo3.keras_model import conv_kernel, set_conv_kernel

    if clusters < 2:
        raise ValueError("clusters must be at least 2")
    layers = []
    start = time.perf_counter()
    total_bits = 0
    names = conv_layer_names(spec, exclude)
    for layer in model.layers:
        if is_conv(layer.name) and layer.name not in names:
            values = layer.get_weights()
            total_bits += sum(v.size for v in values) * 32  # left as float32
    for name in names:
        layer = model.get_layer(name)
        values = layer.get_weights()
        kernel = conv_kernel(layer)  # the filters on the last axis, depthwise too
        t0 = time.perf_counter()
        scale = output_scales(model, spec, name) if weighted else None
        clustered, stats = cluster_kernel(kernel, clusters, per_channel, seed, scale)
        set_conv_kernel(layer, clustered)
        bits = codebook_bits(kernel.size, clusters, kernel.shape[-1], per_channel) + sum(v.size for v in values[1:]) * 32
        total_bits += bits
        layers.append({
            "layer": name,
            "weights": int(kernel.size),
            "zeros": int((kernel == 0).sum()),
            "seconds": time.perf_counter() - t0,
            "codebook_bytes": bits // 8,
            **stats,
        })  # fmt: skip
    # the non-convolution parameters (batch norm) stay float32
    for layer in model.layers:
        if layer.name.startswith("bn_"):
            total_bits += sum(v.size for v in layer.get_weights()) * 32
    return {
        "clusters": clusters,
        "per_channel": per_channel,
        "layers": layers,
        "clustered_layers": len(layers),
        "total_wcss": float(sum(entry["wcss"] for entry in layers)),
        "max_distinct_values": max((entry["max_distinct_per_channel"] for entry in layers), default=0),
        "codebook_bytes": total_bits // 8,
        "seconds": time.perf_counter() - start,
    }


def distinct_values(model, names: list[str], per_channel: bool = False) -> dict[str, int]:
    """The largest number of distinct non-zero kernel values per layer (per channel if asked)."""
    from yolo3.keras_model import conv_kernel

    out = {}
    for name in names:
        kernel = conv_kernel(model.get_layer(name))
        if per_channel:
            out[name] = max(len(np.unique(kernel[..., o][kernel[..., o] != 0])) for o in range(kernel.shape[-1]))
        else:
            out[name] = int(len(np.unique(kernel[kernel != 0])))
    return out


class ClusterConstraint:
    """Keeps clustered kernels on shared values during training (see the module docstring).

    Cluster labels are read from the current kernels (equal values = one
    cluster; zeros form a cluster pinned at 0), once, when the constraint is made.
    """

    def __init__(self, model, names: list[str], per_channel: bool = False):
        from yolo3.keras_model import darknet_kernel, kernel_variable
        from yolo3.kerasenv import tf

        self.tf = tf
        self.items = []
        for name in names:
            var = kernel_variable(model.get_layer(name))
            kernel = darknet_kernel(model.get_layer(name), var.numpy())  # filters last; labels reshape back to var
            if per_channel:
                labels = np.empty(kernel.shape, np.int32)
                offset = 0
                for o in range(kernel.shape[-1]):
                    _, inv = np.unique(kernel[..., o], return_inverse=True)
                    labels[..., o] = inv.reshape(kernel[..., o].shape) + offset
                    offset += int(inv.max()) + 1
                segments = offset
            else:
                values, inv = np.unique(kernel, return_inverse=True)
                labels = inv.reshape(kernel.shape).astype(np.int32)
                segments = len(values)
            labels = labels.reshape(var.shape)
            zero = (kernel == 0).astype(np.float32).reshape(var.shape)
            self.items.append((var, tf.constant(labels), segments, tf.constant(1.0 - zero)))

    def apply(self) -> None:
        """Project every constrained kernel back onto its (moving) centroids; call after each step."""
        tf = self.tf
        for var, labels, segments, keep in self.items:
            centroids = tf.math.unsorted_segment_mean(tf.reshape(var, [-1]), tf.reshape(labels, [-1]), segments)
            var.assign(tf.gather(centroids, labels) * keep)
