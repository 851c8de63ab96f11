"""What fine-tuning must keep of a compressed model, as trainer hooks chosen from the record its ``.h5`` carries.

:func:`hooks_for` reads the record and returns the hooks that keep it:
zeros stay zero (:class:`KeepZeros`), clustered kernels stay on their
centroids (:class:`KeepClusters`). The trainer applies them after every step.

Example::

    train(config, RunOptions("clustered.h5", True, hooks=hooks_for("clustered.h5")))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from yolo3.hooks import TrainingContext, TrainingHook
from yolo3.models import compression_info

from .cluster.clustering import ClusterConstraint


class MaskConstraint:
    """Keeps pruned (zero) kernel weights at zero: ``kernel *= mask`` after every step."""

    def __init__(self, model, names: list[str]):
        from yolo3.keras_model import kernel_variable
        from yolo3.kerasenv import tf

        self.items = []
        for name in names:
            var = kernel_variable(model.get_layer(name))
            self.items.append((var, tf.constant((var.numpy() != 0).astype(np.float32))))

    def apply(self) -> None:
        for var, mask in self.items:
            var.assign(var * mask)


class KeepZeros(TrainingHook):
    """The zero weights of the named kernels (as training begins) stay zero."""

    def __init__(self, names: list[str]):
        self.names = list(names)
        self.constraint = None

    def on_train_begin(self, context: TrainingContext) -> None:
        self.constraint = MaskConstraint(context.model, self.names)

    def after_step(self) -> None:
        self.constraint.apply()


class KeepClusters(TrainingHook):
    """The named kernels stay on their shared values (which move with training); zeros stay zero."""

    def __init__(self, names: list[str], per_channel: bool = False):
        self.names = list(names)
        self.per_channel = per_channel
        self.constraint = None

    def on_train_begin(self, context: TrainingContext) -> None:
        self.constraint = ClusterConstraint(context.model, self.names, self.per_channel)

    def after_step(self) -> None:
        self.constraint.apply()


def hooks_for(path: str | Path | None) -> tuple[TrainingHook, ...]:
    """The hooks that keep what the record of the ``.h5`` at ``path`` says (clusters or zeros); none for a plain model."""
    if path is None:
        return ()
    info = compression_info(path)
    if "clustering" in info:
        c = info["clustering"]
        return (KeepClusters(c["layers"], c.get("per_channel", False)),)
    if "sparsity" in info:
        return (KeepZeros(info["sparsity"]["layers"]),)
    return ()
