"""Magnitude (unstructured) pruning: TFMOT's ``prune_low_magnitude`` with a polynomial schedule, or one-shot.

With TFMOT the masks grow during fine-tuning from 0 to the target sparsity
(``PolynomialDecay``), ``UpdatePruningStep`` advances the schedule every step,
and ``strip_pruning`` removes the wrappers before the model is saved. One-shot
mode zeroes the smallest weights of each kernel by a per-layer percentile,
without training, as the earlier Keras YOLOv3-compression project did (there
the masks were not kept; here they are: fine-tuning a sparse ``.h5`` keeps its
zeros).

Zeros make a model smaller only after compression (gzip) and do not make a
TFLite model faster on a CPU; removing whole filters does (``-p 3..5``).

Example::

    hook = TfmotPruning(target=0.5, end_step=1000)
    result = train(config, RunOptions(..., hooks=(hook,)))
"""

from __future__ import annotations

import numpy as np

from yolo3.hooks import TrainingContext, TrainingHook
from yolo3.names import conv_name, is_conv
from yolo3.spec import Spec


class TfmotPruning(TrainingHook):
    """Wrap the model with ``prune_low_magnitude``, advance the schedule every step (``UpdatePruningStep``), strip it for saving.

    ``best_from_epoch``: a model saved before the schedule reaches its target
    is not the pruned model asked for, so it cannot become ``best.h5``.
    """

    def __init__(self, target: float, end_step: int, frequency: int = 10, layers: list[str] | None = None, best_from_epoch: int = 1):
        import tensorflow_model_optimization as tfmot

        self.tfmot = tfmot
        self.schedule = tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=0.0, final_sparsity=target, begin_step=0, end_step=max(1, end_step), frequency=max(1, frequency)
        )
        self.layers = layers
        self.compression = {"sparsity": {"target": target, "layers": layers or []}}
        self.best_from_epoch = best_from_epoch
        self.step_callback = None

    def wrap(self, model):
        tfmot = self.tfmot
        if self.layers is None:
            self.layers = [layer.name for layer in model.layers if is_conv(layer.name)]
            self.compression["sparsity"]["layers"] = self.layers
        names = set(self.layers)

        def annotate(layer):  # the wrapper shares the original layer and its weights
            if layer.name in names:
                return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=self.schedule)
            return layer

        from yolo3.kerasenv import keras

        return keras.models.clone_model(model, clone_function=annotate)

    def unwrap(self, model):
        return self.tfmot.sparsity.keras.strip_pruning(model)

    def on_train_begin(self, context: TrainingContext) -> None:
        self.step_callback = self.tfmot.sparsity.keras.UpdatePruningStep()
        self.step_callback.set_model(context.model)
        self.step_callback.on_train_begin()

    def on_batch_begin(self, step: int) -> None:
        self.step_callback.on_train_batch_begin(step)

    def on_epoch_end(self, model, epoch: int, run_dir) -> None:
        self.step_callback.on_epoch_end(epoch)


def oneshot_prune(model, names: list[str], sparsity: float) -> None:
    """Zero the ``sparsity`` fraction of smallest-magnitude weights of each named kernel, in place."""
    for name in names:
        layer = model.get_layer(name)
        values = layer.get_weights()
        kernel = values[0]
        cut = np.quantile(np.abs(kernel), sparsity)
        kernel = np.where(np.abs(kernel) <= cut, 0.0, kernel).astype(kernel.dtype)
        layer.set_weights([kernel, *values[1:]])


def sparsity_report(model, spec: Spec) -> dict:
    """Achieved fraction of zero weights per convolution kernel, and overall."""
    layers, zeros, total = {}, 0, 0
    for i in spec.conv_indices():
        kernel = model.get_layer(conv_name(i)).get_weights()[0]
        z = int((kernel == 0).sum())
        layers[conv_name(i)] = z / kernel.size
        zeros += z
        total += kernel.size
    return {"per_layer": layers, "overall": zeros / total if total else 0.0, "zero_weights": zeros, "kernel_weights": total}
