"""The trainer: a custom loop over the tf.data pipeline, under a tf.distribute strategy.

What it guarantees:
- a checkpoint (model, optimizer, epoch, best mAP) at the end of every epoch in
  ``run_dir/checkpoints``; the same command after a crash or ``kill -9``
  resumes from it, losing at most the epoch in progress;
- ``run_dir/best.h5``: the model with the best validation mAP@0.5 so far, a
  normal ``.h5`` with its cfg embedded (written atomically); ``run_dir/last.h5``:
  the model after the last finished epoch;
- a NaN or infinite loss stops the run with a clear message, the last good
  checkpoint untouched;
- learning-rate warm-up then cosine/step decay, TensorBoard logs in
  ``run_dir/logs``, a progress bar.

Example::

    from yolo3.config import load_config
    from yolo3.training import train
    result = train(load_config("config.json"))
    print(result["best_mAP50"], result["best_model"])
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .augment import AugmentSettings
from .errors import UserError
from .kerasenv import keras, tf
from .loss import LossSettings, yolo_loss
from .pipeline import PipelineSettings, make_dataset
from .spec import Spec, heads, route_inputs, shortcut_input
from .targets import head_layout


class TrainingStopped(UserError):
    """Training cannot go on (NaN loss); the message says what is intact."""


# ---------------------------------------------------------------------------
# Strategy and model preparation
# ---------------------------------------------------------------------------


def make_strategy(name: str, devices: list[str] | None = None) -> tf.distribute.Strategy:
    """The ``train.strategy`` of the config: default (one device), mirrored, or multi_worker (TF_CONFIG)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise UserError(f"unknown strategy {name!r} (use default, mirrored or multi_worker)")


def shared_layers(spec: Spec) -> set[int]:
    """Indices of the layers every head depends on: the backbone and the shared neck."""

    def ancestors(i: int, seen: set[int]) -> set[int]:
        stack = [i]
        while stack:
            j = stack.pop()
            if j < 0 or j in seen:
                continue
            seen.add(j)
            block = spec.layers[j]
            if block.type == "route":
                stack.extend(route_inputs(spec, j))
            elif block.type == "shortcut":
                stack.extend([j - 1, shortcut_input(spec, j)])
            else:
                stack.append(j - 1)
        return seen

    sets = [ancestors(h.conv, set()) for h in heads(spec)]
    common = set.intersection(*sets)
    return {i for i in common if spec.layers[i].type != "yolo"}


def layer_index(name: str) -> int | None:
    try:
        return int(name.rsplit("_", 1)[1])
    except (IndexError, ValueError):
        return None


def init_heads(model: keras.Model, spec: Spec, seed: int = 0) -> None:
    """Fresh detection heads: small kernels, objectness biased towards 'no object' (p = 0.01)."""
    rng = np.random.default_rng(seed)
    for h in heads(spec):
        conv = model.get_layer(f"conv_{h.conv}")
        kernel, bias = conv.get_weights()
        kernel = rng.normal(0, 0.01, kernel.shape).astype(np.float32)
        bias = np.zeros_like(bias).reshape(len(h.anchors), 5 + h.classes)
        bias[:, 4] = math.log(0.01 / 0.99)
        conv.set_weights([kernel, bias.reshape(-1)])


def copy_weights(src: keras.Model, dst: keras.Model) -> list[str]:
    """Copy weights layer by layer (by name) where shapes agree; returns the layers not copied."""
    skipped = []
    for layer in dst.layers:
        if not layer.weights:
            continue
        try:
            other = src.get_layer(layer.name)
        except ValueError:
            skipped.append(layer.name)
            continue
        values = other.get_weights()
        if [v.shape for v in values] == [tuple(w.shape) for w in layer.weights]:
            layer.set_weights(values)
        else:
            skipped.append(layer.name)
    return skipped


@dataclass
class StartingPoint:
    """The weights a run starts from and how they were obtained."""

    model: keras.Model | None
    spec: Spec
    note: str
    new_heads: bool
    compression: dict | None = None  # carried over from the starting .h5 (clusters, pruning) into best.h5


