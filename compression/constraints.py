"""What fine-tuning must keep of a compressed model, chosen from the record its ``.h5`` carries.

``finetune.py`` asks :func:`constraint_factory_for` and hands the result to the
trainer, which applies it after every optimizer step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from yolo3.models import compression_info

from .clustering import ClusterConstraint


class MaskConstraint:
    """Keeps pruned (zero) kernel weights at zero: ``kernel *= mask`` after every step."""

    def __init__(self, model, names: list[str]):
        from yolo3.kerasenv import tf

        self.items = []
        for name in names:
            var = model.get_layer(name).kernel
            self.items.append((var, tf.constant((var.numpy() != 0).astype(np.float32))))

    def apply(self) -> None:
        for var, mask in self.items:
            var.assign(var * mask)


def constraint_factory_for(path: str | Path | None):
    """A ``callable(model) -> constraint`` for a clustered or sparse ``.h5``, or None for a plain model."""
    if path is None:
        return None
    info = compression_info(path)
    if "clustering" in info:
        c = info["clustering"]
        return lambda model: ClusterConstraint(model, c["layers"], c.get("per_channel", False))
    if "sparsity" in info:
        layers = info["sparsity"]["layers"]
        return lambda model: MaskConstraint(model, layers)
    return None
