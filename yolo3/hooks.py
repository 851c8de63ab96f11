"""The one way training-time compression plugs into the trainer: a :class:`TrainingHook`.

Magnitude pruning (TFMOT), pruning masks, cluster constraints, quantization-aware
training, sparse training and knowledge distillation each implement the few
methods they need; the trainer (:func:`yolo3.training.train`) calls them at
fixed points and knows nothing about any method. The order of a run::

    model = hook.wrap(model)               # once, in the strategy's scope, before the optimizer (TFMOT wrappers)
    hook.on_train_begin(context)           # once, in the strategy's scope, after the optimizer is built
    for every epoch:
        for every step:
            hook.on_batch_begin(step)      # Python side, before the step (TFMOT's pruning step counter)
            ... loss = detection loss + sum(hook.loss(images, outputs)) ...   # inside the compiled step
            ... hook.apply_gradients(its variables' gradients) ...            # a hook's own variables (adapters)
            hook.after_step()              # inside the compiled step, after the update (constraints, proximal steps)
        hook.on_epoch_end(model, epoch, run_dir)
    plain = hook.unwrap(model)             # for every saved .h5; hook.compression is recorded in it

Example::

    class PrintEpochs(TrainingHook):
        def on_epoch_end(self, model, epoch, run_dir):
            print("finished epoch", epoch + 1)

    train(config, RunOptions(hooks=(PrintEpochs(),)))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class TrainingContext:
    """What a hook may need when training begins."""

    model: Any  # the (wrapped) Keras model being trained
    optimizer: Any
    spec: Any  # the architecture (yolo3.spec.Spec)
    strategy: Any  # the tf.distribute strategy
    config: Any  # the run's Config
    input_size: int  # 0 with multi-scale training
    run_dir: Path


class TrainingHook:
    """Base class: every method does nothing; a hook overrides what it needs (see the module docstring)."""

    best_from_epoch: int = 1  # epochs before this one cannot become best.h5 (e.g. while a pruning schedule still runs)
    compression: dict | None = None  # what was done to the model, recorded in the saved .h5 (None: keep the starting model's)

    def wrap(self, model):
        return model

    def unwrap(self, model):
        return model

    def on_train_begin(self, context: TrainingContext) -> None:
        pass

    def feature_layers(self) -> tuple[str, ...]:
        """Keras layers of the model whose *inputs* :meth:`loss` needs (as ``features=``, with ``gt_boxes=``); asked after :meth:`on_train_begin`.

        The trainer then runs one forward pass that also returns these tensors,
        rather than the hook running the model a second time.
        """
        return ()

    def loss(self, images, outputs) -> Any:
        """Extra loss terms for a batch: a per-image tensor (B,), already weighted, or None.

        A hook with :meth:`feature_layers` is called as ``loss(images, outputs,
        features=[...], gt_boxes=(B, M, 4))``.
        """
        return None

    def trainable_variables(self) -> list:
        """Variables the hook trains itself beside the model (e.g. distillation adapters); their gradients go to :meth:`apply_gradients`."""
        return []

    def apply_gradients(self, grads_and_vars: list) -> None:
        pass

    def after_step(self) -> None:
        pass

    def on_batch_begin(self, step: int) -> None:
        pass

    def on_epoch_end(self, model, epoch: int, run_dir: Path) -> None:
        pass