def starting_point(config, model_path: str | Path | None, keep_architecture: bool) -> StartingPoint:
    """Load the model to train: scratch, Darknet ``.weights`` (transfer), or an ``.h5``.

    For transfer learning the detection heads are re-created when the class
    count differs from the config's labels. ``keep_architecture`` (fine-tuning)
    takes the Spec from the ``.h5`` as it is, pruned layers included.
    """
    from .models import load_model, spec_from_h5
    from .spec import with_anchors, with_classes
    from .zoo import resolve_spec

    labels = config.labels
    anchors = config.model.anchors
    path = Path(model_path) if model_path is not None else config.model.weights
    if path is None:
        spec = resolve_spec(config.model.architecture, classes=len(labels), size=config.model.input_size)
        if anchors:
            spec = with_anchors(spec, [(anchors[i], anchors[i + 1]) for i in range(0, len(anchors), 2)])
        return StartingPoint(None, spec, f"{config.model.architecture}, random initialisation", True)
    if not Path(path).exists():
        raise UserError("model file does not exist", path)
    if Path(path).suffix.lower() == ".h5" and keep_architecture:
        spec = spec_from_h5(Path(path))
        if spec is None:
            raise UserError("this .h5 carries no cfg; fine-tuning needs a model written by this tool", path)
        if spec.num_classes != len(labels):
            raise UserError(f"the model predicts {spec.num_classes} classes but the config has {len(labels)} labels", path)
    loaded = load_model(path, architecture=config.model.architecture if Path(path).suffix == ".weights" else None)
    spec = loaded.spec
    new_heads = spec.num_classes != len(labels)
    if new_heads:
        spec = with_classes(spec, len(labels))
    if anchors:
        spec = with_anchors(spec, [(anchors[i], anchors[i + 1]) for i in range(0, len(anchors), 2)])
    from .spec import with_size

    spec = with_size(spec, config.model.input_size)
    note = f"{path}" + (f" (heads re-created for {len(labels)} classes)" if new_heads else "")
    from .models import compression_info

    compression = compression_info(path) if keep_architecture and not new_heads else None
    return StartingPoint(loaded.model, spec, note, new_heads, compression or None)


# ---------------------------------------------------------------------------
# Learning rate
# ---------------------------------------------------------------------------


def learning_rate(step: int, steps_per_epoch: int, epochs: int, peak: float, warmup_epochs: float, schedule: str) -> float:
    """Linear warm-up from 0, then cosine decay to 1 % of the peak, steps (x0.1 at 80 %, 90 %) or constant."""
    total = max(1, steps_per_epoch * epochs)
    warm = int(round(warmup_epochs * steps_per_epoch))
    if warm and step < warm:
        return peak * (step + 1) / warm
    if schedule == "constant":
        return peak
    progress = (step - warm) / max(1, total - warm)
    if schedule == "steps":
        return peak * (0.01 if progress >= 0.9 else 0.1 if progress >= 0.8 else 1.0)
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


# ---------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------


