"""Fine-tuning a model this tool wrote: what the trainer must keep (clusters, zeros) and add (sparse training, distillation).

Example::

    options = finetune_options(config, "pruned.h5", epochs=10, teacher="best.h5")
    train(config, options)
"""

from __future__ import annotations

from yolo3.errors import UserError


def finetune_options(config, model_path: str, *, epochs: int | None = None, run_dir: str | None = None, progress: bool = True,
                     learning_rate: float | None = None, teacher: str | None = None, distill_weight: float = 1.0,
                     sparsity_l1: float | None = None):  # fmt: skip
    """:class:`~yolo3.training.RunOptions` that keep ``model_path``'s architecture and what compression did to it.

    A clustered model stays on its centroids and a sparse one keeps its zeros
    (from the record in the ``.h5``); ``sparsity_l1`` (default
    ``pruning.sparsity_l1``) adds network slimming's L1 step on BN scales;
    ``teacher`` adds knowledge distillation.
    """
    from yolo3.training import RunOptions

    from .constraints import hooks_for

    hooks = list(hooks_for(model_path))
    strength = config.pruning.sparsity_l1 if sparsity_l1 is None else sparsity_l1
    if strength:
        from yolo3.models import spec_from_h5

        from .sparse_training import SparseTraining

        spec = spec_from_h5(model_path)
        if spec is None:
            raise UserError("this .h5 carries no cfg; fine-tune a model written by this tool", model_path)
        hooks.append(SparseTraining(spec, strength))
    if teacher:
        from .distillation import Distillation

        hooks.append(Distillation(teacher, distill_weight))
    return RunOptions(model_path, True, epochs, run_dir, progress, learning_rate=learning_rate, hooks=tuple(hooks))