class Stepper:
    """Builds the (distributed) loss, gradient and training step for a model."""

    def __init__(self, model, layout, loss_settings, strategy, global_batch: int, extra_loss=None, constraint=None, teacher=None, distill_weight=0.0):
        self.model = model
        self.teacher = teacher  # a frozen model whose raw heads the student also learns (knowledge distillation)
        self.distill_weight = distill_weight
        self.layout = layout
        self.loss_settings = loss_settings
        self.strategy = strategy
        self.global_batch = global_batch
        self.extra_loss = extra_loss  # callable(model) -> scalar tensor, e.g. an L1 penalty on BN scales
        self.constraint = constraint  # object with apply(), run after every step (keeps clusters / pruning masks)

    def _loss(self, images, targets, gt, training=True):
        outputs = self.model(images, training=training)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        per_image, parts = yolo_loss(outputs, targets, gt, self.layout, self.loss_settings, tf.shape(images)[1:3])
        loss = tf.reduce_sum(per_image) / self.global_batch
        replicas = self.strategy.num_replicas_in_sync
        reg = tf.add_n(self.model.losses) / replicas if self.model.losses else 0.0
        if self.extra_loss is not None:
            reg += self.extra_loss(self.model) / replicas
        if self.teacher is not None:
            from compression.distillation import distillation_loss

            taught = self.teacher(images, training=False)
            taught = taught if isinstance(taught, (list, tuple)) else [taught]
            per_image = distillation_loss(outputs, taught, [len(a) for a in self.layout.anchors])
            parts["distillation"] = per_image
            reg += self.distill_weight * tf.cast(tf.reduce_sum(per_image), loss.dtype) / self.global_batch
        parts = {k: tf.reduce_sum(v) / self.global_batch for k, v in parts.items()}
        return loss + reg, loss, parts

    def loss_and_gradients(self, images, targets, gt, variables):
        """Loss (summed over replicas) and gradients of one batch, without applying them."""
        with tf.GradientTape() as tape:
            total, loss, _ = self._loss(images, targets, gt)
        return total, loss, tape.gradient(total, variables)

    def make_train_step(self, optimizer, variables):
        def replica_step(images, targets, gt):
            total, loss, grads = self.loss_and_gradients(images, targets, gt, variables)
            # variables a wrapper computes rather than trains (TFMOT cluster-preserving QAT's kernels) have no gradient
            optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
            return total

        @tf.function(reduce_retracing=True)
        def step(batch):
            images, targets, gt = batch
            per_replica = self.strategy.run(replica_step, args=(images, targets, gt))
            if self.constraint is not None:
                self.constraint.apply()  # cross-replica context: updates every replica's copy
            return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        return step


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOptions:
    """What the command line may override."""

    model_path: str | None = None
    keep_architecture: bool = False  # finetune.py: the model's own architecture
    epochs: int | None = None
    run_dir: str | None = None
    progress: bool = True
    extra_loss: object = None  # callable(model) -> scalar, e.g. sparse training of BN scales
    epoch_callback: object = None  # callable(model, epoch, run_dir)
    constraint_factory: object = None  # callable(model) -> object with apply(), or None
    learning_rate: float | None = None  # override train.learning_rate (fine-tuning after compression)
    post_step_factory: object = None  # callable(model, optimizer) -> object with apply(), run after every step
    wrapper: object = None  # wrap(model) -> model, unwrap(model) -> model, callbacks(model) -> keras callbacks (TFMOT)
    best_from_epoch: int = 1  # epochs before this one cannot become best.h5 (e.g. before a pruning schedule ends)
    freeze_backbone_epochs: int | None = None  # override train.freeze_backbone_epochs (0 for fine-tuning after compression)
    max_steps_per_epoch: int | None = None  # for tests and benchmarks
    teacher_path: str | None = None  # knowledge distillation from this model (same heads), e.g. the model before pruning
    distill_weight: float = 1.0  # weight of the distillation loss against the detection loss


class _Predictor:
    """Evaluation view of the training model at a fixed input size."""

    def __init__(self, model, spec, size):
        from .evaluation import head_specs

        self.model = model
        self.heads = head_specs(spec)
        self.input_hw = (size, size)

    def __call__(self, batch):
        out = self.model(batch, training=False)
        out = out if isinstance(out, (list, tuple)) else [out]
        return [np.asarray(o) for o in out]


def _settings(config) -> tuple[PipelineSettings, LossSettings]:
    t = config.train
    augment = (
        AugmentSettings(t.jitter, tuple(t.scale_range), t.flip, t.hue, t.saturation, t.exposure) if t.augment else None
    )
    pipe = PipelineSettings(
        batch_size=t.batch_size,
        input_size=config.model.input_size,
        multi_scale=tuple(t.multi_scale) if t.multi_scale else None,
        augment=augment,
        seed=t.seed,
    )
    loss = LossSettings(t.ignore_thresh, tuple(float(v) for v in t.grid_scales), t.obj_scale, t.noobj_scale, t.xywh_scale, t.class_scale)
    return pipe, loss


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train(config, options: RunOptions | None = None) -> dict:
    """Train or fine-tune the config's model; returns a summary (best mAP, paths, timings)."""
    from .datasets import read_dataset
    from .evaluation import evaluate
    from .keras_model import build_model
    from .models import save_model
    from .reporting import write_json

    options = options or RunOptions()
    t = config.train
    run_dir = Path(options.run_dir) if options.run_dir else Path(t.run_dir)
    epochs = options.epochs or t.nb_epochs
    train_set = read_dataset(config.dataset("train"), config.labels)
    valid_set = read_dataset(config.dataset("valid"), config.labels)
    for ds, name in ((train_set, "training"), (valid_set, "validation")):
        if ds.problems:
            _log(f"{name} set: {len(ds.problems)} problem(s) found while reading, e.g. {ds.problems[0]}")
    pipe, loss_settings = _settings(config)
    start = starting_point(config, options.model_path, options.keep_architecture)
    spec = start.spec
    layout = head_layout(spec)

    strategy = make_strategy(t.strategy, t.devices)
    replicas = strategy.num_replicas_in_sync
    if t.batch_size % replicas:
        raise UserError(f"train.batch_size {t.batch_size} must be divisible by the {replicas} devices of the strategy")
    size = 0 if pipe.multi_scale else config.model.input_size
    with strategy.scope():
        keras.utils.set_random_seed(t.seed)
        model = build_model(spec, size=size, sync_bn=replicas > 1)
        if start.model is not None:
            skipped = copy_weights(start.model, model)
            if start.new_heads:
                init_heads(model, spec, t.seed)
            elif skipped:
                raise UserError(f"layers {skipped[:5]} of the starting model do not fit the architecture")
        else:
            init_heads(model, spec, t.seed)
        if options.wrapper is not None:
            model = options.wrapper.wrap(model)
        optimizer = (
            keras.optimizers.AdamW(learning_rate=t.learning_rate, weight_decay=t.weight_decay)
            if t.weight_decay
            else keras.optimizers.Adam(learning_rate=t.learning_rate)
        )
        optimizer.build(model.trainable_variables)  # every variable, also those frozen at first
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        best_var = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_map")
        ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_var, best=best_var)
    manager = tf.train.CheckpointManager(ckpt, str(run_dir / "checkpoints"), max_to_keep=2)
    if manager.latest_checkpoint:
        try:
            ckpt.restore(manager.latest_checkpoint).expect_partial()
        except (ValueError, tf.errors.InvalidArgumentError) as err:
            raise UserError(
                f"the checkpoint in this run folder belongs to another model ({str(err).splitlines()[0][:160]}); "
                "delete the folder or choose another run_dir",
                run_dir,
            ) from None
        _log(f"resuming {run_dir} after epoch {int(epoch_var.numpy())} (best mAP@0.5 so far {best_var.numpy():.4f})")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        _log(f"training from {start.note}")
    write_json(run_dir / "config.json", config.raw)
    first_epoch = int(epoch_var.numpy())
    if first_epoch >= epochs:
        _log(f"{run_dir} has finished all {epochs} epochs; nothing to do (delete the folder or raise nb_epochs to train more)")

    peak_lr = options.learning_rate or t.learning_rate
    steps_per_epoch = len(train_set.records) // t.batch_size
    if options.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, options.max_steps_per_epoch)
    frozen = shared_layers(spec)
    hooks = []
    with strategy.scope():
        if options.constraint_factory is not None:
            hooks.append(options.constraint_factory(model))
        if options.post_step_factory is not None:
            hooks.append(options.post_step_factory(model, optimizer))
    constraint = _AllOf(hooks) if hooks else None
    teacher = _teacher(config, options.teacher_path, spec, size, strategy) if options.teacher_path else None
    stepper = Stepper(model, layout, loss_settings, strategy, t.batch_size, options.extra_loss, constraint, teacher, options.distill_weight)
    callbacks = options.wrapper.callbacks(model) if options.wrapper is not None else []
    for cb in callbacks:
        cb.set_model(model)
        cb.on_train_begin()
    writer = tf.summary.create_file_writer(str(run_dir / "logs"))
    history_path = run_dir / "history.json"
    history = json.loads(history_path.read_text()) if history_path.exists() and first_epoch else []
    # a kill between writing the history and the checkpoint leaves one epoch too many in the history
    history = [h for h in history if h["epoch"] <= first_epoch]
    best_path = run_dir / "best.h5"
    phase = None
    step_fn = None
    started = time.perf_counter()
    for epoch in range(first_epoch, epochs):
        freeze_epochs = t.freeze_backbone_epochs if options.freeze_backbone_epochs is None else options.freeze_backbone_epochs
        freeze = epoch < freeze_epochs
        if phase != freeze:
            for layer in model.layers:
                idx = layer_index(layer.name)
                if idx is not None and idx in frozen:
                    layer.trainable = not freeze
            variables = model.trainable_variables
            step_fn = stepper.make_train_step(optimizer, variables)
            phase = freeze
            if freeze:
                _log(f"epochs {epoch + 1}-{freeze_epochs}: the {len(frozen)} shared layers are frozen")
        dataset = make_dataset(train_set.records, layout, len(config.labels), pipe, epoch)
        if options.max_steps_per_epoch:
            dataset = dataset.take(steps_per_epoch)
        dist = strategy.experimental_distribute_dataset(dataset)
        bar = keras.utils.Progbar(steps_per_epoch, stateful_metrics=["lr"], verbose=1 if options.progress else 0)
        losses = []
        epoch_start = time.perf_counter()
        for k, batch in enumerate(dist):
            global_step = epoch * steps_per_epoch + k
            lr = learning_rate(global_step, steps_per_epoch, epochs, peak_lr, t.warmup_epochs, t.lr_schedule)
            optimizer.learning_rate.assign(lr)
            for cb in callbacks:
                cb.on_train_batch_begin(k)
            loss = float(step_fn(batch))
            if not math.isfinite(loss):
                last = manager.latest_checkpoint or "none (no epoch finished)"
                raise TrainingStopped(
                    f"the loss became {loss} at epoch {epoch + 1}, step {k + 1}; stopped. The last good checkpoint is "
                    f"intact: {last}. Lower train.learning_rate or check the data."
                )
            losses.append(loss)
            bar.update(k + 1, [("loss", loss), ("lr", lr)])
        for cb in callbacks:
            cb.on_epoch_end(epoch)
        epoch_seconds = time.perf_counter() - epoch_start
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": epoch_seconds, "lr": lr}
        with writer.as_default(step=epoch + 1):
            tf.summary.scalar("loss", record["loss"])
            tf.summary.scalar("learning_rate", lr)
        if (epoch + 1) % t.eval_every == 0 or epoch + 1 == epochs:
            report = evaluate(
                _Predictor(model, spec, config.model.input_size), valid_set, config.labels,
                config.valid.score_threshold, config.valid.nms_iou, config.valid.max_detections,
                config.valid.batch_size, progress=False,
            )  # fmt: skip
            record["mAP50"] = report["mAP50"]
            with writer.as_default(step=epoch + 1):
                tf.summary.scalar("val_mAP50", report["mAP50"])
            if report["mAP50"] > best_var.numpy() and epoch + 1 >= options.best_from_epoch:
                best_var.assign(report["mAP50"])
                plain = options.wrapper.unwrap(model) if options.wrapper is not None else model
                compression = options.wrapper.compression if options.wrapper is not None else start.compression
                save_model(_fixed_size(plain, spec, config.model.input_size), spec, best_path, compression)
                record["best"] = True
        _log(
            f"epoch {epoch + 1}/{epochs}: loss {record['loss']:.3f}"
            + (f", val mAP@0.5 {record['mAP50']:.4f}" if "mAP50" in record else "")
            + f" ({epoch_seconds:.0f} s)"
        )
        if options.epoch_callback is not None:
            options.epoch_callback(model, epoch, run_dir)
        plain = options.wrapper.unwrap(model) if options.wrapper is not None else model
        compression = options.wrapper.compression if options.wrapper is not None else start.compression
        save_model(_fixed_size(plain, spec, config.model.input_size), spec, run_dir / "last.h5", compression)
        epoch_var.assign(epoch + 1)
        history.append(record)
        write_json(history_path, history)
        manager.save(checkpoint_number=epoch + 1)
    writer.flush()
    if t.saved_weights_name and best_path.exists():
        shutil.copyfile(best_path, t.saved_weights_name)
    return {
        "run_dir": str(run_dir),
        "best_model": str(best_path) if best_path.exists() else None,
        "best_mAP50": float(best_var.numpy()),
        "epochs": epochs,
        "history": history,
        "seconds": time.perf_counter() - started,
    }


class _AllOf:
    """Several post-step hooks as one."""

    def __init__(self, hooks):
        self.hooks = hooks

    def apply(self) -> None:
        for hook in self.hooks:
            hook.apply()


def _teacher(config, path: str, student: Spec, size: int, strategy):
    """The distillation teacher: loaded, checked against the student's heads, frozen, at the training input size."""
    from compression.distillation import check_teacher

    from .keras_model import build_model
    from .models import load_model

    if not Path(path).exists():
        raise UserError("the distillation teacher does not exist", path)
    loaded = load_model(path, architecture=config.model.architecture if Path(path).suffix.lower() == ".weights" else None)
    check_teacher(student, loaded.spec, path)
    with strategy.scope():
        teacher = build_model(loaded.spec, size=size)
        copy_weights(loaded.model, teacher)
    teacher.trainable = False
    _log(f"distilling from {path}")
    return teacher


def _fixed_size(model, spec: Spec, size: int):
    """A plain copy at a fixed input size (for saving): no synchronised BN, no dynamic shape."""
    from .keras_model import build_model

    fixed = build_model(spec, size=size)
    fixed.set_weights(model.get_weights())
    return fixed
